"""How a job ends: the status each way of ending stores, the counters, the log, the hooks."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from .._errors import AdapterError, SerializationError, StoreLostError
from .._execute import Outcome, OutcomeKind, task_error
from .._messages import Envelope, TaskError, TaskState, TaskStatus
from .._task import Task
from ._job import Job, retry_message

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["Outcomes"]

log = logging.getLogger("stem.worker")


class Outcomes:
    """What each way a job can end writes (through the worker's settle batch), counts
    (``Worker.counters``), logs and announces (hooks): a result, a retry, a failure, a
    dead letter, a quarantine, a revocation or a postponement."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def settle(
        self, job: Job, task: Task[Any, Any], envelope: Envelope, outcome: Outcome
    ) -> None:
        worker = self.worker
        app = worker.app
        if log.isEnabledFor(logging.INFO):
            job.elapsed = app.clock.monotonic() - job.started_at
        if outcome.kind is OutcomeKind.SUCCEEDED:
            status = app.make_status(
                envelope, TaskState.SUCCEEDED, outcome=outcome, worker=worker.id
            )
            # "stem.unique": a claim to release after the write (see UniqueCoordinator);
            # callbacks: a canvas step between the write and the ack (see _canvas_step).
            canvas = bool(envelope.callbacks)
            if (
                not canvas
                and "stem.unique" not in envelope.meta
                and "on_success" not in app.hooks.listened
            ):
                # Nothing to await after the write: the slot moves on, and the write of
                # the batch ends the job (succeeded), or, if it fails, unsettled does.
                worker._settlement.hand_over(status, job)
                return
            try:
                await worker._settlement.write(status, None if canvas else job.delivery)
            except SerializationError as exc:
                # This result alone cannot be stored; the others of its batch were.
                outcome = _unstorable(task.name, exc)
            else:
                if canvas:
                    await self._canvas_step(job, envelope, status[0])
                    await worker._settlement.write(None, job.delivery)
                self._count("succeeded")
                await app.unique.release(envelope)
                self._log_success(job, envelope)
                await app.hooks.emit("on_success", ctx=job.context(), value=outcome.value)
                return
        if outcome.kind is OutcomeKind.RETRY:
            countdown = max(0.0, outcome.countdown or 0.0)
            following = msgspec.structs.replace(envelope, attempt=envelope.attempt + 1)
            await worker.broker.publish(
                retry_message(
                    following,
                    job.delivery.message.queue,
                    app.clock.now() + countdown,
                    app.wire_format,
                )
            )
            await worker._settlement.write(
                app.make_status(envelope, TaskState.RETRIED, outcome=outcome, worker=worker.id),
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
        await self.worker.app.hooks.emit("on_failure", ctx=job.context(), error=outcome.error)

    def _log_success(self, job: Job, envelope: Envelope) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s[%s] succeeded in %.3fs (attempt %d)",
                envelope.task,
                envelope.id,
                job.elapsed,
                envelope.attempt + 1,
            )

    def _count(self, outcome: str) -> None:
        """One more message finished, with this outcome (see ``Worker.counters``)."""
        counters = self.worker.counters
        counters[outcome] += 1
        counters["processed"] += 1

    def succeeded(self, jobs: list[Job]) -> None:
        """Successes handed to the batch (see :meth:`settle`) are stored and acked."""
        worker = self.worker
        worker.counters["succeeded"] += len(jobs)
        worker.counters["processed"] += len(jobs)
        logging_them = log.isEnabledFor(logging.INFO)
        running, leases = worker.jobs, worker._leases
        for job in jobs:
            if logging_them:
                assert job.envelope is not None
                self._log_success(job, job.envelope)
            job.close()  # as Worker._release does, but the consumer is woken once
            running.discard(job)
            leases.forget(job)
        worker._consumer.note_room()

    async def unsettled(self, job: Job, error: Exception) -> None:
        """A success handed to the batch could not be stored: what awaiting it would have done."""
        worker = self.worker
        try:
            if isinstance(error, SerializationError):
                assert job.envelope is not None
                await self._fail(job, job.envelope, _unstorable(job.envelope.task, error))
            elif isinstance(error, StoreLostError):
                worker._give_up(error)
            else:  # Settlement._give_back logged why; the message goes back to the queue
                await worker.broker.nack(job.delivery, requeue=True)
        except StoreLostError as exc:
            worker._give_up(exc)
        except AdapterError as exc:  # the broker is down: its lease brings the message back
            worker._outage.failed("giving a message back", exc)
        except Exception:
            log.exception("unexpected error while handling a message; it will be redelivered")
        finally:
            worker._release(job)

    async def dead_letter(
        self, job: Job, reason: str, error: TaskError | None, *, outcome: Outcome | None = None
    ) -> None:
        """Store a failed status (if the message decoded) and move the message to the dead letters."""
        worker = self.worker
        envelope = job.envelope
        if envelope is not None:
            failed = outcome or Outcome(OutcomeKind.DEAD, error=error, reason=reason)
            status = worker.app.make_status(
                envelope, TaskState.FAILED, outcome=failed, worker=worker.id
            )
            try:
                await worker._settlement.write(status, None)
            except SerializationError:
                # Even the failure cannot be stored (a name no backend can hold): the
                # message is still set aside, so it neither vanishes nor comes back.
                log.exception("cannot store the failed status of %s", job.describe())
            await worker.app.unique.release(envelope)
            if envelope.callbacks:
                await self._canvas_step(job, envelope, status[0])
        await worker.broker.dead_letter(
            job.delivery,
            reason,
            error=f"{error.type}: {error.message}" if error else None,
            traceback=error.traceback if error else None,
        )
        if outcome is None:
            self._count("dead")
            log.warning(
                "%s dead-lettered (%s)%s",
                job.describe(),
                reason,
                f": {error.message}" if error is not None else "",
            )
        await worker.app.hooks.emit(
            "on_dead_letter", envelope=envelope, delivery=job.delivery, reason=reason, error=error
        )

    async def quarantine(self, job: Job, error: TaskError) -> None:
        """Set aside a message delivered ``max_deliveries`` times without a result.

        If its task already ended, the deliveries repeated finished work (its ack was
        lost): a stored success or revocation is kept and the message acknowledged; a
        stored failure is kept and the message goes to the dead letters, where that
        failure would have put it. Otherwise it is dead-lettered as ``poison``.
        """
        worker = self.worker
        task_id = job.envelope.id if job.envelope is not None else job.delivery.message.id
        status = await worker.app.backend.get_status(task_id)
        if status is None or not status.state.is_final:
            await self.dead_letter(job, "poison", error)
            return
        await self.already_ended(job, status)

    async def already_ended(self, job: Job, status: TaskStatus) -> None:
        """Settle a message whose task had already ended with ``status`` (stored), without
        running it: its deliveries repeated finished work (the ack was lost, or the worker
        was killed between its result and the ack). A canvas task's step runs again first,
        in case that worker stopped before finishing it."""
        worker = self.worker
        if job.envelope is not None and job.envelope.callbacks:
            await worker.app._canvas.after_final(job.envelope, status, recovering=True)
        if status.state is TaskState.FAILED:
            stored = status.error
            await worker.broker.dead_letter(
                job.delivery,
                "failed",
                error=f"{stored.type}: {stored.message}" if stored else None,
                traceback=stored.traceback if stored else None,
            )
        else:
            await worker._settlement.write(None, job.delivery)
        self._count("skipped")
        log.warning(
            "%s was delivered %d times, but its task had already ended (%s): %s without running",
            job.describe(),
            job.delivery.deliveries,
            status.state,
            "dead-lettered" if status.state is TaskState.FAILED else "acknowledged",
        )

    async def finish_revoked(self, job: Job, why: str) -> None:
        assert job.envelope is not None
        worker = self.worker
        outcome = Outcome(
            OutcomeKind.DEAD, error=TaskError(type="Revoked", message=why), reason="revoked"
        )
        status = worker.app.make_status(
            job.envelope, TaskState.REVOKED, outcome=outcome, worker=worker.id
        )
        canvas = bool(job.envelope.callbacks)
        await worker._settlement.write(status, None if canvas else job.delivery)
        if canvas:
            await self._canvas_step(job, job.envelope, status[0])
            await worker._settlement.write(None, job.delivery)
        self._count("revoked")
        await worker.app.unique.release(job.envelope)
        log.info("%s[%s] revoked: %s", job.envelope.task, job.envelope.id, why)

    async def _canvas_step(self, job: Job, envelope: Envelope, status: TaskStatus) -> None:
        """Go on with the canvas of a task whose final status is stored and whose message
        is not acked yet: if the worker dies here, the message comes back, and the step
        (idempotent) runs again from the stored status (see stem._canvas._runtime)."""
        await self.worker.app._canvas.after_final(
            envelope, status, recovering=job.delivery.deliveries > 1
        )

    async def reschedule(
        self, job: Job, envelope: Envelope, delay: float, meta: dict[str, Any]
    ) -> None:
        """Put a message back with an eta (rate limits), as a new message so it is not counted as a failed delivery."""
        worker = self.worker
        await worker.broker.publish(
            retry_message(
                envelope,
                job.delivery.message.queue,
                worker.app.clock.now() + delay,
                worker.app.wire_format,
                meta,
            )
        )
        await worker._settlement.write(None, job.delivery)


def _unstorable(task: str, exc: SerializationError) -> Outcome:
    """The failure of a task whose result the backend could not store."""
    error = SerializationError(
        f"task {task!r} returned a value that cannot be stored as a result "
        f"({exc}); return plain data or register a result encoder"
    )
    return Outcome(OutcomeKind.FAILED, error=task_error(error), reason="unserializable-result")
