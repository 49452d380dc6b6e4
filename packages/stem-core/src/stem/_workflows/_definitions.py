"""Workflow definitions: scripts (``@app.workflow``) and flows (``app.flow``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .._errors import ConfigurationError
from .._execute import bind_arguments
from .._options import TaskOptions, check_queue, seconds
from .._task import Task
from ..contracts import RunPolicy
from ._context import FlowContext, WorkflowContext, _check_name
from ._execution import Execution, return_hint, storable, typed
from ._records import NO_RETRY, StepRetry, WorkflowRef

if TYPE_CHECKING:
    from .._app import Stem

__all__ = ["Flow", "FlowStep", "Workflow", "policy_of"]

P = ParamSpec("P")
R = TypeVar("R")


def policy_of(
    max_run_duration: float | timedelta | None, max_suspend_duration: float | timedelta | None
) -> RunPolicy | None:
    run = seconds(max_run_duration, "max_run_duration")
    suspend = seconds(max_suspend_duration, "max_suspend_duration")
    for value, what in ((run, "max_run_duration"), (suspend, "max_suspend_duration")):
        if value is not None and value <= 0:
            raise ConfigurationError(f"{what} must be a positive duration, not {value!r}")
    if run is None and suspend is None:
        return None
    return RunPolicy(max_run_duration=run, max_suspend_duration=suspend)


class Workflow(Generic[P, R]):
    """A registered workflow: ``await handle.start(...)`` with the function's own
    parameters (after the context) starts a run and returns its id.

    The base of both kinds: a script (an ``async def`` taking a WorkflowContext) and a
    :class:`Flow` (declared steps).
    """

    kind = "script"

    def __init__(
        self,
        app: Stem,
        name: str,
        fn: Callable[..., Awaitable[Any]] | None,
        *,
        queue: str | None,
        policy: RunPolicy | None,
    ) -> None:
        self.app = app
        self.name = name
        self.fn = fn
        self.queue = check_queue(queue) if queue else None
        self.policy = policy
        # The parameter machinery of tasks (binding, conversion to annotations, the
        # errors that name the parameter), on the function without its context.
        self._params: Task[Any, Any] | None = None
        self.return_type: Any = None
        if fn is not None:
            self._params = Task(app, fn, TaskOptions(name=name), kind="workflow")
            self.return_type = return_hint(fn)

    def __repr__(self) -> str:
        return f"<Workflow {self.name} ({self.kind})>"

    def params_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Arguments of a start, checked and named: the run's ``params``.

        Raises:
            ArgumentError: they do not fit the function.
        """
        if self._params is None:
            if args:
                raise ConfigurationError(f"flow {self.name!r} takes keyword parameters only")
            return dict(kwargs)
        if not args:
            return dict(kwargs)  # already named: checked once, when the run is started
        self._params.check_arguments(args, kwargs)
        bound = self._params.signature.bind(*args, **kwargs)
        named = dict(bound.arguments)
        for param in self._params.signature.parameters.values():
            if param.kind is param.VAR_KEYWORD and param.name in named:
                named.update(named.pop(param.name))
            elif param.kind is param.VAR_POSITIONAL and param.name in named:
                raise ConfigurationError(f"workflow {self.name!r} cannot take *{param.name}")
        return named

    def check_params(self, params: dict[str, Any]) -> None:
        if self._params is not None:
            self._params.check_arguments((), params)

    async def start(self, *args: P.args, **kwargs: P.kwargs) -> WorkflowRef[R]:
        """Start a run with these parameters; returns its id at once."""
        params = self.params_of(args, dict(kwargs))
        run_id = await self.app.workflows.start(self.name, params)
        return WorkflowRef(run_id)

    async def execute(self, execution: Execution) -> Any:
        """Run (or replay) the script; returns its value."""
        assert self.fn is not None and self._params is not None
        args, kwargs = bind_arguments(self._params, [], dict(execution.run.params))
        return await self.fn(WorkflowContext(execution), *args, **kwargs)

    def result_of(self, value: Any) -> Any:
        return typed(value, self.return_type)


@dataclass(frozen=True, slots=True)
class FlowStep:
    name: str
    fn: Callable[[FlowContext], Any]
    auto_version: bool
    retry: StepRetry


class Flow(Workflow[..., Any]):
    """A workflow declared as steps, run in order; each step's value is checkpointed.

    ::

        flow = app.flow("orders.poll")

        @flow.step("fetch")
        async def fetch(ctx: FlowContext) -> dict: ...

        @flow.step("poll", auto_version=True)
        async def poll(ctx: FlowContext) -> str: ...

    The flow's result is the last step's value.
    """

    kind = "flow"

    def __init__(
        self, app: Stem, name: str, *, queue: str | None, policy: RunPolicy | None
    ) -> None:
        super().__init__(app, name, None, queue=queue, policy=policy)
        self.steps: list[FlowStep] = []

    def step(
        self, name: str, *, auto_version: bool = False, retry: StepRetry | None = None
    ) -> Callable[[Callable[[FlowContext], Any]], Callable[[FlowContext], Any]]:
        """Add a step (a function taking a FlowContext, async or plain) at the end."""
        _check_name(name, "step")
        if any(s.name == name for s in self.steps):
            raise ConfigurationError(f"flow {self.name!r} has a step named {name!r} already")

        def add(fn: Callable[[FlowContext], Any]) -> Callable[[FlowContext], Any]:
            if not callable(fn):
                raise ConfigurationError(f"a flow step needs a function, not {fn!r}")
            self.steps.append(FlowStep(name, fn, auto_version, retry or NO_RETRY))
            self.return_type = return_hint(fn)
            return fn

        return add

    async def execute(self, execution: Execution) -> Any:
        if not self.steps:
            raise ConfigurationError(f"flow {self.name!r} has no steps")
        value: Any = None
        if execution.run.cursor > 0:
            last = execution.recorded(execution.run.cursor - 1)
            value = last.value if last is not None else None
        for index in range(execution.run.cursor, len(self.steps)):
            step = self.steps[index]
            iteration = len(execution.versions(index)) if step.auto_version else 0
            label = f"{step.name}#{iteration}" if step.auto_version else step.name
            ctx = FlowContext(
                execution,
                step=step.name,
                position=index,
                iteration=iteration,
                previous_result=value,
            )
            execution.check_policy()
            result, attempts, started = await execution.call(label, step.fn, (ctx,), {}, step.retry)
            value = storable(result, f"the value of step {label!r}")
            await execution.save(index, label, value, "step", attempts=attempts, started_at=started)
        return value
