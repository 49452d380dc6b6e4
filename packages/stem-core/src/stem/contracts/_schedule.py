"""The ScheduleStore contract: beat entries, when they are due, and their drift."""

from __future__ import annotations

import abc
import builtins
from typing import Any

import msgspec

from .._clock import Clock, SystemClock

__all__ = ["ScheduleEntry", "ScheduleStore"]


class ScheduleEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One beat entry. ``spec`` describes the kind: interval, cron, solar or clocked."""

    id: str
    task: str
    kind: str
    spec: dict[str, Any]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str | None = None
    enabled: bool = True
    next_run_at: float | None = None
    last_run_at: float | None = None
    last_drift: float | None = None
    total_runs: int = 0
    meta: dict[str, Any] = {}


class ScheduleStore(abc.ABC):
    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()

    @abc.abstractmethod
    async def upsert(self, entry: ScheduleEntry) -> None: ...

    @abc.abstractmethod
    async def get(self, entry_id: str) -> ScheduleEntry | None: ...

    @abc.abstractmethod
    async def list(self) -> builtins.list[ScheduleEntry]: ...

    @abc.abstractmethod
    async def remove(self, entry_id: str) -> bool: ...

    @abc.abstractmethod
    async def due(self, now: float, *, limit: int = 100) -> builtins.list[ScheduleEntry]: ...

    @abc.abstractmethod
    async def mark_executed(
        self, entry_id: str, *, ran_at: float, next_run_at: float | None, drift: float
    ) -> None: ...

    async def aclose(self) -> None:
        """Release connections."""
