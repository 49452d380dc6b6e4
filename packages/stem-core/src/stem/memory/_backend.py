"""The in-memory result backend."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from msgspec.structs import replace

from .._clock import Clock
from .._messages import GroupState, TaskState, TaskStatus, WorkerHeartbeat
from .._notify import Notifier
from ..contracts import ResultBackend

__all__ = ["MemoryResultBackend"]


class MemoryResultBackend(ResultBackend):
    """Statuses, groups and heartbeats in process memory; watchers are woken, not polled."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._statuses: dict[str, TaskStatus] = {}
        self._groups: dict[str, GroupState] = {}
        self._group_ttls: dict[str, float | None] = {}
        self._group_ends: dict[str, float] = {}  # when each group with a ttl expires
        self._heartbeats: dict[str, tuple[WorkerHeartbeat, float]] = {}
        self._notifiers: defaultdict[str, Notifier] = defaultdict(Notifier)

    def _live(self, task_id: str) -> TaskStatus | None:
        status = self._statuses.get(task_id)
        if (
            status is not None
            and status.expires_at is not None
            and status.expires_at <= self.clock.now()
        ):
            del self._statuses[task_id]
            return None
        return status

    async def set_status(self, status: TaskStatus, *, ttl: float | None = None) -> None:
        now = self.clock.now()
        # A snapshot: the caller may go on changing its object.
        self._statuses[status.id] = replace(
            status,
            updated_at=status.updated_at or now,
            expires_at=now + ttl if ttl is not None else None,
        )
        notifier = self._notifiers.pop(status.id, None)
        if notifier is not None:
            notifier.notify()

    async def get_status(self, task_id: str) -> TaskStatus | None:
        status = self._live(task_id)
        return None if status is None else replace(status)

    async def list_statuses(
        self, *, state: TaskState | None = None, task: str | None = None, limit: int = 100
    ) -> list[TaskStatus]:
        live = [s for tid in list(self._statuses) if (s := self._live(tid)) is not None]
        chosen = [
            s
            for s in live
            if (state is None or s.state == state) and (task is None or s.task == task)
        ]
        chosen.sort(key=lambda s: s.updated_at, reverse=True)
        return [replace(s) for s in chosen[:limit]]

    async def expire(self, task_id: str, ttl: float) -> bool:
        status = self._live(task_id)
        if status is None:
            return False
        status.expires_at = self.clock.now() + ttl
        return True

    async def wait_for_change(self, task_id: str, timeout: float) -> None:
        await self._notifiers[task_id].wait(self.clock, timeout)

    async def init_group(
        self,
        group_id: str,
        size: int,
        *,
        meta: dict[str, object] | None = None,
        ttl: float | None = None,
    ) -> None:
        self._groups[group_id] = GroupState(id=group_id, size=size, meta=dict(meta or {}))
        self._group_ttls[group_id] = ttl
        self._touch_group(group_id)

    def _live_group(self, group_id: str) -> GroupState | None:
        ends = self._group_ends.get(group_id)
        if ends is not None and ends <= self.clock.now():
            del self._groups[group_id], self._group_ttls[group_id], self._group_ends[group_id]
            return None
        return self._groups.get(group_id)

    def _touch_group(self, group_id: str) -> None:
        """A write to the group: its expiry starts again from now."""
        ttl = self._group_ttls.get(group_id)
        if ttl is None:
            self._group_ends.pop(group_id, None)
        else:
            self._group_ends[group_id] = self.clock.now() + ttl

    async def add_group_result(self, group_id: str, status: TaskStatus) -> GroupState | None:
        group = self._live_group(group_id)
        if group is None:
            return None
        group.results.setdefault(status.id, status)
        self._touch_group(group_id)
        return _snapshot(group)

    async def get_group(self, group_id: str) -> GroupState | None:
        group = self._live_group(group_id)
        return None if group is None else _snapshot(group)

    async def claim_chord(
        self, group_id: str, owner: str, *, meta: dict[str, object] | None = None
    ) -> bool:
        group = self._live_group(group_id)
        if group is None or group.chord_claimed_by is not None:
            return False
        group.chord_claimed_by = owner
        group.chord_claimed_at = self.clock.now()
        group.chord_meta = dict(meta or {})
        self._touch_group(group_id)
        return True

    async def set_heartbeat(self, heartbeat: WorkerHeartbeat, *, ttl: float) -> None:
        self._heartbeats[heartbeat.worker_id] = (replace(heartbeat), self.clock.now() + ttl)

    async def get_heartbeat(self, worker_id: str) -> WorkerHeartbeat | None:
        entry = self._heartbeats.get(worker_id)
        if entry is None or entry[1] <= self.clock.now():
            return None
        return entry[0]

    async def list_heartbeats(self) -> list[WorkerHeartbeat]:
        now = self.clock.now()
        return [hb for hb, until in self._heartbeats.values() if until > now]

    async def get_statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        return {tid: replace(s) for tid in task_ids if (s := self._live(tid)) is not None}


def _snapshot(group: GroupState) -> GroupState:
    return GroupState(
        id=group.id,
        size=group.size,
        results=dict(group.results),
        meta=dict(group.meta),
        chord_claimed_by=group.chord_claimed_by,
        chord_claimed_at=group.chord_claimed_at,
        chord_meta=dict(group.chord_meta),
    )
