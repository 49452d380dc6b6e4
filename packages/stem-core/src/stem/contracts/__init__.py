"""The contracts every Stem adapter implements, and the records they exchange."""

from __future__ import annotations

from .._messages import (
    DeadLetter,
    Delivery,
    GroupState,
    Message,
    QueueStats,
    RevokeEntry,
    Subscription,
    TaskState,
    TaskStatus,
    UniqueClaim,
    WorkerHeartbeat,
)
from ._adapter import Adapter
from ._backend import ResultBackend
from ._broker import Broker, BrokerCapabilities, claim_unique, subscriber_queue
from ._events import TopicPattern, decode_event, encode_event
from ._locks import LockStore, RevokeStore
from ._ratelimit import RateLimiter, RateLimiterCapabilities
from ._schedule import ScheduleConflictError, ScheduleEntry, ScheduleStore
from ._signals import ControlChannel, ControlMessage, EventBus, EventSubscription
from ._workflow import (
    Resume,
    RunPolicy,
    RunStatus,
    StepCheckpoint,
    Watcher,
    WorkflowRun,
    WorkflowStore,
)

__all__ = [
    "Adapter",
    "Broker",
    "BrokerCapabilities",
    "ControlChannel",
    "ControlMessage",
    "DeadLetter",
    "Delivery",
    "EventBus",
    "EventSubscription",
    "GroupState",
    "LockStore",
    "Message",
    "QueueStats",
    "RateLimiter",
    "RateLimiterCapabilities",
    "ResultBackend",
    "Resume",
    "RevokeEntry",
    "RevokeStore",
    "RunPolicy",
    "RunStatus",
    "ScheduleConflictError",
    "ScheduleEntry",
    "ScheduleStore",
    "StepCheckpoint",
    "Subscription",
    "TaskState",
    "TaskStatus",
    "TopicPattern",
    "UniqueClaim",
    "Watcher",
    "WorkerHeartbeat",
    "WorkflowRun",
    "WorkflowStore",
    "claim_unique",
    "decode_event",
    "encode_event",
    "subscriber_queue",
]
