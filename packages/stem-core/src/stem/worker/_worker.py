"""The worker: consumes deliveries, runs handlers in their pools, settles the outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import signal
import socket
import uuid
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .._codec import enc_hook
from .._errors import ConfigurationError, SerializationError, StemError, StoreLostError
from .._execute import Outcome, OutcomeKind, safe_text, task_error
from .._messages import (
    Delivery,
    Envelope,
    RevokeEntry,
    TaskError,
    TaskState,
    TaskStatus,
    WorkerHeartbeat,
)
from .._options import PoolKind
from .._ratelimit import LocalRateLimiter
from .._task import Task
from ..contracts import RateLimiter
from ._interrupt import ThreadPool
from ._job import Job, Terminated, retry_message
from ._process import ProcessPool
from ._slots import DONE, InContext, run_inline
from ._where import where

if TYPE_CHECKING:
    from .._app import Stem

__all__ = ["Worker"]

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
#: checked (its write ends the job; see Worker._succeeded), or None (nobody waits).
_Entry = tuple[_Status | _Started | None, Delivery | None, "asyncio.Future[None] | Job | None"]

log = logging.getLogger("stem.worker")


class Worker:
    """Runs the tasks of an app from one or more queues.

    Use it inside a program (``async with app.worker(...):``), run it until a signal
    (``await worker.run()``), or start it as a process (``stem worker --app mod:app``).

    Args:
        app: the Stem app whose tasks this worker runs.
        queues: queues to read, in order of preference (default: the app's default queue).
        concurrency: how many handlers may run at once: a hard cap, whatever the broker
            delivers. A ``(min, max)`` pair turns on autoscaling between the two.
        pool: run every plain-function task in this pool (``"thread"`` or ``"process"``)
            instead of its own choice.
        prefetch: messages to hold beyond the free slots (default 0: a message is only
            taken when a slot is free, so none waits behind a long task).
        lease: the longest lease (seconds) on a reserved message before its task is
            known; the worker uses the shortest ``visibility_timeout`` of its app's
            tasks if that is shorter, so a message taken by a worker killed at once is
            back within its task's timeout. The task's own timeout replaces it once
            the message is decoded.
        grace_period: on shutdown, how long running handlers may take to finish.
        max_deliveries: after this many deliveries without a result, a message is
            dead-lettered as ``poison``.
        heartbeat_interval: seconds between heartbeats to the result backend.
        revoke_interval: seconds between reads of new revocations.
        rate_limiter: shared limiter for rate-limited tasks (default: per process).
        rate_limit_hold: a rate-limited task whose turn is at most this many seconds
            away waits in its slot; a later turn re-publishes it with an eta.
        track_started: store a ``started`` status when a handler begins.
    """

    def __init__(
        self,
        app: Stem,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | tuple[int, int] = 10,
        pool: PoolKind | None = None,
        prefetch: int = 0,
        lease: float = 60.0,
        grace_period: float = 30.0,
        max_deliveries: int = 5,
        heartbeat_interval: float = 10.0,
        revoke_interval: float = 2.0,
        autoscale_interval: float = 1.0,
        rate_limiter: RateLimiter | None = None,
        rate_limit_hold: float = 1.0,
        track_started: bool = True,
        process_pool_size: int | None = None,
        worker_id: str | None = None,
    ) -> None:
        if isinstance(concurrency, tuple):
            low, high = concurrency
        else:
            low = high = concurrency
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
            raise ConfigurationError(
                f"concurrency must be a whole number >= 1 or a (min, max) pair, not {concurrency!r}"
            )
        if pool not in (None, "thread", "process"):
            raise ConfigurationError(
                f"pool must be 'thread' or 'process', not {pool!r}: it chooses where plain "
                "functions run; async handlers always run on the worker's event loop"
            )
        if prefetch < 0 or max_deliveries < 1 or lease <= 0 or grace_period < 0:
            raise ConfigurationError(
                "prefetch >= 0, max_deliveries >= 1, lease > 0 and grace_period >= 0 are needed"
            )
        self.app = app
        self.broker = app.broker
        self.queues = list(queues or [app.default_queue])
        self.min_concurrency, self.max_concurrency = low, high
        self.concurrency = low
        self.pool = pool
        self.prefetch = prefetch
        self.lease = lease
        self.grace_period = grace_period
        self.max_deliveries = max_deliveries
        self.heartbeat_interval = heartbeat_interval
        self.revoke_interval = revoke_interval
        self.autoscale_interval = autoscale_interval
        self.rate_limiter = rate_limiter or LocalRateLimiter(clock=app.clock)
        self.rate_limit_hold = rate_limit_hold
        self.track_started = track_started
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        if not isinstance(self.id, str) or not _encodes(self.id):
            # It is in every status the worker writes, which are not checked one by one.
            raise ConfigurationError(f"worker_id must be valid Unicode text, not {self.id!r}")
        self.threads = ThreadPool(high)  # its own threads: see ._interrupt
        self.processes = ProcessPool(process_pool_size or min(high, os.cpu_count() or 1))
        self.revoked: dict[str, RevokeEntry] = {}
        self.jobs: set[Job] = set()
        # processed counts every message this worker finished; each is also counted in
        # exactly one of the others, so they add up to processed (docs/workers.md).
        self.counters = {
            "processed": 0,
            "succeeded": 0,
            "failed": 0,
            "retried": 0,
            "dead": 0,
            "revoked": 0,
            "skipped": 0,
        }
        #: Why the worker stopped by itself (its broker's database is gone), if it did.
        self.failure: StoreLostError | None = None
        self._giving_up: asyncio.Task[None] | None = None
        self.started_at = 0.0
        self.last_consumed_at: float | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Slots: one task per slot of concurrency runs jobs one after another (see
        # _slot). Reserved jobs wait in _ready; idle slots wait on their future in _idle.
        self._slots: set[asyncio.Task[None]] = set()
        self._ready: deque[Job] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._busy = 0  # slots running a job
        self._inline_run = 8  # see _add_slots
        self._finishing: set[asyncio.Task[None]] = set()  # see _unsettled
        self._starting: list[Job] = []  # see note_started
        self._room = asyncio.Event()
        self._waiting_for_room = False  # the consumer waits on _room (see _note_room)
        self._closing = False  # _stopping is set: a plain flag for the slots' loop
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._settling: list[_Entry] = []
        # Lease renewal: when each job's lease is renewed next, and when the renewal
        # loop wakes next; a job due sooner than that wakes it (see _schedule_renewal).
        self._renew_at: dict[Job, float] = {}
        self._renewal_due = math.inf
        self._renewal_changed = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._revoked_seq = 0  # the largest RevokeEntry.seq read so far
        self._signals = 0
        self._started = False
        self._force = asyncio.Event()
        self._shutdown: asyncio.Task[None] | None = None
        self._signal_stop: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start consuming; returns at once (the loops run in the background)."""
        if self._started:
            return
        self._started = True
        self.loop = asyncio.get_running_loop()
        self.started_at = self.app.clock.now()
        timeouts = [t.options_.visibility_timeout for t in self.app.tasks.values()]
        self.lease = min([self.lease, *timeouts])
        await self._sync_revocations()
        await self.app.hooks.emit("on_worker_start", worker=self)
        self._loops = [
            asyncio.ensure_future(self._guard(self._consume(), "consumer")),
            asyncio.ensure_future(self._guard(self._renew_leases(), "lease renewal")),
            asyncio.ensure_future(self._guard(self._heartbeats(), "heartbeat")),
            asyncio.ensure_future(self._guard(self._revocations(), "revocation")),
        ]
        if self.min_concurrency != self.max_concurrency:
            self._loops.append(asyncio.ensure_future(self._guard(self._autoscale(), "autoscaler")))
        self._add_slots()
        log.info("%s", self.banner())

    def banner(self) -> str:
        """What the worker logs when it starts: where it reads, what and how (no passwords)."""
        app = self.app
        if self.pool is None:
            pool = "per task (async handlers on the loop, plain functions in threads"
            pool += ", pool='process' tasks in child processes)"
        else:
            pool = f"{self.pool} for plain functions, async handlers on the loop"
        tasks = sorted(app.tasks)
        lines = [
            f"worker {self.id} ready, consuming {', '.join(self.queues)}",
            f"  broker:      {where(app.url, self.broker)}",
            f"  backend:     {where(app.backend_url, app.backend)}",
            f"  pool:        {pool}",
            f"  concurrency: {self._concurrency_text()}, prefetch {self.prefetch}",
            f"  tasks ({len(tasks)}): {', '.join(tasks) or 'none registered'}",
        ]
        return "\n".join(lines)

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop gracefully: consume no more, give back what has not started, let running
        handlers finish within the grace period, then stop them and give them back too.

        Called again while stopping with ``grace_period=0``, it cuts the grace period short.
        """
        if not self._started:
            return
        if grace_period == 0:
            self._force.set()
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(
                self._stop(self.grace_period if grace_period is None else grace_period)
            )
        await asyncio.shield(self._shutdown)

    async def _stop(self, grace: float) -> None:
        self._stopping.set()
        self._closing = True
        self._room.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loops[0]  # the consumer sees _stopping and gives back a batch it just read
        # Not started yet: back to the queue at once. A slot seeing _stopping takes no
        # more jobs; one still in its checks (a rate-limit wait) is cancelled.
        waiting = list(self._ready)
        self._ready.clear()
        for job in self.jobs:
            if job.task is not None and not job.running:
                job.task.cancel()
        for job in waiting:
            with contextlib.suppress(Exception):  # else its lease runs out: not lost either
                await self.broker.nack(job.delivery, requeue=True)
            self._release(job)
        while self._idle:
            self._idle.popleft().set_result(None)  # idle slots end
        if self._slots and grace > 0 and not self._force.is_set():
            await _first(
                asyncio.wait(set(self._slots)), self.app.clock.sleep(grace), self._force.wait()
            )
        leftovers = [j for j in self.jobs if j.task is not None and not j.task.done()]
        for job in leftovers:
            log.warning("stopping %s before it finished; it goes back to the queue", _describe(job))
            if job.interrupt is not None:
                job.interrupt(Terminated())
            assert job.task is not None
            job.task.cancel()
        if self._slots:
            await asyncio.wait(set(self._slots))
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._finishing:
            await asyncio.wait(set(self._finishing))
        for loop in self._loops[1:]:
            loop.cancel()
        await asyncio.gather(*self._loops[1:], return_exceptions=True)
        if self.failure is None:  # else the backend is gone too
            await self._beat(final=True)
        await self.app.hooks.emit("on_worker_stop", worker=self)
        self.threads.shutdown(wait=False, cancel_futures=True)
        self.processes.close()
        self._stopped.set()
        log.info(
            "worker %s stopped (%s)",
            self.id,
            ", ".join(f"{k} {v}" for k, v in self.counters.items()),
        )

    async def run(self) -> None:
        """Start and run until SIGTERM or SIGINT; a second signal stops at once."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self.start()
            await self._stopped.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if self.failure is not None:
            raise self.failure

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info(
                "%s: finishing running tasks (up to %ss); send it again to stop at once",
                name,
                self.grace_period,
            )
        else:
            log.warning("%s again: stopping at once, giving running tasks back", name)
        self._signal_stop = asyncio.ensure_future(self.stop(None if self._signals == 1 else 0))

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        # If the body failed, do not wait out the grace period: running tasks go back
        # to the queue (never lost) and the error surfaces at once.
        await self.stop(grace_period=0 if exc_type is not None else None)
        if self.failure is not None and exc_type is None:
            raise self.failure

    # -- health and stats --------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return len(self.jobs)

    def heartbeat(self) -> WorkerHeartbeat:
        return WorkerHeartbeat(
            worker_id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
            inflight=len(self.jobs),
            processed=self.counters["processed"],
            succeeded=self.counters["succeeded"],
            failed=self.counters["failed"],
            retried=self.counters["retried"],
            dead=self.counters["dead"],
            revoked=self.counters["revoked"],
            skipped=self.counters["skipped"],
            started_at=self.started_at,
            sent_at=self.app.clock.now(),
            last_consumed_at=self.last_consumed_at,
            meta={"pool": self.pool or "per-task", "stopping": self._stopping.is_set()},
        )

    def healthy(self, *, max_silence: float | None = None) -> bool:
        """True if the consumer read from the broker recently (not merely that the process
        lives) and its pools can run as many handlers as they should."""
        if self.last_consumed_at is None or self._stopped.is_set():
            return False
        if not (self.threads.healthy and self.processes.healthy):
            return False
        limit = max_silence if max_silence is not None else max(5.0, 3 * self.broker.poll_interval)
        return self.app.clock.now() - self.last_consumed_at <= limit

    def _concurrency_text(self) -> str:
        if self.min_concurrency == self.max_concurrency:
            return str(self.concurrency)
        return f"{self.concurrency} (autoscaling {self.min_concurrency}-{self.max_concurrency})"

    def _count(self, outcome: str) -> None:
        """One more message finished, with this outcome (see ``counters``)."""
        self.counters[outcome] += 1
        self.counters["processed"] += 1

    # -- consuming -------------------------------------------------------------------------

    async def _consume(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            wanted = self._to_reserve()
            if wanted <= 0:
                self._room.clear()
                self._waiting_for_room = True
                try:
                    await self._room.wait()
                finally:
                    self._waiting_for_room = False
                continue
            try:
                # While this read is out, the messages it asks for count as held: no
                # other read is made, so prefetch=0 never takes more than the free slots.
                batch = await self.broker.reserve(self.queues, wanted, self.lease)
                self.last_consumed_at = self.app.clock.now()
                if not batch:
                    await self._wait_for_messages()
                    continue
            except StoreLostError as exc:
                self._give_up(exc)
                return
            except Exception:
                # A broker outage must not end the loop: log, back off, read again.
                # Health checks see the silence in last_consumed_at.
                log.exception("reading from the broker failed; retrying in %.1fs", backoff)
                await _first(self.app.clock.sleep(backoff), self._stopping.wait())
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if self._stopping.is_set():  # stopped while reading: give the batch back
                for delivery in batch:
                    await self.broker.nack(delivery, requeue=True)
                break
            for delivery in batch:
                job = Job(self, delivery, self.lease, lease_expires_at=delivery.lease_expires_at)
                self.jobs.add(job)
                self._schedule_renewal(job)
                self._ready.append(job)
            self._wake_slot()

    def _to_reserve(self) -> int:
        """How many messages to reserve now; 0 while the worker should wait for room.

        A slot is free when no job runs in it and no reserved message waits for it
        (so a finished handler whose result is being written frees its slot). The
        worker reserves when half of ``concurrency + prefetch`` is free, or at once
        when a slot is free and no message waits: the read overlaps with the handlers
        still running, and a free slot never idles while messages are ready. Results
        waiting to be written count too, beyond ``concurrency + prefetch`` of them, so
        a slow result store slows the reading down instead of piling up work.
        """
        capacity = self.concurrency + self.prefetch
        ready = len(self._ready)
        free = capacity - self._busy - ready
        settling = len(self.jobs) - self._busy - ready
        if settling > capacity:
            free -= settling - capacity
        if free <= 0 or (ready and free < max(1, capacity // 2)):
            return 0
        return free

    def _note_room(self) -> None:
        """Wake the consumer if it waits for room and there is enough now."""
        if self._waiting_for_room and self._to_reserve() > 0:
            self._waiting_for_room = False
            self._room.set()

    # -- slots -----------------------------------------------------------------------------

    def _add_slots(self) -> None:
        # Jobs a slot runs one after another without waiting, before it lets the
        # consumer and the settle batch run: a quarter of the capacity, at least 8.
        self._inline_run = max(8, (self.concurrency + self.prefetch) // 4)
        while len(self._slots) < self.concurrency:
            slot = asyncio.ensure_future(self._slot())
            slot.add_done_callback(self._slot_ended)
            self._slots.add(slot)

    def _slot_ended(self, slot: asyncio.Task[None]) -> None:
        # A slot handles every error of its jobs; one that fails all the same (a bug)
        # must not leave the worker with a slot fewer: say so, and start another.
        if slot.cancelled() or slot.exception() is None:
            return
        log.error(
            "a slot of worker %s failed; starting another", self.id, exc_info=slot.exception()
        )
        if not self._closing:
            self._add_slots()

    def _wake_slot(self) -> None:
        """Wake one idle slot if a job waits: called when jobs arrive and when a job
        suspends (its slot cannot take the next one until it resumes)."""
        if self._ready and self._idle:
            self._idle.popleft().set_result(None)

    async def _slot(self) -> None:
        """One slot of concurrency: runs ready jobs one after another until the worker
        stops or has more slots than its concurrency (autoscaling down).

        A job that finishes without waiting for anything (a quick async handler) is
        followed at once by the next, with no task or future of its own; after a
        quarter of the capacity run that way the slot yields, so the consumer and the
        settle batch keep up.
        """
        me = asyncio.current_task()
        assert me is not None and self.loop is not None
        inline = 0
        try:
            while not self._closing and len(self._slots) <= self.concurrency:
                if not self._ready:
                    waiter = self.loop.create_future()
                    self._idle.append(waiter)
                    try:
                        await waiter
                    finally:
                        if not waiter.done():  # cancelled while idle
                            with contextlib.suppress(ValueError):
                                self._idle.remove(waiter)
                    inline = 0
                    continue
                job = self._ready.popleft()
                self._busy += 1
                job.task = me
                suspended = False
                try:
                    coro, context = job.handle(), contextvars.copy_context()
                    yielded = run_inline(coro, context)
                    if yielded is not DONE:
                        # It waits for something: the next job goes to another slot.
                        suspended = True
                        self._wake_slot()
                        job.driver = InContext(coro, context, me, yielded)
                        await job.driver
                except asyncio.CancelledError:
                    # Shutdown took the job back: it goes back to the queue at once, never lost.
                    with contextlib.suppress(Exception):  # else its lease runs out: not lost either
                        await asyncio.shield(self.broker.nack(job.delivery, requeue=True))
                    if self._stopping.is_set():
                        return
                    while me.cancelling():  # the handler cancelled itself: the slot goes on
                        me.uncancel()
                except StoreLostError as exc:
                    self._give_up(exc)
                except Exception:
                    log.exception(
                        "unexpected error while handling a message; it will be redelivered"
                    )
                    with contextlib.suppress(Exception):
                        await self.broker.nack(job.delivery, requeue=True)
                finally:
                    job.task = job.driver = None
                    self._busy -= 1
                    if not job.settling:
                        self._release(job)
                    elif (suspended or not self._ready) and self._waiting_for_room:
                        self._note_room()  # else once per run of inline jobs, below
                if suspended:
                    inline = 0
                else:
                    inline += 1
                    if inline >= self._inline_run:
                        inline = 0
                        if self._waiting_for_room:
                            self._note_room()
                        await asyncio.sleep(0)
        finally:
            self._slots.discard(me)
            self._wake_slot()  # a job this slot would have taken goes to another

    def _release(self, job: Job) -> None:
        """The job is over: forget it."""
        job.close()
        self.jobs.discard(job)
        self._renew_at.pop(job, None)
        self._note_room()

    def _give_up(self, exc: StoreLostError) -> None:
        """Stop at once (nothing can be stored any more); run() then raises ``exc``."""
        if self.failure is not None:
            return
        self.failure = exc
        log.error("worker %s stops: %s", self.id, exc)
        self._giving_up = asyncio.ensure_future(self.stop(grace_period=0))

    async def _wait_for_messages(self) -> None:
        """Wait until a message may be ready: woken by the broker, by the next due time, or by stop."""
        timeout = self.broker.poll_interval
        due = await self.broker.next_due(self.queues)
        if due is not None:
            timeout = max(0.0, min(timeout, due - self.app.clock.now()))
        await _first(self.broker.wait_for_messages(self.queues, timeout), self._stopping.wait())

    def pool_for(self, task: Task[Any, Any]) -> PoolKind:
        if task.is_async:
            return "async"
        if self.pool in ("thread", "process"):
            return self.pool
        return "process" if task.options_.pool == "process" else "thread"

    # -- settling --------------------------------------------------------------------------

    async def settle(
        self, job: Job, task: Task[Any, Any], envelope: Envelope, outcome: Outcome
    ) -> None:
        app = self.app
        if log.isEnabledFor(logging.INFO):
            job.elapsed = app.clock.monotonic() - job.started_at
        if outcome.kind is OutcomeKind.SUCCEEDED:
            status = app.make_status(envelope, TaskState.SUCCEEDED, outcome=outcome, worker=self.id)
            # "stem.unique": a claim to release after the write (see UniqueCoordinator).
            if "stem.unique" not in envelope.meta and "on_success" not in app.hooks.listened:
                # Nothing to await after the write: the slot moves on, and the write of
                # the batch ends the job (_succeeded), or, if it fails, _unsettled does.
                job.settling = True
                self._settling.append((status, job.delivery, job))
                if self._flusher is None:
                    self._kick_flusher()
                return
            try:
                await self._settle(status, job.delivery)
            except SerializationError as exc:
                # This result alone cannot be stored; the others of its batch were.
                outcome = _unstorable(task.name, exc)
            else:
                self._count("succeeded")
                await app.unique.release(envelope)
                self._log_success(job, envelope)
                await app.hooks.emit("on_success", ctx=job.context(), value=outcome.value)
                return
        if outcome.kind is OutcomeKind.RETRY:
            countdown = max(0.0, outcome.countdown or 0.0)
            following = msgspec.structs.replace(envelope, attempt=envelope.attempt + 1)
            await self.broker.publish(
                retry_message(following, app.clock.now() + countdown, app.wire_format)
            )
            await self._settle(
                app.make_status(envelope, TaskState.RETRIED, outcome=outcome, worker=self.id),
                job.delivery,
            )
            self._count("retried")
            log.info(
                "%s[%s] failed (%s), retry %d/%d in %.1fs",
                envelope.task,
                envelope.id,
                outcome.error.type if outcome.error else "?",
                envelope.attempt + 1,
                envelope.max_retries,
                countdown,
            )
            await app.hooks.emit(
                "on_retry", ctx=job.context(), error=outcome.error, countdown=countdown
            )
        else:
            await self._fail(job, envelope, outcome)

    async def _fail(self, job: Job, envelope: Envelope, outcome: Outcome) -> None:
        await self.dead_letter(job, outcome.reason or "failed", outcome.error, outcome=outcome)
        self._count("failed" if outcome.kind is OutcomeKind.FAILED else "dead")
        message = outcome.error.message if outcome.error else ""
        log.warning(
            "%s[%s] %s after %d attempt(s)%s",
            envelope.task,
            envelope.id,
            outcome.reason,
            envelope.attempt + 1,
            f": {message}" if message and message != outcome.reason else "",
        )
        await self.app.hooks.emit("on_failure", ctx=job.context(), error=outcome.error)

    def _log_success(self, job: Job, envelope: Envelope) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s[%s] succeeded in %.3fs (attempt %d)",
                envelope.task,
                envelope.id,
                job.elapsed,
                envelope.attempt + 1,
            )

    def _succeeded(self, jobs: list[Job]) -> None:
        """Successes handed to the batch (see :meth:`settle`) are stored and acked."""
        self.counters["succeeded"] += len(jobs)
        self.counters["processed"] += len(jobs)
        logging_them = log.isEnabledFor(logging.INFO)
        for job in jobs:
            if logging_them:
                assert job.envelope is not None
                self._log_success(job, job.envelope)
            job.close()  # as _release does, but the consumer is woken once
            self.jobs.discard(job)
            self._renew_at.pop(job, None)
        self._note_room()

    async def _unsettled(self, job: Job, error: Exception) -> None:
        """A success handed to the batch could not be stored: what awaiting it would have done."""
        try:
            if isinstance(error, SerializationError):
                assert job.envelope is not None
                await self._fail(job, job.envelope, _unstorable(job.envelope.task, error))
            elif isinstance(error, StoreLostError):
                self._give_up(error)
            else:  # _give_back logged why; the message goes back to the queue
                await self.broker.nack(job.delivery, requeue=True)
        except StoreLostError as exc:
            self._give_up(exc)
        except Exception:
            log.exception("unexpected error while handling a message; it will be redelivered")
        finally:
            self._release(job)

    async def dead_letter(
        self, job: Job, reason: str, error: TaskError | None, *, outcome: Outcome | None = None
    ) -> None:
        """Store a failed status (if the message decoded) and move the message to the dead letters."""
        envelope = job.envelope
        if envelope is not None:
            failed = outcome or Outcome(OutcomeKind.DEAD, error=error, reason=reason)
            try:
                await self._settle(
                    self.app.make_status(
                        envelope, TaskState.FAILED, outcome=failed, worker=self.id
                    ),
                    None,
                )
            except SerializationError:
                # Even the failure cannot be stored (a name no backend can hold): the
                # message is still set aside, so it neither vanishes nor comes back.
                log.exception("cannot store the failed status of %s", _describe(job))
            await self.app.unique.release(envelope)
        await self.broker.dead_letter(
            job.delivery,
            reason,
            error=f"{error.type}: {error.message}" if error else None,
            traceback=error.traceback if error else None,
        )
        if outcome is None:
            self._count("dead")
            log.warning(
                "%s dead-lettered (%s)%s",
                _describe(job),
                reason,
                f": {error.message}" if error is not None else "",
            )
        await self.app.hooks.emit(
            "on_dead_letter", envelope=envelope, delivery=job.delivery, reason=reason, error=error
        )

    async def quarantine(self, job: Job, error: TaskError) -> None:
        """Set aside a message delivered ``max_deliveries`` times without a result.

        If its task already ended, the deliveries repeated finished work (its ack was
        lost): a stored success or revocation is kept and the message acknowledged; a
        stored failure is kept and the message goes to the dead letters, where that
        failure would have put it. Otherwise it is dead-lettered as ``poison``.
        """
        task_id = job.envelope.id if job.envelope is not None else job.delivery.message.id
        status = await self.app.backend.get_status(task_id)
        if status is None or not status.state.is_final:
            await self.dead_letter(job, "poison", error)
            return
        if status.state is TaskState.FAILED:
            stored = status.error
            await self.broker.dead_letter(
                job.delivery,
                "failed",
                error=f"{stored.type}: {stored.message}" if stored else None,
                traceback=stored.traceback if stored else None,
            )
        else:
            await self._settle(None, job.delivery)
        self._count("skipped")
        log.warning(
            "%s was delivered %d times, but its task had already ended (%s): %s without running",
            _describe(job),
            job.delivery.deliveries,
            status.state,
            "dead-lettered" if status.state is TaskState.FAILED else "acknowledged",
        )

    async def finish_revoked(self, job: Job, why: str) -> None:
        assert job.envelope is not None
        outcome = Outcome(
            OutcomeKind.DEAD, error=TaskError(type="Revoked", message=why), reason="revoked"
        )
        await self._settle(
            self.app.make_status(job.envelope, TaskState.REVOKED, outcome=outcome, worker=self.id),
            job.delivery,
        )
        self._count("revoked")
        await self.app.unique.release(job.envelope)
        log.info("%s[%s] revoked: %s", job.envelope.task, job.envelope.id, why)

    async def reschedule(
        self, job: Job, envelope: Envelope, delay: float, meta: dict[str, Any]
    ) -> None:
        """Put a message back with an eta (rate limits), as a new message so it is not counted as a failed delivery."""
        await self.broker.publish(
            retry_message(envelope, self.app.clock.now() + delay, self.app.wire_format, meta)
        )
        await self._settle(None, job.delivery)

    async def store_progress(self, envelope: Envelope, fraction: float, data: Any) -> None:
        status = self.app.make_status(
            envelope, TaskState.STARTED, worker=self.id, progress=(fraction, data)
        )
        await self._settle(status, None)

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

    async def _settle(self, status: _Status | None, delivery: Delivery | None) -> None:
        """Store the status, then ack (if a delivery is given), batched with whatever else
        finished in the same moment. Every status the worker writes goes through here
        (or through the batch directly, see :meth:`settle`), so writes for one task land
        in the order they were made.
        """
        assert self.loop is not None
        done: asyncio.Future[None] = self.loop.create_future()
        self._settling.append((status, delivery, done))
        self._kick_flusher()
        await done

    def _kick_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # let the handlers finishing in this loop turn join the batch
            while self._settling or self._starting:
                entries = self._storable(self._take_batch())
                error = await self._write(entries)
                if error is not None:
                    await self._isolate(entries, error)
        finally:
            self._flusher = None

    def _take_batch(self) -> list[_Entry]:
        """What waits to be written: the ``started`` statuses of the jobs that began
        since the last batch and have not handed over their result, then the rest."""
        batch, self._settling = self._settling, []
        starting, self._starting = self._starting, []
        if starting:
            now = self.app.clock.now()
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
        make_status, worker = self.app.make_status, self.id
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
                await self.broker.settle(deliveries, statuses, self.app.backend)
            except Exception as exc:
                return exc
        succeeded: list[Job] = []
        for _, _, waiter in entries:
            if waiter is None:
                continue
            if type(waiter) is Job:
                succeeded.append(waiter)
            elif isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_result(None)
        if succeeded:
            self._succeeded(succeeded)
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
            log.error(
                "storing %d result(s) failed; their messages will be redelivered",
                len(entries),
                exc_info=error,
            )
        for _, _, waiter in entries:
            if type(waiter) is Job:
                finishing = asyncio.ensure_future(self._unsettled(waiter, error))
                self._finishing.add(finishing)
                finishing.add_done_callback(self._finishing.discard)
            elif isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_exception(error)

    # -- background loops ------------------------------------------------------------------

    async def _guard(self, coro: Any, name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the worker's %s loop failed", name)

    def _schedule_renewal(self, job: Job) -> None:
        """Renew ``job``'s lease when a third of it has passed; wake the loop if that is sooner."""
        at = job.lease_expires_at - job.lease * 2 / 3
        self._renew_at[job] = at
        if at < self._renewal_due:
            self._renewal_changed.set()

    async def renew(self, job: Job) -> bool:
        """Extend ``job``'s lease by its full length (``job.lease``) from now."""
        now = self.app.clock.now()
        ok = await self.broker.extend_lease(job.delivery, job.lease)
        if ok:
            job.lease_expires_at = now + job.lease
            if job in self.jobs:
                self._schedule_renewal(job)
        else:
            self._renew_at.pop(job, None)  # another consumer has it now: do not try again
            log.warning(
                "lost the lease on %s (its lease of %gs ran out and it was handed out again); "
                "it may run twice",
                _describe(job),
                job.lease,
            )
        return ok

    async def _renew_one(self, job: Job) -> None:
        try:
            await self.renew(job)
        except Exception:
            log.exception("renewing the lease on %s failed; trying again soon", _describe(job))
            if job in self.jobs:
                # Try again well before the lease runs out (a third of what is left).
                left = job.lease_expires_at - self.app.clock.now()
                self._renew_at[job] = self.app.clock.now() + max(0.05, left / 3)

    async def _renew_leases(self) -> None:
        """Renew every lease when a third of it has passed, whatever its length."""
        clock = self.app.clock
        while True:
            now = clock.now()
            due = [job for job, at in self._renew_at.items() if at <= now]
            if due:
                await asyncio.gather(*(self._renew_one(job) for job in due))
            # No await between here and the sleep: a job scheduled from now on sees the
            # new due time and wakes the loop if it needs renewing sooner.
            self._renewal_due = min(self._renew_at.values(), default=math.inf)
            self._renewal_changed.clear()
            if self._renewal_due == math.inf:
                await self._renewal_changed.wait()
            else:
                await _first(
                    clock.sleep(self._renewal_due - clock.now()), self._renewal_changed.wait()
                )

    async def _beat(self, *, final: bool = False) -> None:
        try:
            ttl = self.heartbeat_interval if final else self.heartbeat_interval * 3
            await self.app.backend.set_heartbeat(self.heartbeat(), ttl=ttl)
        except Exception:
            log.exception("sending the heartbeat failed")

    async def _heartbeats(self) -> None:
        while True:
            await self._beat()
            await self.app.clock.sleep(self.heartbeat_interval)

    async def _sync_revocations(self) -> None:
        entries = await self.app.revoke_store.list(since=self._revoked_seq)
        now = self.app.clock.now()
        for task_id in [
            t for t, e in self.revoked.items() if e.expires_at is not None and e.expires_at <= now
        ]:
            del self.revoked[task_id]  # expired: the set stays bounded in a long-lived worker
        for entry in entries:
            self.revoked[entry.task_id] = entry
            self._revoked_seq = max(self._revoked_seq, entry.seq)
            if entry.terminate:
                for job in list(self.jobs):
                    if (
                        job.envelope is not None
                        and job.envelope.id == entry.task_id
                        and job.running
                    ):
                        job.revoked = True
                        log.info("terminating %s[%s] (revoked)", job.envelope.task, job.envelope.id)
                        if job.interrupt is not None:
                            job.interrupt(Terminated())

    async def _revocations(self) -> None:
        while True:
            await self.app.clock.sleep(self.revoke_interval)
            try:
                await self._sync_revocations()
            except Exception:
                log.exception("reading revocations failed")

    async def _autoscale(self) -> None:
        idle_ticks = 0
        while True:
            await self.app.clock.sleep(self.autoscale_interval)
            backlog = 0
            for queue in self.queues:
                backlog += await self.broker.pending_count(queue)
            busy = len(self.jobs)
            if backlog > 0 and busy >= self.concurrency and self.concurrency < self.max_concurrency:
                idle_ticks = 0
                self.set_concurrency(
                    min(
                        self.max_concurrency,
                        self.concurrency + max(1, min(backlog, self.concurrency)),
                    )
                )
            elif (
                backlog == 0 and busy < self.concurrency and self.concurrency > self.min_concurrency
            ):
                idle_ticks += 1
                if idle_ticks >= 3:
                    idle_ticks = 0
                    self.set_concurrency(
                        max(
                            self.min_concurrency,
                            busy,
                            self.concurrency - max(1, (self.concurrency - busy) // 2),
                        )
                    )
            else:
                idle_ticks = 0

    def set_concurrency(self, value: int) -> None:
        """Change how many handlers may run at once (within min and max)."""
        value = max(self.min_concurrency, min(self.max_concurrency, value))
        if value != self.concurrency:
            log.info("worker %s concurrency %d -> %d", self.id, self.concurrency, value)
            self.concurrency = value
            if self._started and not self._closing:
                self._add_slots()
                # Idle slots beyond the new concurrency end (_slot checks); the busy
                # ones end after their job.
                for _ in range(min(len(self._idle), len(self._slots) - self.concurrency)):
                    self._idle.popleft().set_result(None)
            self._note_room()


async def _first(*awaitables: Any) -> None:
    """Wait until the first of several awaitables is done; cancel the rest."""
    pending = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in pending:
            fut.cancel()


_ENCODING_ERRORS = (TypeError, ValueError, OverflowError, msgspec.EncodeError)
_probe = msgspec.json.Encoder(enc_hook=enc_hook)


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _unstorable(task: str, exc: SerializationError) -> Outcome:
    """The failure of a task whose result the backend could not store."""
    error = SerializationError(
        f"task {task!r} returned a value that cannot be stored as a result "
        f"({exc}); return plain data or register a result encoder"
    )
    return Outcome(OutcomeKind.FAILED, error=task_error(error), reason="unserializable-result")


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


def _describe(job: Job) -> str:
    if job.envelope is None:
        return f"message {job.delivery.message.id}"
    return f"{job.envelope.task}[{job.envelope.id}]"
