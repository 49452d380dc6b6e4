"""The in-memory adapter: every contract in process memory.

``memory://`` gives fresh, private stores; ``memory://NAME`` gives stores shared by
every app in the process that uses the same name (a producer app and a worker app
in one test, say). Nothing survives the process.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .._clock import Clock
from ..contracts import (
    Adapter,
    Broker,
    ControlChannel,
    EventBus,
    LockStore,
    ResultBackend,
    RevokeStore,
    ScheduleStore,
    WorkflowStore,
)
from ._backend import MemoryResultBackend
from ._broker import MemoryBroker
from ._events import MemoryEventBus
from ._stores import (
    MemoryControlChannel,
    MemoryLockStore,
    MemoryRevokeStore,
    MemoryScheduleStore,
)
from ._workflow import MemoryWorkflowStore

__all__ = [
    "MemoryAdapter",
    "MemoryBroker",
    "MemoryControlChannel",
    "MemoryEventBus",
    "MemoryLockStore",
    "MemoryResultBackend",
    "MemoryRevokeStore",
    "MemoryScheduleStore",
    "MemoryWorkflowStore",
    "adapter",
]


class MemoryAdapter(Adapter):
    distribution = "stem-core"

    def __init__(self) -> None:
        self._named: dict[tuple[str, str], object] = {}

    def _shared(self, url: str, kind: str, build: type, clock: Clock | None) -> object:
        name = urlsplit(url).netloc + urlsplit(url).path
        if not name:
            return build(clock=clock)
        key = (kind, name)
        if key not in self._named:
            self._named[key] = build(clock=clock)
        return self._named[key]

    def broker(self, url: str, *, clock: Clock | None = None) -> Broker:
        return self._shared(url, "broker", MemoryBroker, clock)  # type: ignore[return-value]

    def result_backend(self, url: str, *, clock: Clock | None = None) -> ResultBackend:
        return self._shared(url, "backend", MemoryResultBackend, clock)  # type: ignore[return-value]

    def lock_store(self, url: str, *, clock: Clock | None = None) -> LockStore:
        return self._shared(url, "locks", MemoryLockStore, clock)  # type: ignore[return-value]

    def revoke_store(self, url: str, *, clock: Clock | None = None) -> RevokeStore:
        return self._shared(url, "revokes", MemoryRevokeStore, clock)  # type: ignore[return-value]

    def schedule_store(self, url: str, *, clock: Clock | None = None) -> ScheduleStore:
        return self._shared(url, "schedules", MemoryScheduleStore, clock)  # type: ignore[return-value]

    def workflow_store(self, url: str, *, clock: Clock | None = None) -> WorkflowStore:
        return self._shared(url, "workflows", MemoryWorkflowStore, clock)  # type: ignore[return-value]

    def control_channel(self, url: str, *, clock: Clock | None = None) -> ControlChannel:
        return self._shared(url, "control", MemoryControlChannel, clock)  # type: ignore[return-value]

    def event_bus(self, url: str, *, clock: Clock | None = None) -> EventBus:
        return self._shared(url, "events", MemoryEventBus, clock)  # type: ignore[return-value]


adapter = MemoryAdapter()
