"""The in-memory workflow store: the reference :class:`WorkflowStore`."""

from __future__ import annotations

import builtins
from collections import deque
from typing import Any

import msgspec

from .._clock import Clock
from .._errors import DuplicateRunError, LeaseLostError
from .._messages import TaskError
from .._notify import Notifier
from ..contracts import (
    Resume,
    RunStatus,
    StepCheckpoint,
    Watcher,
    WorkflowRun,
    WorkflowStore,
)

__all__ = ["MemoryWorkflowStore"]

_run_encoder = msgspec.json.Encoder()
_run_decoder = msgspec.json.Decoder(WorkflowRun)
_step_decoder = msgspec.json.Decoder(StepCheckpoint)


class MemoryWorkflowStore(WorkflowStore):
    """Workflow runs in process memory. Records are kept encoded, as a database keeps
    them: a value that cannot be stored fails here as it would anywhere, and a caller's
    later changes to a record it passed in do not reach the store."""

    def __init__(self, *, clock: Clock | None = None, poll_interval: float = 0.5) -> None:
        super().__init__(clock=clock, poll_interval=poll_interval)
        self._runs: dict[str, bytes] = {}  # insertion order: creation order
        self._steps: dict[str, dict[str, bytes]] = {}  # run id -> name -> checkpoint
        self._watchers: dict[str, Watcher] = {}  # run id -> its one watcher
        self._mail: dict[tuple[str, str], deque[bytes]] = {}  # (run id, topic) -> payloads
        self._changed = Notifier()

    # -- helpers ---------------------------------------------------------------------------

    def _get(self, run_id: str) -> WorkflowRun | None:
        data = self._runs.get(run_id)
        return None if data is None else _run_decoder.decode(data)

    def _put(self, run: WorkflowRun) -> None:
        self._runs[run.id] = _run_encoder.encode(run)
        self._changed.notify()

    def _fenced(self, run_id: str, fence: int) -> WorkflowRun:
        run = self._get(run_id)
        if run is None or run.status is not RunStatus.RUNNING or run.fence != fence:
            raise LeaseLostError(f"workflow run {run_id!r} is no longer held at fence {fence}")
        return run

    def _leased(self, run: WorkflowRun, now: float) -> bool:
        return (
            run.status is RunStatus.RUNNING
            and run.lease_expires_at is not None
            and run.lease_expires_at > now
        )

    def _resolve(self, run: WorkflowRun, resume: Resume, now: float) -> None:
        self._watchers.pop(run.id, None)
        run.status = RunStatus.PENDING
        run.resume = resume
        run.wait_topic = run.wait_deadline = run.suspended_at = None
        run.wake_at = now
        run.updated_at = now
        self._put(run)

    def _wake(self, run: WorkflowRun) -> None:
        """A suspended run whose wake time came: pending, saying why it woke."""
        if run.wait_topic is not None:
            self._watchers.pop(run.id, None)
            run.resume = Resume(kind="timeout", topic=run.wait_topic)
        else:
            run.resume = Resume(kind="wake")
        run.status = RunStatus.PENDING
        run.wait_topic = run.wait_deadline = run.resume_at = None  # suspended_at stays

    # -- runs ------------------------------------------------------------------------------

    async def create_run(self, run: WorkflowRun) -> None:
        if run.id in self._runs:
            raise DuplicateRunError(f"a workflow run with id {run.id!r} exists already")
        self._put(run)

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        return self._get(run_id)

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[WorkflowRun]:
        runs = [
            run
            for run in map(_run_decoder.decode, self._runs.values())
            if (workflow is None or run.workflow == workflow)
            and (status is None or run.status == status)
            and (parent_id is None or run.parent_id == parent_id)
        ]
        runs.sort(key=lambda r: (r.created_at, r.id))
        return runs[max(offset, 0) : max(offset, 0) + max(limit, 0)]

    # -- leases ----------------------------------------------------------------------------

    async def claim_run(self, run_id: str, owner: str, ttl: float) -> WorkflowRun | None:
        run = self._get(run_id)
        now = self.clock.now()
        if run is None or run.status.is_final or self._leased(run, now):
            return None
        if run.status is RunStatus.SUSPENDED:
            if run.wake_at is None or run.wake_at > now:
                return None
            self._wake(run)
        run.status = RunStatus.RUNNING
        run.lease_owner, run.lease_expires_at = owner, now + ttl
        run.fence += 1
        run.wake_at = now + ttl
        run.updated_at = now
        self._put(run)
        return run

    async def renew_run(self, run_id: str, fence: int, ttl: float) -> bool:
        try:
            run = self._fenced(run_id, fence)
        except LeaseLostError:
            return False
        now = self.clock.now()
        run.lease_expires_at = run.wake_at = now + ttl
        self._put(run)
        return True

    async def release_run(self, run_id: str, fence: int) -> bool:
        try:
            run = self._fenced(run_id, fence)
        except LeaseLostError:
            return False
        now = self.clock.now()
        run.status = RunStatus.PENDING
        run.lease_owner = run.lease_expires_at = None
        run.wake_at = run.updated_at = now
        self._put(run)
        return True

    # -- progress --------------------------------------------------------------------------

    async def save_step(self, run_id: str, fence: int, checkpoint: StepCheckpoint) -> None:
        run = self._fenced(run_id, fence)
        data = _run_encoder.encode(checkpoint)  # fails before anything changes
        self._steps.setdefault(run_id, {})[checkpoint.name] = data
        run.cursor = max(run.cursor, checkpoint.position + 1)  # out-of-order saves never go back
        run.resume = None
        run.updated_at = self.clock.now()
        self._put(run)

    async def list_steps(self, run_id: str) -> builtins.list[StepCheckpoint]:
        steps = [_step_decoder.decode(d) for d in self._steps.get(run_id, {}).values()]
        steps.sort(key=lambda s: (s.position, s.completed_at))
        return steps

    async def suspend(
        self,
        run_id: str,
        fence: int,
        *,
        wake_at: float | None,
        resume_at: float | None = None,
        topic: str | None = None,
        deadline: float | None = None,
    ) -> Resume | None:
        run = self._fenced(run_id, fence)
        now = self.clock.now()
        if topic is not None:
            mail = self._mail.get((run_id, topic))
            if mail:
                payload = msgspec.json.decode(mail.popleft())
                if not mail:
                    del self._mail[(run_id, topic)]
                # Kept as the run's resume until its next checkpoint: a crash loses nothing.
                run.resume = Resume(kind="event", topic=topic, payload=payload)
                run.updated_at = now
                self._put(run)
                return run.resume
            self._watchers[run_id] = Watcher(
                run_id=run_id, topic=topic, deadline=deadline, created_at=now
            )
        run.status = RunStatus.SUSPENDED
        run.wake_at, run.resume_at = wake_at, resume_at
        run.wait_topic, run.wait_deadline = topic, deadline
        run.lease_owner = run.lease_expires_at = None
        run.suspended_at = run.updated_at = now
        self._put(run)
        return None

    async def finish_run(
        self,
        run_id: str,
        fence: int,
        status: RunStatus,
        *,
        result: Any = None,
        error: TaskError | None = None,
    ) -> None:
        if status not in (RunStatus.COMPLETED, RunStatus.FAILED):
            raise ValueError(f"finish_run takes completed or failed, not {status}")
        run = self._fenced(run_id, fence)
        _run_encoder.encode(result)  # a result that cannot be stored changes nothing
        now = self.clock.now()
        run.status, run.result, run.error = status, result, error
        self._end(run, now)

    def _end(self, run: WorkflowRun, now: float) -> None:
        run.lease_owner = run.lease_expires_at = run.wake_at = None
        run.wait_topic = run.wait_deadline = run.resume_at = run.resume = None
        run.finished_at = run.updated_at = now
        self._watchers.pop(run.id, None)
        for key in [k for k in self._mail if k[0] == run.id]:
            del self._mail[key]
        self._put(run)

    # -- events ----------------------------------------------------------------------------

    async def emit(self, topic: str, payload: Any) -> builtins.list[str]:
        data = msgspec.json.encode(payload)  # a payload that cannot be stored fails first
        now = self.clock.now()
        resolved = []
        for watcher in sorted(self._watchers.values(), key=lambda w: w.created_at):
            if watcher.topic != topic:
                continue
            run = self._get(watcher.run_id)
            if run is None:
                continue
            value = msgspec.json.decode(data)
            self._resolve(run, Resume(kind="event", topic=topic, payload=value), now)
            resolved.append(run.id)
        return resolved

    async def send_event(self, run_id: str, topic: str, payload: Any) -> bool:
        data = msgspec.json.encode(payload)
        run = self._get(run_id)
        if run is None or run.status.is_final:
            return False
        if run.status is RunStatus.SUSPENDED and run.wait_topic == topic:
            resume = Resume(kind="event", topic=topic, payload=msgspec.json.decode(data))
            self._resolve(run, resume, self.clock.now())
        else:
            self._mail.setdefault((run_id, topic), deque()).append(data)
        return True

    async def list_watchers(self, topic: str | None = None) -> builtins.list[Watcher]:
        found = [w for w in self._watchers.values() if topic is None or w.topic == topic]
        return sorted(found, key=lambda w: (w.created_at, w.run_id))

    # -- dispatch --------------------------------------------------------------------------

    async def due_runs(
        self, *, limit: int = 100, redispatch_after: float = 30.0
    ) -> builtins.list[str]:
        now = self.clock.now()
        due = [
            run
            for run in map(_run_decoder.decode, self._runs.values())
            if not run.status.is_final
            and run.wake_at is not None
            and run.wake_at <= now
            and not self._leased(run, now)
        ]
        due.sort(key=lambda r: (r.wake_at or 0.0, r.created_at))
        handed = due[: max(limit, 0)]
        for run in handed:
            if run.status is RunStatus.SUSPENDED:
                self._wake(run)
            run.wake_at = now + redispatch_after
            self._put(run)
        return [run.id for run in handed]

    async def next_wake(self) -> float | None:
        wakes = [
            run.wake_at
            for run in map(_run_decoder.decode, self._runs.values())
            if not run.status.is_final and run.wake_at is not None
        ]
        return min(wakes, default=None)

    async def wait_for_change(self, run_id: str, timeout: float) -> None:
        await self._changed.wait(self.clock, timeout)

    # -- operators -------------------------------------------------------------------------

    async def cancel_run(self, run_id: str, reason: str) -> bool:
        run = self._get(run_id)
        if run is None or run.status.is_final:
            return False
        run.status = RunStatus.CANCELLED
        run.error = TaskError(type="Cancelled", message=reason)
        run.fence += 1
        self._end(run, self.clock.now())
        return True

    async def rewind(self, run_id: str, step: str) -> bool:
        run = self._get(run_id)
        steps = self._steps.get(run_id, {})
        if run is None:
            return False
        positions = [
            _step_decoder.decode(d).position
            for name, d in steps.items()
            if name == step or name.rpartition("#")[0] == step
        ]
        if not positions:
            return False
        position = min(positions)
        for name, data in list(steps.items()):
            if name == step or _step_decoder.decode(data).position > position:
                del steps[name]
        now = self.clock.now()
        self._watchers.pop(run_id, None)
        run.status = RunStatus.PENDING
        run.cursor = position
        run.fence += 1
        run.result = run.error = run.resume = None
        run.lease_owner = run.lease_expires_at = None
        run.wait_topic = run.wait_deadline = run.resume_at = None
        run.suspended_at = run.finished_at = None
        run.wake_at = run.updated_at = now
        self._put(run)
        return True
