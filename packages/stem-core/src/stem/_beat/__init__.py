"""The beat scheduler: specs, entries defined in code, and the loop that fires them."""

from ._beat import Beat, firing_task_id
from ._entries import ScheduleDefinition, SyncReport, sync_definitions
from ._entries import define as define_schedule
from ._specs import Clocked, Cron, Interval, Solar, SolarEvent, Spec, spec_from_entry

__all__ = [
    "Beat",
    "Clocked",
    "Cron",
    "Interval",
    "ScheduleDefinition",
    "Solar",
    "SolarEvent",
    "Spec",
    "SyncReport",
    "define_schedule",
    "firing_task_id",
    "spec_from_entry",
    "sync_definitions",
]
