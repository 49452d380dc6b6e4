"""The workflow engine of an app: its registry, starting and steering runs, and the
internal task ``stem.workflow.run`` that executes a run on any worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._errors import (
    ConfigurationError,
    DuplicateRunError,
    LeaseLostError,
    UnknownWorkflowError,
)
from .._execute import task_error
from .._ids import new_task_id
from .._messages import TaskError
from .._task import TaskContext
from ..contracts import RunPolicy, RunStatus, StepCheckpoint, WorkflowRun, WorkflowStore
from ._context import check_storable_params, child_topic
from ._definitions import Workflow
from ._execution import Execution, PolicyExceeded, StepFailedError, Suspended, storable, typed
from ._records import WorkflowResult
from ._replay import replay_check

if TYPE_CHECKING:
    from .._app import Stem

__all__ = ["RUN_TASK", "Workflows"]

log = logging.getLogger("stem.workflow")

#: The internal task that executes (or resumes) one run.
RUN_TASK = "stem.workflow.run"


class Workflows:
    """The app's workflows (``app.workflows``): registered definitions, and the
    operations on runs that the app's methods and the workers use.

    Attributes:
        lease: seconds a worker holds a run between renewals (renewed every third).
        redispatch_after: seconds after which a run handed out for dispatch, or just
            started, is dispatched again if no worker has claimed it (a lost message).
        poll_interval: the most a worker's dispatcher sleeps between looks for due runs.
    """

    def __init__(self, app: Stem) -> None:
        self.app = app
        self.registry: dict[str, Workflow[Any, Any]] = {}
        self.lease = 60.0
        self.redispatch_after = 30.0
        self.poll_interval = 1.0

    def __contains__(self, name: object) -> bool:
        return name in self.registry

    def __iter__(self) -> Iterator[str]:
        return iter(self.registry)

    def __len__(self) -> int:
        return len(self.registry)

    def get(self, name: str) -> Workflow[Any, Any] | None:
        return self.registry.get(name)

    @property
    def store(self) -> WorkflowStore:
        return self.app.workflow_store

    def register(self, definition: Workflow[Any, Any]) -> None:
        existing = self.registry.get(definition.name)
        if existing is not None and existing is not definition and existing.fn is not definition.fn:
            raise ConfigurationError(
                f"a different workflow is already registered as {definition.name!r}; pass name="
            )
        self.registry[definition.name] = definition

    def register_run_task(self) -> None:
        """Register ``stem.workflow.run`` with the app: every app has it, so a worker
        that gets a run it has no code for fails the run with a reason instead of
        dead-lettering the message (and seeing it again at every dispatch)."""
        self.app.task(name=RUN_TASK, max_retries=0, result_ttl=3600.0)(self._run_task)

    # -- starting ------------------------------------------------------------------------

    async def start(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        *,
        run_id: str | None = None,
        queue: str | None = None,
        policy: RunPolicy | None = None,
        parent_id: str | None = None,
        exist_ok: bool = False,
    ) -> str:
        """Create a run and dispatch it; returns its id.

        Raises:
            ArgumentError: the parameters do not fit the workflow (if registered here).
            SerializationError: a parameter cannot be stored.
            DuplicateRunError: a run with ``run_id`` exists (unless ``exist_ok``).
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a workflow name is needed, not {name!r}")
        params = dict(params or {})
        definition = self.registry.get(name)
        if definition is not None:
            definition.check_params(params)
        plain = check_storable_params(params, name)
        now = self.app.clock.now()
        run = WorkflowRun(
            id=run_id or new_task_id(),
            workflow=name,
            params=plain,
            queue=queue or (definition.queue if definition else None) or self.app.default_queue,
            policy=policy if policy is not None else (definition.policy if definition else None),
            parent_id=parent_id,
            created_at=now,
            updated_at=now,
            wake_at=now + self.redispatch_after,
        )
        try:
            await self.store.create_run(run)
        except DuplicateRunError:
            if not exist_ok:
                raise
            return run.id
        await self.dispatch(run.id, run.queue)
        # Announced after the dispatch, so that a worker can start meanwhile (the worker's
        # own events about the run need several round trips before they can follow).
        await self._announce(run, RunStatus.PENDING)
        return run.id

    async def dispatch(self, run_id: str, queue: str | None = None) -> None:
        """Enqueue the run's execution; a failure is logged, as the run is dispatched
        again by a worker's dispatcher once its ``wake_at`` comes."""
        try:
            if queue is None:
                run = await self.store.get_run(run_id)
                if run is None:
                    return
                queue = run.queue
            await self.app.enqueue(RUN_TASK, [run_id], queue=queue)
        except Exception as exc:
            log.warning(
                "workflow run %s is stored but its dispatch failed (%s: %s); a worker's "
                "dispatcher sends it again within %g s",
                run_id,
                type(exc).__name__,
                exc,
                self.redispatch_after,
            )

    async def dispatch_due(self, limit: int = 100) -> int:
        """Dispatch the runs whose wake time has come; returns how many were handed out.

        A run that woke (a sleep's end, a deadline) or whose worker died is dispatched.
        One that was already pending (started, released, or resolved by an event, each
        dispatched then) is dispatched again only if its queue is empty: while the queue
        has a backlog its message is most likely still waiting there, and a copy per
        window would multiply the messages of a busy queue.
        """
        ids = await self.store.due_runs(limit=limit, redispatch_after=self.redispatch_after)
        backlog: dict[str, int] = {}
        for run_id in ids:
            run = await self.store.get_run(run_id)
            if run is None or run.status.is_final:
                continue
            resume = run.resume
            waiting = run.status is RunStatus.PENDING and (resume is None or resume.kind == "event")
            if waiting:
                if run.queue not in backlog:
                    backlog[run.queue] = await self.app.broker.pending_count(run.queue)
                if backlog[run.queue] > 0:
                    continue
            await self.dispatch(run.id, run.queue)
        return len(ids)

    # -- events and steering -------------------------------------------------------------

    async def emit(self, topic: str, payload: Any = None) -> list[str]:
        plain = storable(payload, f"the payload of event {topic!r}")
        ids = await self.store.emit(topic, plain)
        await self._publish(topic, plain)
        for run_id in ids:
            await self.dispatch(run_id)
        return ids

    async def send(self, run_id: str, topic: str, payload: Any = None) -> bool:
        plain = storable(payload, f"the payload of event {topic!r}")
        sent = await self.store.send_event(run_id, topic, plain)
        if sent:
            await self._publish(topic, plain)
            run = await self.store.get_run(run_id)
            if run is not None and run.status is RunStatus.PENDING:
                await self.dispatch(run_id, run.queue)
        return sent

    async def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """Cancel a run, and its children that have not ended; its parent is told."""
        if not await self.store.cancel_run(run_id, reason):
            return False
        run = await self.store.get_run(run_id)
        if run is not None:
            await self._announce(run, RunStatus.CANCELLED)
            await self._tell_parent(run, "cancelled", None, run.error)
        for child in await self.store.list_runs(parent_id=run_id, limit=10_000):
            if not child.status.is_final:
                await self.cancel(child.id, f"its parent run {run_id} was cancelled")
        return True

    async def replay_check(self, run: WorkflowRun, steps: list[StepCheckpoint]) -> None:
        """Replay a recorded run against this app's code without running or writing
        anything (see :func:`stem._workflows.replay_check`).

        Raises:
            NonDeterminismError: the code calls something other than what was recorded.
        """
        await replay_check(self.app, run, steps)

    async def rewind(self, run_id: str, step: str) -> bool:
        if not await self.store.rewind(run_id, step):
            return False
        run = await self.store.get_run(run_id)
        if run is not None:
            await self._announce(run, RunStatus.PENDING)  # what a rewind makes it
            await self.dispatch(run_id, run.queue)
        return True

    # -- the event bus -------------------------------------------------------------------

    async def _publish(self, topic: str, payload: Any) -> None:
        """Tell live observers (``app.event_bus``); the operation is done already, so a
        failure here is logged, never raised."""
        try:
            await self.app.event_bus.publish(topic, payload)
        except Exception as exc:
            log.warning(
                "could not publish event %r on the event bus (%s: %s); live observers miss "
                "it, the workflow store has what happened",
                topic,
                type(exc).__name__,
                exc,
            )

    async def _announce(self, run: WorkflowRun, status: RunStatus) -> None:
        """Publish a status change of ``run`` as ``stem.run.<status>``."""
        await self._publish(
            f"stem.run.{status.value}",
            {"run_id": run.id, "workflow": run.workflow, "status": status.value},
        )

    async def wait(
        self, run_id: str, *, timeout: float | None = None, decode: Any = None
    ) -> WorkflowResult[Any]:
        clock = self.app.clock
        deadline = None if timeout is None else clock.now() + timeout
        while True:
            run = await self.store.get_run(str(run_id))
            if run is None:
                raise UnknownWorkflowError(f"there is no workflow run {str(run_id)!r}")
            if run.status.is_final:
                return self._result(run, decode)
            remaining = 60.0 if deadline is None else deadline - clock.now()
            if remaining <= 0:
                return WorkflowResult(run_id=run.id, status=run.status, timed_out=True, run=run)
            await self.store.wait_for_change(str(run_id), min(remaining, 60.0))

    def _result(self, run: WorkflowRun, decode: Any) -> WorkflowResult[Any]:
        value = run.result
        if run.status is RunStatus.COMPLETED:
            definition = self.registry.get(run.workflow)
            if decode is not None:
                value = typed(value, decode) if isinstance(decode, type) else decode(value)
            elif definition is not None:
                value = definition.result_of(value)
        return WorkflowResult(
            run_id=run.id, status=run.status, value=value, error=run.error, run=run
        )

    # -- executing -----------------------------------------------------------------------

    async def _run_task(self, ctx: TaskContext, run_id: str) -> None:
        try:
            await self.execute(run_id, owner=f"{ctx.id}/{secrets.token_hex(4)}")
        except Exception as exc:
            # The store failed under it (an outage): the run is not lost, its wake time
            # (the lease's end) brings it back to a worker; this task has nothing to retry.
            log.warning(
                "workflow run %s: its execution stopped on %s: %s; it resumes when its lease ends",
                run_id,
                type(exc).__name__,
                exc,
            )

    async def execute(self, run_id: str, *, owner: str) -> None:
        """Claim the run and run it until it suspends or ends; nothing if it is not
        runnable now (another worker holds it, it ended, or it is not due)."""
        store = self.store
        run = await store.claim_run(run_id, owner, self.lease)
        if run is None:
            return
        # A run's first claim (fence 1) has nothing recorded to read back.
        steps = await store.list_steps(run_id) if run.fence > 1 else []
        execution = Execution(self.app, store, run, steps)
        body = asyncio.ensure_future(self._drive(execution))
        try:
            while not body.done():
                # On the app's clock, as the lease is (a FakeClock in tests).
                pause = asyncio.ensure_future(self.app.clock.sleep(self.lease / 3))
                try:
                    await asyncio.wait({body, pause}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    pause.cancel()
                if body.done():
                    break
                try:
                    renewed = await store.renew_run(run_id, execution.fence, self.lease)
                except Exception as exc:  # the store is away: try again next time
                    log.warning("renewing the lease of workflow run %s failed: %s", run_id, exc)
                    continue
                if not renewed:
                    log.warning(
                        "workflow run %s was taken from this worker (cancelled, rewound, or "
                        "its lease passed to another): stopping its execution here",
                        run_id,
                    )
                    body.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await body
        except BaseException:
            # The worker is stopping: cancelled, or ``Terminated`` past its grace period.
            # Hand the run back for another worker at once (else it waits for its lease).
            body.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(store.release_run(run_id, execution.fence))
            raise

    async def _drive(self, x: Execution) -> None:
        run = x.run
        definition = self.registry.get(run.workflow)
        try:
            x.check_policy()
            if definition is None:
                raise UnknownWorkflowError(
                    f"workflow {run.workflow!r} is not registered in this worker: import the "
                    "module that defines it in the worker's app"
                )
            value = await definition.execute(x)
            result = storable(value, f"the result of workflow {run.workflow!r}")
        except Suspended:
            return
        except LeaseLostError:
            log.info("workflow run %s moved on without this worker; its execution stops", run.id)
            return
        except PolicyExceeded as exc:
            log.warning("workflow run %s cancelled: %s", run.id, exc.reason)
            await self.cancel(run.id, exc.reason)
            return
        except Exception as exc:
            error = _run_error(exc)
            log.warning("workflow run %s (%s) failed: %s", run.id, run.workflow, error.message)
            await self._finish(x, RunStatus.FAILED, None, error)
            return
        await self._finish(x, RunStatus.COMPLETED, result, None)

    async def _finish(
        self, x: Execution, status: RunStatus, result: Any, error: TaskError | None
    ) -> None:
        # The parent hears first: if the finish is lost in a crash, the run executes
        # again and tells it again (a second message that nobody waits for).
        await self._tell_parent(x.run, status.value, result, error)
        try:
            await x.store.finish_run(x.run.id, x.fence, status, result=result, error=error)
        except LeaseLostError:
            log.info("workflow run %s moved on before it could be marked %s", x.run.id, status)
            return
        await self._announce(x.run, status)

    async def _tell_parent(
        self, run: WorkflowRun, status: str, result: Any, error: TaskError | None
    ) -> None:
        if run.parent_id is None:
            return
        outcome = {
            "status": status,
            "result": result,
            "error": None if error is None else {"type": error.type, "message": error.message},
        }
        await self.send(run.parent_id, child_topic(run.id), outcome)


def _run_error(exc: Exception) -> TaskError:
    """The run's error record: a failed step's own error, its message naming the step."""
    if isinstance(exc, StepFailedError):
        return TaskError(type=exc.error.type, message=str(exc), traceback=exc.error.traceback)
    return task_error(exc)
