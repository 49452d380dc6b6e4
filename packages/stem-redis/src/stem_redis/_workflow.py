"""The Redis workflow store: runs, checkpoints, waits and leases under one hash tag.

Every key starts with ``{P:wf}`` (``P`` the prefix), so every script touches one slot:
on Redis Cluster all workflow state lives on the one node that owns that slot.

* ``{P:wf}:run:ID``, a hash per run: the run's JSON without the fields that change
  (``body``), and each changing field on its own (status, fence, cursor, wake time,
  lease, wait, resume, result, error, stamps; a field absent is None), so scripts
  update a run without parsing JSON. See lua/_wf.lua.
* ``{P:wf}:steps:ID``, a hash per run of checkpoint name to ``POSITION NUL JSON``.
* ``{P:wf}:due``, the ids of non-final runs with a wake time, scored by ``wake_at``;
  ``{P:wf}:created``, every id by ``created_at``; ``{P:wf}:by-workflow:NAME``,
  ``{P:wf}:by-status:STATUS``, ``{P:wf}:by-status-workflow:STATUS:NAME`` and
  ``{P:wf}:by-parent:ID``, the same for listing with filters (ties by id).
* ``{P:wf}:watchers`` and ``{P:wf}:watch:TOPIC``: runs waiting on an event, by when
  they began waiting; ``{P:wf}:mail:N:ID:TOPIC`` (N the id's length), lists of events
  sent to a run before it waited, and ``{P:wf}:mailtopics:ID``, their topics.
* Every change of a run publishes on ``{P:wf}:changed:ID`` (``SPUBLISH`` on a
  cluster), which wakes :meth:`RedisWorkflowStore.wait_for_change`.

Time: with ``server_clock`` every script reads ``now`` from the Redis server
(``TIME``), so every time the store sets (lease ends, redispatch windows, wake times,
``updated_at``, ``suspended_at``, ``finished_at``) is on the server's clock, as the
contract says; a caller's ``wake_at``, ``resume_at`` and ``deadline`` are its own
times, compared with the server's as they are, like a message's ``eta``.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

import msgspec

from stem import Clock, DecodeError, DuplicateRunError, LeaseLostError, TaskError
from stem.contracts import (
    Resume,
    RunStatus,
    StepCheckpoint,
    Watcher,
    WorkflowRun,
    WorkflowStore,
)

from ._client import Arg, RedisStore
from ._url import RedisOptions

__all__ = ["RedisWorkflowStore"]

#: Runs last read by get_run whose versions a store remembers for wait_for_change.
SEEN_LIMIT = 10_000

_encode = msgspec.json.Encoder().encode
_run_decoder = msgspec.json.Decoder(WorkflowRun)
_step_decoder = msgspec.json.Decoder(StepCheckpoint)
_error_decoder = msgspec.json.Decoder(TaskError)


def _text(value: float | None) -> str:
    """A time as text that reads back as the same float ('' for None)."""
    return "" if value is None else repr(float(value))


def _time(value: float | None) -> str | None:
    """A time as text for a hash field (None: the field is left out)."""
    return None if value is None else repr(float(value))


def _as_dict(found: Any) -> dict[bytes, bytes]:
    """A hash as HGETALL gave it: a dict from the client, a flat list from a script."""
    if isinstance(found, dict):
        return found
    return dict(zip(found[0::2], found[1::2], strict=True))


def _fields(run: WorkflowRun) -> list[Arg]:
    """The run as the flat field, value list of its hash (see lua/_wf.lua)."""
    body = msgspec.structs.replace(
        run,
        status=RunStatus.PENDING,
        result=None,
        error=None,
        cursor=0,
        wake_at=None,
        resume_at=None,
        wait_topic=None,
        wait_deadline=None,
        resume=None,
        lease_owner=None,
        lease_expires_at=None,
        fence=0,
        updated_at=0.0,
        suspended_at=None,
        finished_at=None,
    )
    fields: dict[str, Arg | None] = {
        "body": _encode(body),
        "status": RunStatus(run.status).value,
        "fence": str(int(run.fence)),
        "cursor": str(int(run.cursor)),
        "workflow": run.workflow,
        "created": _text(run.created_at),
        "updated": _text(run.updated_at),
        "wake": _time(run.wake_at),
        "resume_at": _time(run.resume_at),
        "topic": run.wait_topic,
        "deadline": _time(run.wait_deadline),
        "owner": run.lease_owner,
        "lease": _time(run.lease_expires_at),
        "suspended": _time(run.suspended_at),
        "finished": _time(run.finished_at),
        "result": None if run.result is None else _encode(run.result),
        "error": None if run.error is None else _encode(run.error),
    }
    if run.resume is not None:
        fields["rkind"] = run.resume.kind
        fields["rtopic"] = run.resume.topic
        if run.resume.payload is not None:
            fields["rpayload"] = _encode(run.resume.payload)
    flat: list[Arg] = []
    for name, value in fields.items():
        if value is not None:
            flat += [name, value]
    return flat


class RedisWorkflowStore(RedisStore, WorkflowStore):
    """Workflow runs in Redis; every change is one Lua script (see the module docstring).

    Args:
        url: a ``redis://`` URL (or its parsed options); its ``prefix`` names the keys.
        clock: the clock read when ``server_clock`` is False.
        server_clock: whether leases and due times follow the Redis server's clock;
            None (the default) means True when no ``clock`` is given (production) and
            False when one is (a FakeClock in tests).
        share_connection: False to take a client of its own instead of sharing the
            pool of every store of this server in this event loop.
    """

    def __init__(
        self,
        url: str | RedisOptions = "redis://localhost:6379/0",
        *,
        clock: Clock | None = None,
        server_clock: bool | None = None,
        share_connection: bool = True,
    ) -> None:
        options = self._open(
            url, clock=clock, server_clock=server_clock, share_connection=share_connection
        )
        super().__init__(clock=clock, poll_interval=options.poll_interval)
        self._base = f"{{{options.prefix}:wf}}"
        # The version (``ver``) of each run as get_run last read it, so that a
        # wait_for_change next cannot miss a change made between that read and its wait.
        self._seen: dict[str, bytes | None] = {}

    # -- helpers ---------------------------------------------------------------------------

    def _run_key(self, run_id: str) -> str:
        return f"{self._base}:run:{run_id}"

    def _now_arg(self) -> str:
        """The ``now`` a script is sent: '' reads the server's clock (see lua/_args.lua)."""
        return "" if self.server_clock else _text(self.clock.now())

    async def _script(self, name: str, args: Sequence[Arg], *keys: str) -> Any:
        return await self._client().script(name, [self._base, *keys], args)

    def _lost(self, run_id: str, fence: int) -> LeaseLostError:
        return LeaseLostError(f"workflow run {run_id!r} is no longer held at fence {fence}")

    def _decode(self, found: Any) -> WorkflowRun:
        """A run from its hash's fields."""
        fields = _as_dict(found)

        def text(name: bytes) -> str | None:
            value = fields.get(name)
            return None if value is None else value.decode()

        def time(name: bytes) -> float | None:
            value = fields.get(name)
            return None if value is None else float(value)

        def json(name: bytes) -> Any:
            value = fields.get(name)
            return None if value is None else msgspec.json.decode(value)

        try:
            run = _run_decoder.decode(fields[b"body"])
            kind = text(b"rkind")
            error = fields.get(b"error")
            return msgspec.structs.replace(
                run,
                status=RunStatus(fields[b"status"].decode()),
                fence=int(fields[b"fence"]),
                cursor=int(fields[b"cursor"]),
                result=json(b"result"),
                error=None if error is None else _error_decoder.decode(error),
                wake_at=time(b"wake"),
                resume_at=time(b"resume_at"),
                wait_topic=text(b"topic"),
                wait_deadline=time(b"deadline"),
                resume=None
                if kind is None
                else Resume(
                    kind=kind,  # type: ignore[arg-type]  # the scripts write only these
                    topic=text(b"rtopic"),
                    payload=json(b"rpayload"),
                ),
                lease_owner=text(b"owner"),
                lease_expires_at=time(b"lease"),
                updated_at=time(b"updated") or 0.0,
                suspended_at=time(b"suspended"),
                finished_at=time(b"finished"),
            )
        except (KeyError, ValueError, msgspec.DecodeError) as exc:
            raise DecodeError(
                f"a workflow run stored in Redis at {self.options.masked_url} does not "
                f"decode ({exc!r}); give this app a prefix of its own (?prefix=NAME in the URL)"
            ) from exc

    @staticmethod
    def _decode_step(value: bytes) -> StepCheckpoint:
        return _step_decoder.decode(value.partition(b"\0")[2])

    # -- runs ------------------------------------------------------------------------------

    async def create_run(self, run: WorkflowRun) -> None:
        args: list[Arg] = [
            run.id,
            run.workflow,
            _text(run.created_at),
            "0" if run.parent_id is None else "1",
            run.parent_id or "",
            RunStatus(run.status).value,
            _text(run.wake_at),
            *_fields(run),
        ]
        if not await self._script("wf_create", args):
            raise DuplicateRunError(f"a workflow run with id {run.id!r} exists already")

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        fields = _as_dict(await self._client().command("HGETALL", self._run_key(run_id)))
        self._seen.pop(run_id, None)
        self._seen[run_id] = fields.get(b"ver")
        if len(self._seen) > SEEN_LIMIT:
            del self._seen[next(iter(self._seen))]
        return self._decode(fields) if fields else None

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[WorkflowRun]:
        state = "" if status is None else RunStatus(status).value
        by_workflow, other_status = False, ""
        if parent_id is not None:  # the children of one run: few, filtered as read
            index = f"{self._base}:by-parent:{parent_id}"
            by_workflow, other_status = workflow is not None, state
        elif workflow is not None and state:
            index = f"{self._base}:by-status-workflow:{state}:{workflow}"
        elif workflow is not None:
            index = f"{self._base}:by-workflow:{workflow}"
        elif state:
            index = f"{self._base}:by-status:{state}"
        else:
            index = f"{self._base}:created"
        args: list[Arg] = [
            max(int(offset), 0),
            max(int(limit), 0),
            "1" if by_workflow else "0",
            workflow or "",
            other_status,
        ]
        found = await self._script("wf_list", args, index)
        return [self._decode(fields) for fields in found]

    # -- leases ----------------------------------------------------------------------------

    async def claim_run(self, run_id: str, owner: str, ttl: float) -> WorkflowRun | None:
        found = await self._script("wf_claim", [self._now_arg(), run_id, owner, repr(float(ttl))])
        return None if found is None else self._decode(found)

    async def renew_run(self, run_id: str, fence: int, ttl: float) -> bool:
        args = [self._now_arg(), run_id, str(int(fence)), repr(float(ttl))]
        return bool(await self._script("wf_renew", args))

    async def release_run(self, run_id: str, fence: int) -> bool:
        return bool(await self._script("wf_release", [self._now_arg(), run_id, str(int(fence))]))

    # -- progress --------------------------------------------------------------------------

    async def save_step(self, run_id: str, fence: int, checkpoint: StepCheckpoint) -> None:
        value = f"{int(checkpoint.position)}\0".encode() + _encode(checkpoint)
        args: list[Arg] = [
            self._now_arg(),
            run_id,
            str(int(fence)),
            checkpoint.name,
            str(int(checkpoint.position) + 1),
            value,
        ]
        if not await self._script("wf_save_step", args):
            raise self._lost(run_id, fence)

    async def list_steps(self, run_id: str) -> builtins.list[StepCheckpoint]:
        found = _as_dict(await self._client().command("HGETALL", f"{self._base}:steps:{run_id}"))
        steps = [self._decode_step(value) for value in found.values()]
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
        args: list[Arg] = [
            self._now_arg(),
            run_id,
            str(int(fence)),
            _text(wake_at),
            _text(resume_at),
            "0" if topic is None else "1",
            topic or "",
            _text(deadline),
        ]
        found = await self._script("wf_suspend", args)
        if found[0] == 0:
            raise self._lost(run_id, fence)
        if found[0] == 2:
            return Resume(kind="event", topic=topic, payload=msgspec.json.decode(found[1]))
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
        args: list[Arg] = [
            self._now_arg(),
            run_id,
            str(int(fence)),
            RunStatus(status).value,
            b"" if result is None else _encode(result),
            b"" if error is None else _encode(error),
        ]
        if not await self._script("wf_finish", args):
            raise self._lost(run_id, fence)

    # -- events ----------------------------------------------------------------------------

    async def emit(self, topic: str, payload: Any) -> builtins.list[str]:
        data = _encode(payload)  # a payload that cannot be stored fails first
        ids = await self._script("wf_emit", [self._now_arg(), topic, data])
        return [i.decode() for i in ids]

    async def send_event(self, run_id: str, topic: str, payload: Any) -> bool:
        data = _encode(payload)
        return bool(await self._script("wf_send", [self._now_arg(), run_id, topic, data]))

    async def list_watchers(self, topic: str | None = None) -> builtins.list[Watcher]:
        args: list[Arg] = ["0" if topic is None else "1", topic or ""]
        found = await self._script("wf_watchers", args)
        watchers = [
            Watcher(
                run_id=run_id.decode(),
                topic=on.decode(),
                deadline=None if deadline is None else float(deadline),
                created_at=float(began or 0.0),
            )
            for run_id, on, deadline, began in found
        ]
        watchers.sort(key=lambda w: (w.created_at, w.run_id))
        return watchers

    # -- dispatch --------------------------------------------------------------------------

    async def due_runs(
        self, *, limit: int = 100, redispatch_after: float = 30.0
    ) -> builtins.list[str]:
        args: list[Arg] = [self._now_arg(), max(int(limit), 0), repr(float(redispatch_after))]
        return [i.decode() for i in await self._script("wf_due", args)]

    async def next_wake(self) -> float | None:
        """The earliest ``wake_at``; on the server's clock, moved onto this store's."""
        wake, now = await self._script("wf_next_wake", [self._now_arg()])
        if wake is None:
            return None
        if self.server_clock:
            return self.clock.now() + (float(wake) - float(now))
        return float(wake)

    async def wait_for_change(self, run_id: str, timeout: float) -> None:
        """Return soon after the run changes (in any process), or at ``timeout``.

        Woken by the ``PUBLISH`` of every change; a change made between the caller's
        last ``get_run`` and this wait is found by comparing the run's version.
        """
        client = self._client()
        channel = f"{self._base}:changed:{run_id}".encode()
        channels, _ = await client.hub.subscribe([channel], sticky=False)
        try:
            marks = client.hub.marks(channels)
            if run_id in self._seen:
                seen = self._seen.pop(run_id)
                if await client.command("HGET", self._run_key(run_id), "ver") != seen:
                    return
            await client.hub.wait(channels, marks, self.clock, min(timeout, self.poll_interval))
        finally:
            await client.hub.release(channels)

    # -- operators -------------------------------------------------------------------------

    async def cancel_run(self, run_id: str, reason: str) -> bool:
        error = _encode(TaskError(type="Cancelled", message=reason))
        return bool(await self._script("wf_cancel", [self._now_arg(), run_id, error]))

    async def rewind(self, run_id: str, step: str) -> bool:
        return bool(await self._script("wf_rewind", [self._now_arg(), run_id, step]))
