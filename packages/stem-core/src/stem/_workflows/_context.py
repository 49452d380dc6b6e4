"""What workflow code is handed: a WorkflowContext (scripts) or a FlowContext (flow steps)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .._errors import ConfigurationError, EventTimeoutError, StemError
from .._messages import TaskError
from .._options import seconds
from ._execution import (
    Execution,
    StepFailedError,
    non_determinism,
    return_hint,
    storable,
    typed,
)
from ._records import NO_RETRY, StepRetry

if TYPE_CHECKING:
    from ._definitions import Workflow

__all__ = ["ChildWorkflowError", "FlowContext", "WorkflowContext", "child_topic"]

T = TypeVar("T")


class ChildWorkflowError(StemError):
    """A child workflow awaited with ``wf.child(...)`` failed or was cancelled.

    Attributes:
        run_id: the child run's id.
        status: ``"failed"`` or ``"cancelled"``.
        error: the child's error record.
    """

    def __init__(self, run_id: str, status: str, error: TaskError | None) -> None:
        detail = f": {error.type}: {error.message}" if error else ""
        super().__init__(f"child workflow run {run_id!r} {status}{detail}")
        self.run_id, self.status, self.error = run_id, status, error


def child_topic(run_id: str) -> str:
    """The topic a child run's outcome is sent to its parent on."""
    return f"stem.child:{run_id}"


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name or "#" in name:
        raise ConfigurationError(
            f"a {what} name must be a non-empty string without '#', not {name!r}"
        )
    return name


def _duration(value: float | timedelta, what: str) -> float:
    found = seconds(value, what)
    if found is None or found < 0:
        raise ConfigurationError(f"{what} must be a duration >= 0, not {value!r}")
    return found


def _moment(value: float | timedelta | datetime | None, now: float, what: str) -> float | None:
    """A deadline given as an aware datetime, or as a duration from now (a timedelta or
    seconds, as everywhere else in Stem)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigurationError(f"{what} must be timezone-aware, not {value!r}")
        return value.timestamp()
    return now + _duration(value, what)


class _RunContext:
    """What every workflow context tells about its run."""

    _x: Execution

    @property
    def run_id(self) -> str:
        return self._x.run.id

    @property
    def workflow(self) -> str:
        return self._x.run.workflow

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._x.run.params)

    def idempotency_key(self, scope: str = "") -> str:
        """A key that is the same on every execution of this run: pass it to outside
        services so a step that runs again after a crash does not act twice."""
        return f"{self.workflow}/{self.run_id}/{scope}"


class WorkflowContext(_RunContext):
    """The handle a workflow script gets as its first argument.

    Every ``await wf.step(...)``, ``wf.sleep(...)``, ``wf.wait_for_event(...)``,
    ``wf.patched(...)`` and child call takes the next position in the run; on replay,
    a position already recorded returns its checkpoint without running. The order of
    these calls must therefore be the same on every execution of a run (code between
    them may do anything that does not change which calls come next).
    """

    def __init__(self, execution: Execution) -> None:
        self._x = execution
        self._position = 0
        self._seen: Counter[str] = Counter()

    def _next(self, base: str) -> tuple[int, str]:
        position = self._position
        self._position += 1
        count = self._seen[base]
        self._seen[base] += 1
        return position, base if count == 0 else f"{base}#{count}"

    def _recorded(self, position: int, kind: str, name: str) -> Any:
        found = self._x.recorded(position)
        if found is not None and (found.kind != kind or found.name != name):
            non_determinism(self.run_id, position, found, kind, name)
        return found

    # -- steps ---------------------------------------------------------------------------

    @overload
    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        retry: StepRetry | None = None,
        **kwargs: Any,
    ) -> T: ...
    @overload
    async def step(
        self,
        name: str,
        fn: Callable[..., T],
        /,
        *args: Any,
        retry: StepRetry | None = None,
        **kwargs: Any,
    ) -> T: ...

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        retry: StepRetry | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` (async, or plain in a thread) once for this run,
        and return its value; on replay, return the recorded value without running.

        The value is stored as plain data and converted back to ``fn``'s return
        annotation, so the first run and every replay return the same thing. ``retry``
        tries it again on failure; a step that fails on its last try fails the run.
        """
        _check_name(name, "step")
        position, label = self._next(name)
        hint = return_hint(fn)
        found = self._recorded(position, "step", label)
        if found is not None:
            if found.error is not None:
                raise StepFailedError(label, found.attempts, found.error)
            return typed(found.value, hint)
        self._x.new_ground()
        self._x.check_policy()
        started = self._x.now()
        try:
            value, attempts, started = await self._x.call(
                label, fn, args, kwargs, retry or NO_RETRY
            )
        except StepFailedError as failure:
            await self._x.save(
                position,
                label,
                None,
                "step",
                attempts=failure.attempts,
                started_at=started,
                error=failure.error,
            )
            raise
        plain = storable(value, f"the value of step {label!r}")
        await self._x.save(position, label, plain, "step", attempts=attempts, started_at=started)
        return typed(plain, hint)

    async def sleep(self, duration: float | timedelta) -> None:
        """Suspend the run for ``duration``; no worker is held meanwhile. The wake time
        is recorded the first time, so replays do not sleep again."""
        wait = _duration(duration, "sleep duration")
        position, label = self._next("sleep")
        found = self._recorded(position, "sleep", label)
        if found is None:
            self._x.new_ground()
            until = self._x.now() + wait
            await self._x.save(position, label, {"until": until}, "sleep")
        else:
            until = float(found.value["until"])
        if self._x.now() >= until:
            return
        await self._x.suspend(wake_at=until, resume_at=until)

    async def wait_for_event(self, topic: str, *, timeout: float | timedelta | None = None) -> Any:
        """Suspend the run until an event on ``topic`` comes (``app.emit_event``, or
        ``app.send_event`` to this run, which may come before the wait) and return its
        payload.

        Raises:
            EventTimeoutError: ``timeout`` passed first (on this and every replay).
        """
        if not isinstance(topic, str) or not topic:
            raise ConfigurationError(f"an event topic must be a non-empty string, not {topic!r}")
        position, label = self._next(f"event:{topic}")
        found = self._recorded(position, "event", label)
        if found is not None:
            outcome: dict[str, Any] = found.value
        else:
            self._x.new_ground()
            resume = self._x.take_event_resume(topic)
            if resume is not None and resume.kind == "event":
                outcome = {"payload": resume.payload}
            elif resume is not None and resume.kind == "timeout":
                outcome = {"timeout": True}
            else:
                limit = None if timeout is None else _duration(timeout, "timeout")
                deadline = None if limit is None else self._x.now() + limit
                kept = await self._x.suspend(wake_at=deadline, topic=topic, deadline=deadline)
                outcome = {"payload": kept.payload}
            await self._x.save(position, label, outcome, "event")
        if outcome.get("timeout"):
            raise EventTimeoutError(f"no event on {topic!r} came in time (run {self.run_id})")
        return outcome.get("payload")

    # -- versioning ----------------------------------------------------------------------

    async def patched(self, change_id: str) -> bool:
        """True where the run should take the code's new path, False for a run that
        recorded the old one before the change was deployed::

            if await wf.patched("send-sms"):
                await wf.step("sms", send_sms, order_id)

        A run that reaches this point for the first time records the patch and takes the
        new path on every replay; a run that recorded something else here keeps the old.
        """
        _check_name(change_id, "patch")
        label = f"patch:{change_id}"
        position = self._position
        found = self._x.recorded(position)
        if found is not None:
            if found.kind == "patch" and found.name == label:
                self._position += 1
                return True
            return False
        self._x.new_ground()
        self._position += 1
        await self._x.save(position, label, True, "patch")
        return True

    # -- children ------------------------------------------------------------------------

    async def start_child(self, workflow: str | Workflow[..., Any], /, **params: Any) -> str:
        """Start a child workflow run (once for this run) and return its id; its
        outcome is kept for :meth:`wait_for_child`."""
        name = workflow if isinstance(workflow, str) else workflow.name
        position, label = self._next(f"child:{name}")
        found = self._recorded(position, "child", label)
        if found is not None:
            return str(found.value)
        self._x.new_ground()
        child_id = f"{self.run_id}.{position}"
        await self._x.app.workflows.start(
            name, params, run_id=child_id, parent_id=self.run_id, exist_ok=True
        )
        await self._x.save(position, label, child_id, "child")
        return child_id

    async def wait_for_child(self, run_id: str, *, timeout: float | timedelta | None = None) -> Any:
        """Suspend until the child run ends, and return its result.

        Raises:
            ChildWorkflowError: it failed or was cancelled.
            EventTimeoutError: ``timeout`` passed first.
        """
        outcome = await self.wait_for_event(child_topic(run_id), timeout=timeout)
        if outcome.get("status") != "completed":
            error = outcome.get("error")
            raise ChildWorkflowError(
                run_id, str(outcome.get("status")), TaskError(**error) if error else None
            )
        return outcome.get("result")

    async def child(self, workflow: str | Workflow[..., T], /, **params: Any) -> Any:
        """Start a child workflow and wait for its result (see :meth:`start_child`)."""
        return await self.wait_for_child(await self.start_child(workflow, **params))


class FlowContext(_RunContext):
    """The handle each step of a flow gets.

    A step may suspend the run with ``await ctx.sleep(...)`` or ``await
    ctx.await_event(...)``; when the run resumes, the step runs again from its top, and
    ``ctx.take_resume_data()`` tells it why it woke.
    """

    def __init__(
        self,
        execution: Execution,
        *,
        step: str,
        position: int,
        iteration: int,
        previous_result: Any,
    ) -> None:
        self._x = execution
        self.step = step
        self.position = position
        #: Which version of an ``auto_version`` step this is (0 for the first).
        self.iteration = iteration
        #: The value the step before this one returned.
        self.previous_result = previous_result
        self._slept = False
        resume = execution.peek_resume(position)
        self._resumed_by = resume.kind if resume is not None else None

    @property
    def resumed_by(self) -> str | None:
        """``"wake"`` (a sleep ended), ``"event"``, ``"timeout"``, or None on a first run."""
        return self._resumed_by

    def take_resume_data(self) -> Any:
        """Why this step runs again, once: an event's payload, True after a sleep, None
        after a wait timed out or when the step is not resuming."""
        resume = self._x.take_resume(self.position)
        if resume is None or resume.kind == "timeout":
            return None
        if resume.kind == "wake":
            self._slept = True
            return True
        return resume.payload

    async def sleep(self, duration: float | timedelta) -> None:
        """Suspend the run for ``duration``; the step runs again from its top afterwards.

        In a step that resumed from a sleep, the first call returns at once instead, so
        a step may simply call it again (its wake time has come).
        """
        wait = _duration(duration, "sleep duration")
        resume = self._x.peek_resume(self.position)
        if self._slept or (resume is not None and resume.kind == "wake"):
            self._x.take_resume(self.position)
            self._slept = False
            return
        until = self._x.now() + wait
        await self._x.suspend(wake_at=until, resume_at=until)

    async def await_event(
        self, topic: str, *, deadline: float | timedelta | datetime | None = None
    ) -> Any:
        """Suspend the run until an event on ``topic`` (or ``deadline``); the step runs
        again from its top with the payload in ``take_resume_data()``. An event already
        sent to this run is returned at once instead."""
        if not isinstance(topic, str) or not topic:
            raise ConfigurationError(f"an event topic must be a non-empty string, not {topic!r}")
        until = _moment(deadline, self._x.now(), "deadline")
        kept = await self._x.suspend(wake_at=until, topic=topic, deadline=until)
        return kept.payload


def check_storable_params(params: dict[str, Any], workflow: str) -> dict[str, Any]:
    return {
        name: storable(value, f"parameter {name!r} of workflow {workflow!r}")
        for name, value in params.items()
    }
