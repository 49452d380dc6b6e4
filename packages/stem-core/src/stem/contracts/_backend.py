"""The ResultBackend contract: task statuses, groups, chords and worker heartbeats."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence

from .._clock import Clock, SystemClock
from .._messages import GroupState, TaskState, TaskStatus, WorkerHeartbeat

__all__ = ["ResultBackend"]


class ResultBackend(abc.ABC):
    """Stores what happened to tasks, so any process can read it.

    Semantics every adapter keeps:

    * ``set_status`` replaces the stored status; with ``ttl`` it disappears after
      ``ttl`` seconds (``get_status`` then returns None).
    * ``add_group_result`` is idempotent per task id; ``claim_chord`` returns True
      to exactly one caller per group, however many call it at once.
    * A group created with ``ttl`` (and its results and claim) expires ``ttl`` seconds
      after the last write to it (``init_group``, ``add_group_result``, ``claim_chord``),
      on the store's clock: it then reads as None and refuses results and claims.
      ``init_group`` of an existing id starts the group afresh.
    * Heartbeats expire after their ``ttl``.

    :meth:`watch` holds the waiting policy; adapters that can notify override
    :meth:`wait_for_change`.
    """

    def __init__(self, *, clock: Clock | None = None, poll_interval: float = 0.2) -> None:
        self.clock: Clock = clock or SystemClock()
        self.poll_interval = poll_interval

    @abc.abstractmethod
    async def set_status(self, status: TaskStatus, *, ttl: float | None = None) -> None:
        """Store a status, replacing the one stored before."""

    async def set_statuses(self, statuses: Sequence[tuple[TaskStatus, float | None]]) -> None:
        """Store several statuses, each with its ttl; adapters override this to batch the writes."""
        for status, ttl in statuses:
            await self.set_status(status, ttl=ttl)

    @abc.abstractmethod
    async def get_status(self, task_id: str) -> TaskStatus | None:
        """The stored status, or None if unknown or expired."""

    async def get_statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        """Statuses of several tasks; unknown ids are left out."""
        found: dict[str, TaskStatus] = {}
        for task_id in task_ids:
            status = await self.get_status(task_id)
            if status is not None:
                found[task_id] = status
        return found

    @abc.abstractmethod
    async def list_statuses(
        self, *, state: TaskState | None = None, task: str | None = None, limit: int = 100
    ) -> list[TaskStatus]:
        """Stored statuses, most recently updated first, optionally filtered."""

    @abc.abstractmethod
    async def expire(self, task_id: str, ttl: float) -> bool:
        """Make a stored status disappear ``ttl`` seconds from now; False if unknown."""

    async def wait_for_change(self, task_id: str, timeout: float) -> None:
        """Return when the status of ``task_id`` may have changed, or after ``timeout``."""
        await self.clock.sleep(min(timeout, self.poll_interval))

    async def watch(
        self, task_id: str, *, timeout: float | None = None
    ) -> AsyncIterator[TaskStatus]:
        """Yield each new status of a task until it is final or ``timeout`` passes."""
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        last: TaskStatus | None = None
        while True:
            status = await self.get_status(task_id)
            if status is not None and status != last:
                last = status
                yield status
                if status.state.is_final:
                    return
                continue  # read again: it may have changed while the caller held the status
            remaining = 3600.0 if deadline is None else deadline - self.clock.monotonic()
            if remaining <= 0:
                return
            await self.wait_for_change(task_id, remaining)

    # -- groups and chords ----------------------------------------------------------------

    @abc.abstractmethod
    async def init_group(
        self,
        group_id: str,
        size: int,
        *,
        meta: dict[str, object] | None = None,
        ttl: float | None = None,
    ) -> None:
        """Create a group expecting ``size`` member results; an existing one with this id
        starts afresh (its results and chord claim are dropped). With ``ttl`` the group
        expires ``ttl`` seconds after the last write to it; None: it never expires."""

    @abc.abstractmethod
    async def add_group_result(self, group_id: str, status: TaskStatus) -> GroupState | None:
        """Record a member's final status and refresh the group's expiry; returns the
        group, or None (nothing stored) if it is unknown or expired."""

    @abc.abstractmethod
    async def get_group(self, group_id: str) -> GroupState | None:
        """The group with the results recorded so far, or None if unknown or expired."""

    @abc.abstractmethod
    async def claim_chord(
        self, group_id: str, owner: str, *, meta: dict[str, object] | None = None
    ) -> bool:
        """True for exactly one caller per live group: that caller dispatches the chord
        callback. The winner's ``meta`` (the callback's task id, say) and the time of the
        claim are recorded in the group (``chord_meta``, ``chord_claimed_at``)."""

    # -- worker heartbeats ----------------------------------------------------------------

    @abc.abstractmethod
    async def set_heartbeat(self, heartbeat: WorkerHeartbeat, *, ttl: float) -> None:
        """Store a worker's heartbeat; it expires after ``ttl`` seconds."""

    @abc.abstractmethod
    async def get_heartbeat(self, worker_id: str) -> WorkerHeartbeat | None:
        """A worker's last heartbeat, or None if none is live."""

    @abc.abstractmethod
    async def list_heartbeats(self) -> list[WorkerHeartbeat]:
        """The live heartbeats of all workers."""

    async def aclose(self) -> None:
        """Release connections."""
