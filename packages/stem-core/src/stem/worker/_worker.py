"""The worker: consumes deliveries, runs handlers in their pools, settles the outcomes.

Here are its settings, its lifecycle (start, graceful stop, signals) and its health; each
part has its own module: ``_consumer`` (the reserve loop), ``_slots`` (the tasks that run
jobs), ``_job`` (one delivery's way through), ``_outcomes`` (what each way a job ends
stores, counts and logs), ``_settlement`` (the batched writes of statuses and acks),
``_leases``, ``_revocations``, ``_heartbeats`` and ``_autoscale``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError, StoreLostError
from .._messages import RevokeEntry, WorkerHeartbeat
from .._options import PoolKind
from .._ratelimit import LocalRateLimiter
from .._task import Task
from ..contracts import RateLimiter, subscriber_queue
from ._autoscale import autoscale
from ._broadcast import keep_subscriptions, subscribe
from ._consumer import Consumer
from ._heartbeats import heartbeat_of, send_heartbeat, send_heartbeats
from ._interrupt import ThreadPool
from ._job import Job, Terminated
from ._leases import LeaseRenewal
from ._outage import outages_of
from ._outcomes import Outcomes
from ._process import ProcessPool
from ._revocations import RevocationPoller
from ._settlement import Settlement
from ._slots import Slots
from ._wait import first
from ._where import where
from ._workflows import dispatch_workflows

if TYPE_CHECKING:
    from .._app import Stem

__all__ = ["Worker"]

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
        rate_limiter: the limiter for rate-limited tasks (default: the app's
            ``rate_limiter``, shared by every worker, when its adapter has one; else
            one for this worker alone).
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
        #: The broadcast queues among them, whose copies come on queues of this worker's own.
        self.broadcast_queues = [q for q in self.queues if q in app.broadcast_queues]
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
        # The app's shared limiter (Redis) keeps the limit across workers; else per worker.
        self.rate_limiter = rate_limiter or app.rate_limiter or LocalRateLimiter(clock=app.clock)
        self.rate_limit_hold = rate_limit_hold
        self.track_started = track_started
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        if not isinstance(self.id, str) or not _encodes(self.id):
            # It is in every status the worker writes, which are not checked one by one.
            raise ConfigurationError(f"worker_id must be valid Unicode text, not {self.id!r}")
        #: The queues the worker reads: its queues, each broadcast one by this worker's copies.
        self.read_queues = [
            subscriber_queue(q, self.id) if q in app.broadcast_queues else q for q in self.queues
        ]
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
        self._closing = False  # _stopping is set: a plain flag for the slots' loop
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        # The parts of the worker, each with its own module; they reach each other
        # through the worker, as a Job does.
        self._slots = Slots(self)  # the slot tasks, and the jobs that wait for one
        self._consumer = Consumer(self)  # reads from the broker into the slots
        self._settlement = Settlement(self)  # the batched writes of statuses and acks
        self._outcomes = Outcomes(self)  # what each way a job ends writes, counts, logs
        self._leases = LeaseRenewal(self)
        self._revocations = RevocationPoller(self)
        # Failures of calls to the broker and the result backend, logged once per outage.
        self._outage, self._backend_outage = outages_of(app)
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
        await self._revocations.sync()
        # Subscribed before start() returns: a broadcast published after that reaches it.
        await subscribe(self)
        await self.app.hooks.emit("on_worker_start", worker=self)
        self._loops = [
            asyncio.ensure_future(self._guard(self._consumer.run(), "consumer")),
            asyncio.ensure_future(self._guard(self._leases.run(), "lease renewal")),
            asyncio.ensure_future(self._guard(send_heartbeats(self), "heartbeat")),
            asyncio.ensure_future(self._guard(self._revocations.run(), "revocation")),
        ]
        if len(self.app.workflows):
            self._loops.append(
                asyncio.ensure_future(self._guard(dispatch_workflows(self), "workflow dispatcher"))
            )
        if self.broadcast_queues:
            self._loops.append(
                asyncio.ensure_future(self._guard(keep_subscriptions(self), "subscriptions"))
            )
        if self.min_concurrency != self.max_concurrency:
            self._loops.append(asyncio.ensure_future(self._guard(autoscale(self), "autoscaler")))
        self._slots.add()
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
        slots = self._slots
        self._stopping.set()
        self._closing = True
        self._consumer.wake()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loops[0]  # the consumer sees _stopping and gives back a batch it just read
        # Not started yet: back to the queue at once. A slot seeing _stopping takes no
        # more jobs; one still in its checks (a rate-limit wait) is cancelled.
        waiting = list(slots.ready)
        slots.ready.clear()
        for job in self.jobs:
            if job.task is not None and not job.running:
                job.task.cancel()
        for job in waiting:
            with contextlib.suppress(Exception):  # else its lease runs out: not lost either
                await self.broker.nack(job.delivery, requeue=True)
            self._release(job)
        slots.end_idle()
        if slots.tasks and grace > 0 and not self._force.is_set():
            await first(
                asyncio.wait(set(slots.tasks)), self.app.clock.sleep(grace), self._force.wait()
            )
        leftovers = [j for j in self.jobs if j.task is not None and not j.task.done()]
        for job in leftovers:
            log.warning("stopping %s before it finished; it goes back to the queue", job.describe())
            if job.interrupt is not None:
                job.interrupt(Terminated())
            assert job.task is not None
            job.task.cancel()
        if slots.tasks:
            await asyncio.wait(set(slots.tasks))
        await self._settlement.drain()
        for loop in self._loops[1:]:
            loop.cancel()
        await asyncio.gather(*self._loops[1:], return_exceptions=True)
        if self.failure is None:  # else the backend is gone too
            await send_heartbeat(self, final=True)
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
        return heartbeat_of(self)

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

    # -- jobs and loops --------------------------------------------------------------------

    def _release(self, job: Job) -> None:
        """The job is over: forget it."""
        job.close()
        self.jobs.discard(job)
        self._leases.forget(job)
        self._consumer.note_room()

    def _give_up(self, exc: StoreLostError) -> None:
        """Stop at once (nothing can be stored any more); run() then raises ``exc``."""
        if self.failure is not None:
            return
        self.failure = exc
        log.error("worker %s stops: %s", self.id, exc)
        self._giving_up = asyncio.ensure_future(self.stop(grace_period=0))

    def pool_for(self, task: Task[Any, Any]) -> PoolKind:
        if task.is_async:
            return "async"
        if self.pool in ("thread", "process"):
            return self.pool
        return "process" if task.options_.pool == "process" else "thread"

    async def _guard(self, coro: Any, name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the worker's %s loop failed", name)

    def set_concurrency(self, value: int) -> None:
        """Change how many handlers may run at once (within min and max)."""
        value = max(self.min_concurrency, min(self.max_concurrency, value))
        if value != self.concurrency:
            log.info("worker %s concurrency %d -> %d", self.id, self.concurrency, value)
            self.concurrency = value
            if self._started and not self._closing:
                self._slots.add()
                # Idle slots beyond the new concurrency end (Slots._run checks); the busy
                # ones end after their job.
                self._slots.end_idle(len(self._slots) - self.concurrency)
            self._consumer.note_room()


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
