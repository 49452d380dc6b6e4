"""One delivery's way through a worker: checks, execution in its pool, settlement."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from .._codec import decode_envelope, encode_envelope
from .._errors import DecodeError, SoftTimeLimitExceeded, TimeLimitExceeded
from .._execute import (
    Interrupted,
    Outcome,
    decode_payload,
    execute,
    failed,
    prepare,
    succeeded,
)
from .._messages import Delivery, Envelope, Message, TaskError
from .._task import Task, TaskContext, _Runtime
from ._interrupt import Interruptible
from ._slots import InContext

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["Job", "Terminated", "retry_message"]

log = logging.getLogger("stem.worker")


class Terminated(Interrupted):
    """Thrown into a handler stopped by a terminate revocation or a forced shutdown.

    A BaseException, so a handler's ``except Exception`` does not swallow it.
    """


@dataclass(eq=False, slots=True)
class Job(_Runtime):
    """A delivery in a worker, from reservation to settlement.

    A slot of the worker runs :meth:`handle`; a job that succeeds is usually over
    only when its result is written, after ``handle`` returned (``settling``). It is
    also the runtime of its handler's context (progress, lease extensions).
    """

    worker: Worker
    delivery: Delivery
    lease: float
    envelope: Envelope | None = None
    running: bool = False
    revoked: bool = False
    started_at: float = 0.0
    lease_expires_at: float = 0.0
    interrupt: Callable[[BaseException], None] | None = None
    #: The slot task running the job, while one does, and what drives the job there.
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    driver: InContext | None = field(default=None, repr=False)
    #: Its result is in the settle batch: the job ends when the batch is written.
    settling: bool = False
    #: The handler's time, for the log line.
    elapsed: float = 0.0
    _ctx: TaskContext | None = field(default=None, repr=False)

    def context(self) -> TaskContext:
        """The handler's context: made when first needed, then the same for every hook."""
        if self._ctx is None:
            assert self.envelope is not None
            self._ctx = TaskContext(self.worker.app, self.envelope, self)
        return self._ctx

    def describe(self) -> str:
        """The job in a log line: its task and id, or its message's id if it did not decode."""
        if self.envelope is None:
            return f"message {self.delivery.message.id}"
        return f"{self.envelope.task}[{self.envelope.id}]"

    def close(self) -> None:
        """The job is over: drop its context, which refers back to it (a cycle that
        only the cycle collector would free otherwise)."""
        self._ctx = None

    # -- the pipeline ------------------------------------------------------------------

    async def handle(self) -> None:
        worker, app, delivery = self.worker, self.worker.app, self.delivery
        if delivery.deliveries > worker.max_deliveries:
            # Checked before anything else, decoding included, so that it bounds every
            # way a delivery can end without a result, even one nobody foresaw.
            with contextlib.suppress(DecodeError):
                self.envelope = decode_envelope(delivery.message.body)  # for its status
            error = TaskError(
                type="PoisonMessage",
                message=f"delivered {delivery.deliveries} times without finishing: the worker running "
                "it crashed, was killed (out of memory?) or the task hit a hard time limit each time",
            )
            await worker._outcomes.quarantine(self, error)  # poison, unless its task already ended
            return
        try:
            envelope = self.envelope = decode_envelope(delivery.message.body)
        except DecodeError as exc:
            # Whatever is wrong with it, it will be as wrong on every delivery.
            await worker._outcomes.dead_letter(
                self, "malformed", TaskError(type="DecodeError", message=str(exc))
            )
            return
        hooks = app.hooks
        if "on_consume" in hooks.listened:
            await hooks.emit("on_consume", envelope=envelope, delivery=delivery)
        if envelope.callbacks and delivery.deliveries > 1:
            # A canvas task delivered again: if its result is stored, the worker before
            # stopped between storing it and the ack. The task is not run again; its
            # canvas step is finished from the stored status (see Outcomes.already_ended).
            ended = await app.backend.get_status(envelope.id)
            if ended is not None and ended.state.is_final:
                await worker._outcomes.already_ended(self, ended)
                return
        if envelope.id in worker.revoked:
            await worker._outcomes.finish_revoked(self, "revoked before it started")
            return
        if envelope.expires is not None and app.clock.now() >= envelope.expires:
            await worker._outcomes.finish_revoked(self, "expired before it started")
            return
        task = app.tasks.get(envelope.task)
        if task is None:
            error = TaskError(
                type="UnknownTaskError",
                message=f"no task named {envelope.task!r} is registered with the worker's app; "
                "import the module that defines it in the worker, then replay this dead letter",
            )
            await worker._outcomes.dead_letter(self, "unknown-task", error)
            return
        options = task.options_
        if options.visibility_timeout != self.lease:
            self.lease = options.visibility_timeout
            await worker._leases.renew(self)
        if options.rate_limit is not None and not envelope.meta.get("stem.rate_booked"):
            # It waits in its slot (the slot is the worker's hard cap on handlers).
            delay = await worker.rate_limiter.reserve(task.name, options.rate_limit)
            if delay > worker.rate_limit_hold:
                await worker._outcomes.reschedule(self, envelope, delay, {"stem.rate_booked": True})
                return
            if delay > 0:
                await app.clock.sleep(delay)
        self.running = True
        self.started_at = app.clock.monotonic()
        if worker.track_started:
            worker._settlement.note_started(self)
        if "before_execute" in hooks.listened:
            await hooks.emit("before_execute", ctx=self.context())
        try:
            if (
                task.is_async
                and options.soft_time_limit is None
                and options.time_limit is None
                and not hooks.middleware
                and self.task is not None
            ):
                # execute(), without its two coroutines: the handler is awaited right
                # here, in the job's slot, where the slot's driver throws an interrupt
                # into it (only while it runs: see _interrupt_inline).
                prepared = prepare(app, task, envelope)
                if isinstance(prepared, Outcome):
                    outcome = prepared
                else:
                    args, kwargs = prepared
                    self.interrupt = self._interrupt_inline
                    try:
                        if task.takes_context:
                            value = await task.fn(self.context(), *args, **kwargs)
                        else:
                            value = await task.fn(*args, **kwargs)
                    except BaseException as exc:
                        outcome = failed(task, envelope, exc)  # Interrupted goes on up
                    else:
                        outcome = succeeded(app, task, envelope, value)
                    finally:
                        self.interrupt = None
            else:
                outcome = await execute(app, task, self.context(), self._invoke)
        except Interrupted as exc:  # Terminated, or ChildLost
            self.interrupt = None
            if self.revoked:
                await worker._outcomes.finish_revoked(self, "terminated while running")
            else:
                # No result: give it back; the poison check counts such deliveries.
                log.warning(
                    "task %s[%s] ended without a result (%s); it will be redelivered",
                    task.name,
                    envelope.id,
                    _why(exc),
                )
                await worker.broker.nack(self.delivery, requeue=True)
            return
        self.interrupt = None
        if self.revoked:
            await worker._outcomes.finish_revoked(self, "terminated while running")
            return
        if "after_execute" in hooks.listened:
            await hooks.emit("after_execute", ctx=self.context(), outcome=outcome)
        await worker._outcomes.settle(self, task, envelope, outcome)

    # -- pools -------------------------------------------------------------------------

    async def _invoke(
        self, task: Task[Any, Any], ctx: TaskContext, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        options = task.options_
        soft, hard = options.soft_time_limit, options.time_limit
        call_args = [ctx, *args] if task.takes_context else args
        if task.is_async:
            if soft is None and hard is None and self.task is not None:
                # No timers (with middleware, else handle() calls it itself): the
                # handler runs inline in the job's slot (see _interrupt_inline).
                self.interrupt = self._interrupt_inline
                try:
                    return await task.fn(*call_args, **kwargs)
                finally:
                    self.interrupt = None
            return await self._run_async(task.fn(*call_args, **kwargs), soft, hard)
        pool = self.worker.pool_for(task)
        if pool == "thread":
            return await self._run_thread(task.fn, call_args, kwargs, soft, hard)
        return await self._run_process(task, ctx, args, kwargs, soft, hard)

    def _interrupt_inline(self, exc: BaseException) -> None:
        # Called from another task, so the slot is suspended: in the handler, by now
        # under the slot's driver (this is only ``interrupt`` while the handler runs).
        if self.driver is not None:
            self.driver.interrupt(exc)

    async def _run_async(self, coro: Any, soft: float | None, hard: float | None) -> Any:
        driver: Interruptible[Any] = Interruptible(coro)
        self.interrupt = driver.interrupt
        timers = self._timers(
            soft,
            lambda: driver.interrupt(SoftTimeLimitExceeded(f"soft time limit of {soft:g}s passed")),
        )

        async def drive() -> Any:
            try:
                return await driver
            except (SystemExit, KeyboardInterrupt) as exc:
                # Raised out of an asyncio task, these would stop the worker's loop: carry
                # them to the job's task, where execute() records them as the failure.
                raise _Carried(exc) from None

        handler = asyncio.ensure_future(drive())
        try:
            return await self._within(handler, hard)
        except _Carried as carried:
            raise carried.exc from None
        finally:
            for timer in timers:
                timer.cancel()
            if not handler.done():
                handler.cancel()

    async def _run_thread(
        self,
        fn: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        soft: float | None,
        hard: float | None,
    ) -> Any:
        threads = self.worker.threads
        call = threads.submit(fn, args, kwargs)

        def interrupt(exc: BaseException) -> None:
            call.interrupt(type(exc))

        self.interrupt = interrupt
        timers = self._timers(soft, lambda: call.interrupt(SoftTimeLimitExceeded))
        try:
            # Past the hard limit the task fails at once; the thread is interrupted and,
            # if it does not stop (a blocking C call), replaced so the pool keeps its size.
            return await self._within(
                call.future, hard, on_timeout=lambda: threads.abandon(call, Terminated)
            )
        finally:
            for timer in timers:
                timer.cancel()

    async def _run_process(
        self,
        task: Task[Any, Any],
        ctx: TaskContext,
        args: list[Any],
        kwargs: dict[str, Any],
        soft: float | None,
        hard: float | None,
    ) -> Any:
        envelope = ctx.envelope
        # The child binds and converts the arguments itself, from what the payload encoder
        # decoded (plain data), so its handler gets the same values a thread's would.
        plain_args, plain_kwargs = decode_payload(self.worker.app, envelope)
        job = {
            "module": task.fn.__module__,
            "qualname": task.fn.__qualname__,
            "takes_context": task.takes_context,
            "args": plain_args,
            "kwargs": plain_kwargs,
            "id": envelope.id,
            "task": envelope.task,
            "attempt": envelope.attempt,
            "max_retries": envelope.max_retries,
            "queue": envelope.queue,
            "headers": envelope.headers,
            "meta": envelope.meta,
        }
        pool = self.worker.processes

        def on_child(pid: int) -> None:
            self.interrupt = lambda exc: pool.kill_running(pid)

        return await pool.run(
            job,
            soft_limit=soft,
            hard_limit=hard,
            sleep=self.worker.app.clock.sleep,
            on_progress=ctx.progress,
            on_child=on_child,
        )

    def _timers(self, soft: float | None, action: Callable[[], Any]) -> list[asyncio.Task[None]]:
        if soft is None:
            return []
        clock = self.worker.app.clock

        async def fire() -> None:
            await clock.sleep(soft)
            action()

        return [asyncio.ensure_future(fire())]

    async def _within(
        self,
        awaitable: asyncio.Future[Any],
        hard: float | None,
        on_timeout: Callable[[], Any] | None = None,
    ) -> Any:
        if hard is None:
            return await awaitable
        deadline = asyncio.ensure_future(self.worker.app.clock.sleep(hard))
        try:
            done, _ = await asyncio.wait({awaitable, deadline}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            deadline.cancel()
        if awaitable in done:
            return awaitable.result()
        awaitable.cancel()
        if on_timeout is not None:
            on_timeout()
        raise TimeLimitExceeded(f"hard time limit of {hard:g}s passed; the handler was stopped")

    # -- the runtime of the handler's context -------------------------------------------

    def event_loop(self) -> asyncio.AbstractEventLoop | None:
        return self.worker.loop

    async def progress(self, fraction: float, data: Any) -> None:
        assert self.envelope is not None
        await self.worker._settlement.store_progress(self.envelope, fraction, data)

    async def extend_lease(self, seconds: float | None) -> bool:
        if seconds is not None:
            self.lease = max(self.lease, seconds)
        return await self.worker._leases.renew(self)


class _Carried(Exception):
    """Carries a SystemExit or KeyboardInterrupt out of a handler's own asyncio task."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


def _why(exc: BaseException) -> str:
    """An exception for a log line: its type, and its message if it has one."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def retry_message(
    envelope: Envelope,
    queue: str,
    eta: float,
    wire_format: Any,
    meta: dict[str, Any] | None = None,
) -> Message:
    """The message that carries the next attempt (or a rate-limited postponement), on
    ``queue``: the delivery's own, which for a broadcast copy is its subscriber's."""
    changes: dict[str, Any] = {"eta": eta}
    new_meta = {k: v for k, v in envelope.meta.items() if k != "stem.rate_booked"}
    if meta:
        new_meta.update(meta)
    changes["meta"] = new_meta
    updated = msgspec.structs.replace(envelope, **changes)
    return Message(
        id=updated.id,
        queue=queue,
        body=encode_envelope(updated, wire_format),
        priority=updated.priority,
        eta=eta,
    )
