"""The settle batch: every status a worker stores and every ack, written in order through
``Broker.settle``, and what becomes of them when a write fails."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from .._codec import enc_hook
from .._errors import SerializationError, StemError, StoreLostError
from .._execute import safe_text
from .._messages import Delivery, Envelope, TaskError, TaskState, TaskStatus
from ._job import Job

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["Settlement"]

log = logging.getLogger("stem.worker")

#: A status to store and how long to keep it.
_Status = tuple[TaskStatus, float | None]


class _Started:
    """A ``started`` status not built yet: it is built when its batch is written, and
    only if no later status of the same task is in that batch (a quick task's result)."""

    __slots__ = ("at", "envelope", "id")

    def __init__(self, envelope: Envelope, at: float) -> None:
        self.envelope = envelope
        self.id = envelope.id
        self.at = at


#: One write waiting in the settle batch: a status, a delivery to ack after it, and who
#: waits for both: a future, or the Job of a success whose value ``execute`` already
#: checked (its write ends the job; see Outcomes.succeeded), or None (nobody waits).
_Entry = tuple[_Status | _Started | None, Delivery | None, "asyncio.Future[None] | Job | None"]


class Settlement:
    """A worker's writes to storage, batched with whatever else finished in the same moment.

    Every status the worker writes goes through here, so writes for one task land in
    the order they were made: a handler's ``started`` status, its progress, its result,
    and the ack of its delivery after its result.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.pending: list[_Entry] = []  # written by the next batch
        self._starting: list[Job] = []  # see note_started
        self._flusher: asyncio.Task[None] | None = None
        self._finishing: set[asyncio.Task[None]] = set()  # see Outcomes.unsettled

    def note_started(self, job: Job) -> None:
        """A handler begins: its ``started`` status goes into the next batched write,
        unless a later status of its task is in that batch (a quick task's result),
        in which case it is never built. The handler does not wait for it.

        It goes first in that batch, so it can never land after another status of
        the same task (see _take_batch).
        """
        self._starting.append(job)
        if self._flusher is None:
            self._kick_flusher()

    def hand_over(self, status: _Status, job: Job) -> None:
        """A success nothing awaits after its write: the slot moves on, and the write of
        the batch ends the job (Outcomes.succeeded), or, if it fails, Outcomes.unsettled does."""
        job.settling = True
        self.pending.append((status, job.delivery, job))
        if self._flusher is None:
            self._kick_flusher()

    async def write(self, status: _Status | None, delivery: Delivery | None) -> None:
        """Store the status, then ack (if a delivery is given), batched with whatever else
        finished in the same moment. Every status the worker writes goes through here
        (or through the batch directly, see :meth:`hand_over`), so writes for one task land
        in the order they were made.
        """
        assert self.worker.loop is not None
        done: asyncio.Future[None] = self.worker.loop.create_future()
        self.pending.append((status, delivery, done))
        self._kick_flusher()
        await done

    async def store_progress(self, envelope: Envelope, fraction: float, data: Any) -> None:
        worker = self.worker
        status = worker.app.make_status(
            envelope, TaskState.STARTED, worker=worker.id, progress=(fraction, data)
        )
        await self.write(status, None)

    async def drain(self) -> None:
        """Wait until the batch being written is, and what follows a failed write is done."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._finishing:
            await asyncio.wait(set(self._finishing))

    def _kick_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        try:
            await asyncio.sleep(0)  # let the handlers finishing in this loop turn join the batch
            while self.pending or self._starting:
                entries = self._storable(self._take_batch())
                error = await self._write(entries)
                if error is not None:
                    await self._isolate(entries, error)
        finally:
            self._flusher = None

    def _take_batch(self) -> list[_Entry]:
        """What waits to be written: the ``started`` statuses of the jobs that began
        since the last batch and have not handed over their result, then the rest."""
        batch, self.pending = self.pending, []
        starting, self._starting = self._starting, []
        if starting:
            now = self.worker.app.clock.now()
            started: list[_Entry] = [
                (_Started(job.envelope, now), None, None)
                for job in starting
                if not job.settling and job.envelope is not None
            ]
            batch = started + batch
        return batch

    def _storable(self, batch: list[_Entry]) -> list[_Entry]:
        """The batch as it will be written: one status per task, each one encodable.

        A status that cannot be encoded fails its own waiter with a SerializationError
        (its delivery is not acked) and leaves the batch: one bad result never fails
        the others. Error text no backend can hold (lone surrogates) is escaped instead.
        A success handed over by its Job is not encoded here: ``execute`` checked its
        value where it was produced, and its other fields come from a decoded envelope.
        """
        # Of several statuses of one task in a batch (a quick task's "started"
        # and its result, say), only the last needs writing: walk back from the end.
        seen: set[str] = set()
        entries: list[_Entry] = []
        make_status, worker = self.worker.app.make_status, self.worker.id
        for status, delivery, waiter in reversed(batch):
            if status is not None:
                key = status.id if isinstance(status, _Started) else status[0].id
                if key in seen:
                    status = None
                else:
                    seen.add(key)
                    if isinstance(status, _Started):
                        status = make_status(
                            status.envelope, TaskState.STARTED, worker=worker, now=status.at
                        )
                    elif waiter is None or type(waiter) is not Job:
                        try:
                            status = (_storable(status[0]), status[1])
                        except SerializationError as exc:
                            if waiter is None:
                                log.warning("%s; not stored", exc)
                            elif isinstance(waiter, asyncio.Future) and not waiter.done():
                                waiter.set_exception(exc)
                            continue
            if status is None and delivery is None and waiter is None:
                continue  # a started status that a later one replaces
            entries.append((status, delivery, waiter))
        entries.reverse()
        return entries

    async def _write(self, entries: list[_Entry]) -> Exception | None:
        """Store the statuses, then ack the deliveries; on success, release the waiters."""
        statuses: list[_Status] = [s for s, _, _ in entries if s is not None]  # type: ignore[misc]
        deliveries = [d for _, d, _ in entries if d is not None]
        if statuses or deliveries:
            try:
                await self.worker.broker.settle(deliveries, statuses, self.worker.app.backend)
            except Exception as exc:
                return exc
            if self.worker._outage.since is not None:
                self.worker._outage.recovered()
        succeeded: list[Job] = []
        for _, _, waiter in entries:
            if waiter is None:
                continue
            if type(waiter) is Job:
                succeeded.append(waiter)
            elif isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_result(None)
        if succeeded:
            self.worker._outcomes.succeeded(succeeded)
        return None

    async def _isolate(self, entries: list[_Entry], error: Exception) -> None:
        """``entries`` failed together: write them in halves to find the entries that fail
        alone, while that looks like one entry's fault; give the rest back."""
        if len(entries) == 1 or isinstance(error, StoreLostError):
            self._give_back(entries, error)
            return
        half = len(entries) // 2
        parts = [entries[:half], entries[half:]]
        errors = [await self._write(part) for part in parts]
        if errors[0] is not None and errors[1] is not None:
            # Both halves failed: not one entry's fault (the database is down, the disk
            # full), so splitting further would only repeat the failure.
            self._give_back(parts[0], errors[0])
            self._give_back(parts[1], errors[1])
            return
        for part, part_error in zip(parts, errors, strict=True):
            if part_error is not None:
                await self._isolate(part, part_error)

    def _give_back(self, entries: list[_Entry], error: Exception) -> None:
        """Fail the waiters of entries that could not be stored: their messages are redelivered."""
        if (
            len(entries) == 1
            and isinstance(error, _ENCODING_ERRORS)
            and not isinstance(error, StemError)
        ):
            # The backend could not encode this one status (the check before the batch
            # let it through): for its task, a result that cannot be stored.
            error = SerializationError(f"the backend cannot store it: {error}")
            if entries[0][2] is None:
                log.warning("a status was not stored: %s", error)
        else:
            # Their messages are redelivered when their leases end.
            self.worker._outage.failed(f"storing {len(entries)} result(s)", error)
        for _, _, waiter in entries:
            if type(waiter) is Job:
                finishing = asyncio.ensure_future(self.worker._outcomes.unsettled(waiter, error))
                self._finishing.add(finishing)
                finishing.add_done_callback(self._finishing.discard)
            elif isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_exception(error)


_ENCODING_ERRORS = (TypeError, ValueError, OverflowError, msgspec.EncodeError)
_probe = msgspec.json.Encoder(enc_hook=enc_hook)


def _storable(status: TaskStatus) -> TaskStatus:
    """``status`` if it encodes; else a copy with its error text escaped, if that encodes.

    Raises:
        SerializationError: it cannot be stored (its value, say, holds a lone surrogate).
    """
    try:
        _probe.encode(status)
        return status
    except _ENCODING_ERRORS as exc:
        problem: Exception = exc
    if status.error is not None:
        error = status.error
        safe = msgspec.structs.replace(
            status,
            error=TaskError(
                type=safe_text(error.type),
                message=safe_text(error.message),
                traceback=None if error.traceback is None else safe_text(error.traceback),
            ),
        )
        try:
            _probe.encode(safe)
            return safe
        except _ENCODING_ERRORS as exc:
            problem = exc
    raise SerializationError(
        f"the {status.state} status of {status.task}[{status.id}] cannot be stored "
        f"({type(problem).__name__}: {problem})"
    ) from problem
