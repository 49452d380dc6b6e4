"""Running one job after another in a worker's slot task, each in its own context.

A worker has one asyncio task per slot of concurrency (not one per job): a slot takes
the next reserved job and runs it to the end, inline, without creating a task or a
future. What a task per job gave for free is kept by :class:`InContext`:

* each job runs in a copy of the slot's context, so a context variable a handler or
  a middleware sets (a trace span, a log binding) does not leak into the next job;
* the worker learns when a job suspends (waits for I/O), so it can wake another slot
  for the next job; a job that never suspends is followed by the next in the same slot;
* an exception can be thrown into the job where it waits (a terminate revocation, a
  forced shutdown), as :class:`~stem.worker._interrupt.Interruptible` does for a
  handler with its own task.

:class:`Slots` holds a worker's slot tasks and the reserved jobs that wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

from .._errors import AdapterError, StoreLostError

if TYPE_CHECKING:
    from ._job import Job
    from ._worker import Worker

__all__ = ["DONE", "InContext", "Slots", "run_inline"]

log = logging.getLogger("stem.worker")


def run_inline(coro: Coroutine[Any, Any, Any], context: contextvars.Context) -> Any:
    """Run ``coro`` in ``context`` up to its first suspension.

    Returns:
        :data:`DONE` if it finished (a quick job: no task, no future, no generator), or
        what it yielded, to go on with :class:`InContext`.
    """
    try:
        return context.run(coro.send, None)
    except StopIteration:
        return DONE


#: What :func:`run_inline` returns for a coroutine that finished.
DONE: Any = object()


class InContext:
    """Awaits the rest of a coroutine that :func:`run_inline` started and that
    yielded ``yielded``, with every step run in ``context``."""

    __slots__ = ("_context", "_coro", "_pending", "_task", "_yielded")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context,
        task: asyncio.Task[Any],
        yielded: Any,
    ) -> None:
        """``task``: the task that awaits it (the slot)."""
        self._coro = coro
        self._context = context
        self._task = task
        self._yielded = yielded
        self._pending: BaseException | None = None

    def interrupt(self, exc: BaseException) -> None:
        """Throw ``exc`` into the coroutine where it waits now (soon, not at once).

        The caller checks that the coroutine is still running and waits where ``exc``
        is meant to land (in the handler). The slot task is woken with ``cancel()``;
        the cancellation is replaced by ``exc`` and taken back with ``uncancel()``.
        """
        self._pending = exc
        self._task.cancel()

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, run, yielded = self._coro, self._context.run, self._yielded
        self._yielded = None
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation or an interrupt: to the job
                thrown = exc
                if self._pending is not None:
                    thrown, self._pending = self._pending, None
                    self._task.uncancel()
                try:
                    yielded = run(coro.throw, thrown)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = run(coro.send, sent)
                except StopIteration as stop:
                    return stop.value


class Slots:
    """A worker's slots of concurrency, each a task that runs ready jobs one after another."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        # One task per slot of concurrency runs jobs one after another (see _run).
        # Reserved jobs wait in ready; idle slots wait on their future in idle.
        self.tasks: set[asyncio.Task[None]] = set()
        self.ready: deque[Job] = deque()
        self.idle: deque[asyncio.Future[None]] = deque()
        self.busy = 0  # slots running a job
        self.inline_run = 8  # see add

    def __len__(self) -> int:
        """How many slots there are, idle or busy."""
        return len(self.tasks)

    def add(self) -> None:
        """Start slots until there are as many as the worker's concurrency."""
        worker = self.worker
        # Jobs a slot runs one after another without waiting, before it lets the
        # consumer and the settle batch run: a quarter of the capacity, at least 8.
        self.inline_run = max(8, (worker.concurrency + worker.prefetch) // 4)
        while len(self.tasks) < worker.concurrency:
            slot = asyncio.ensure_future(self._run())
            slot.add_done_callback(self._ended)
            self.tasks.add(slot)

    def end_idle(self, most: int | None = None) -> None:
        """End idle slots: all of them, or at the most ``most``."""
        idle = self.idle
        for _ in range(len(idle) if most is None else min(len(idle), most)):
            idle.popleft().set_result(None)

    def _ended(self, slot: asyncio.Task[None]) -> None:
        # A slot handles every error of its jobs; one that fails all the same (a bug)
        # must not leave the worker with a slot fewer: say so, and start another.
        if slot.cancelled() or slot.exception() is None:
            return
        log.error(
            "a slot of worker %s failed; starting another",
            self.worker.id,
            exc_info=slot.exception(),
        )
        if not self.worker._closing:
            self.add()

    def wake(self) -> None:
        """Wake one idle slot if a job waits: called when jobs arrive and when a job
        suspends (its slot cannot take the next one until it resumes)."""
        if self.ready and self.idle:
            self.idle.popleft().set_result(None)

    async def _run(self) -> None:
        """One slot of concurrency: runs ready jobs one after another until the worker
        stops or has more slots than its concurrency (autoscaling down).

        A job that finishes without waiting for anything (a quick async handler) is
        followed at once by the next, with no task or future of its own; after a
        quarter of the capacity run that way the slot yields, so the consumer and the
        settle batch keep up.
        """
        me = asyncio.current_task()
        worker = self.worker
        assert me is not None and worker.loop is not None
        consumer, ready = worker._consumer, self.ready
        inline = 0
        try:
            while not worker._closing and len(self.tasks) <= worker.concurrency:
                if not ready:
                    waiter = worker.loop.create_future()
                    self.idle.append(waiter)
                    try:
                        await waiter
                    finally:
                        if not waiter.done():  # cancelled while idle
                            with contextlib.suppress(ValueError):
                                self.idle.remove(waiter)
                    inline = 0
                    continue
                job = ready.popleft()
                self.busy += 1
                job.task = me
                suspended = False
                try:
                    coro, context = job.handle(), contextvars.copy_context()
                    yielded = run_inline(coro, context)
                    if yielded is not DONE:
                        # It waits for something: the next job goes to another slot.
                        suspended = True
                        self.wake()
                        job.driver = InContext(coro, context, me, yielded)
                        await job.driver
                except asyncio.CancelledError:
                    # Shutdown took the job back: it goes back to the queue at once, never lost.
                    with contextlib.suppress(Exception):  # else its lease runs out: not lost either
                        await asyncio.shield(worker.broker.nack(job.delivery, requeue=True))
                    if worker._stopping.is_set():
                        return
                    while me.cancelling():  # the handler cancelled itself: the slot goes on
                        me.uncancel()
                except StoreLostError as exc:
                    worker._give_up(exc)
                except Exception as exc:
                    if isinstance(exc, AdapterError):  # the broker is down: logged once
                        worker._outage.failed("handling a message (it will be redelivered)", exc)
                    else:
                        log.exception(
                            "unexpected error while handling a message; it will be redelivered"
                        )
                    with contextlib.suppress(Exception):
                        await worker.broker.nack(job.delivery, requeue=True)
                finally:
                    job.task = job.driver = None
                    self.busy -= 1
                    if not job.settling:
                        worker._release(job)
                    elif (suspended or not ready) and consumer.waiting_for_room:
                        consumer.note_room()  # else once per run of inline jobs, below
                if suspended:
                    inline = 0
                else:
                    inline += 1
                    if inline >= self.inline_run:
                        inline = 0
                        if consumer.waiting_for_room:
                            consumer.note_room()
                        await asyncio.sleep(0)
        finally:
            self.tasks.discard(me)
            self.wake()  # a job this slot would have taken goes to another
