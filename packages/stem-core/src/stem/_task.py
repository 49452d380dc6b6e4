"""Task handles, the enqueue builder and the context handlers receive."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import types
import typing
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar

from ._errors import ConfigurationError, Retry, SerializationError
from ._messages import Envelope
from ._options import TaskOptions

if TYPE_CHECKING:
    from ._app import Stem

__all__ = ["EnqueueOptions", "NamedTask", "Task", "TaskCall", "TaskContext", "TaskRef"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class TaskRef(str, Generic[R_co]):
    """A task id that remembers the task's result type, for typed :meth:`Stem.wait_for_task`."""

    __slots__ = ()


class EnqueueOptions(typing.TypedDict, total=False):
    """Per-enqueue overrides accepted by ``.options(...)`` and ``app.enqueue(...)``."""

    queue: str
    priority: int
    delay: float | timedelta
    eta: datetime | float
    expires: float | timedelta | datetime
    headers: Mapping[str, str]
    meta: Mapping[str, Any]
    task_id: str
    max_retries: int
    unique_key: str


class TaskContext:
    """What a running handler knows about itself and can ask of the worker.

    Attributes:
        id: the task id (stable across retries).
        name: the task name.
        attempt: 0 on the first run, 1 on the first retry, ...
        envelope: the full message.
    """

    def __init__(self, app: Stem, envelope: Envelope, runtime: _Runtime | None = None) -> None:
        self.app = app
        self.envelope = envelope
        self._runtime = runtime or _Runtime()

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def name(self) -> str:
        return self.envelope.task

    @property
    def attempt(self) -> int:
        return self.envelope.attempt

    @property
    def max_retries(self) -> int:
        return self.envelope.max_retries

    @property
    def queue(self) -> str:
        return self.envelope.queue

    @property
    def headers(self) -> dict[str, str]:
        return self.envelope.headers

    @property
    def meta(self) -> dict[str, Any]:
        return self.envelope.meta

    def retry(
        self, countdown: float | timedelta | None = None, exc: BaseException | None = None
    ) -> NoReturn:
        """Stop this attempt and schedule another (counts against ``max_retries``).

        Raises:
            Retry: always; let it propagate out of the handler.
        """
        if isinstance(countdown, timedelta):
            countdown = countdown.total_seconds()
        raise Retry(countdown=countdown, exc=exc)

    async def progress(self, fraction: float, data: Any = None) -> None:
        """Store progress (0.0 to 1.0, plus any data) with the task's status."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("progress is a fraction from 0.0 to 1.0")
        await self._runtime.progress(fraction, data)

    def progress_sync(self, fraction: float, data: Any = None) -> None:
        """:meth:`progress` for plain (thread-pool) handlers."""
        self._runtime.call_sync(self.progress(fraction, data))

    async def heartbeat(self) -> None:
        """Tell the worker this handler is alive: renews the message's lease now."""
        await self._runtime.extend_lease(None)

    async def extend_lease(self, seconds: float | timedelta) -> bool:
        """Hold the message for ``seconds`` more; False if the lease was already lost."""
        if isinstance(seconds, timedelta):
            seconds = seconds.total_seconds()
        return await self._runtime.extend_lease(seconds)

    def heartbeat_sync(self) -> None:
        """:meth:`heartbeat` for plain (thread-pool) handlers."""
        self._runtime.call_sync(self.heartbeat())

    def idempotency_key(self, scope: str = "") -> str:
        """A key stable across retries and redeliveries of this task, for outbound calls."""
        return hashlib.sha256(f"{self.name}\0{self.id}\0{scope}".encode()).hexdigest()[:32]


class _Runtime:
    """What a context needs from whoever runs it; the worker supplies a real one."""

    loop: asyncio.AbstractEventLoop | None = None

    def call_sync(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a context coroutine from a handler thread on the worker's loop."""
        if self.loop is None:
            return asyncio.run(coro)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def progress(self, fraction: float, data: Any) -> None:
        return None

    async def extend_lease(self, seconds: float | None) -> bool:
        return True


class Task(Generic[P, R]):
    """A registered task: call ``.enqueue(...)`` with the handler's own arguments.

    The type parameters are the handler's parameters (without the context) and its
    return type, so ``await charge.enqueue(order_id="42")`` is checked by mypy and
    ``await app.wait_for_task(ref)`` returns a ``TaskResult`` of the right type.
    """

    def __init__(self, app: Stem, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.options_ = options
        self.name = options.name
        self.is_async = inspect.iscoroutinefunction(fn)
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        hints = _type_hints(fn)
        self.takes_context = bool(params) and _is_context_param(params[0], hints)
        if self.takes_context:
            params = params[1:]
        self.signature = signature.replace(parameters=params)
        self.arg_types: dict[str, Any] = {p.name: hints[p.name] for p in params if p.name in hints}
        self.return_type: Any = hints.get("return", Any)
        #: For a signature of plain positional parameters, their annotations (None where
        #: there is none or it is Any): lets the worker skip ``Signature.bind``.
        self.positional: list[Any] | None = None
        self.parameter_names = [p.name for p in params]
        if all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
            self.positional = [
                None if hints.get(p.name, Any) is Any else hints[p.name] for p in params
            ]

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options_.queue}>"

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError now if the arguments do not fit the handler."""
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise SerializationError(f"arguments do not fit task {self.name!r}: {exc}") from None

    def options(self, **overrides: typing.Unpack[EnqueueOptions]) -> TaskCall[P, R]:
        """Enqueue with overrides: ``await task.options(priority=5).enqueue(...)``."""
        return TaskCall(self, dict(overrides))

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> TaskRef[R]:
        """Publish one run of this task; returns its id."""
        return await TaskCall(self, {}).enqueue(*args, **kwargs)

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> TaskRef[R]:
        """The same as :meth:`enqueue`, for synchronous code (Django views, scripts)."""
        return TaskCall(self, {}).enqueue_sync(*args, **kwargs)

    def call(self, *args: P.args, **kwargs: P.kwargs) -> TaskCall[P, R]:
        """A ready-to-send call of this task, for batches (``app.enqueue_many``) and canvas."""
        self.check_arguments(args, kwargs)
        return TaskCall(self, {}, args, dict(kwargs))


class NamedTask:
    """A task known only by name (its handler lives in another process)."""

    def __init__(self, app: Stem, name: str) -> None:
        self.app = app
        self.name = name

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Nothing to check against: the worker checks, and dead-letters what does not fit."""


class TaskCall(Generic[P, R]):
    """A task with per-enqueue options, optionally with its arguments bound."""

    def __init__(
        self,
        task: Task[P, R] | NamedTask,
        overrides: dict[str, Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.overrides = overrides
        self.args = args
        self.kwargs = kwargs or {}

    def options(self, **overrides: typing.Unpack[EnqueueOptions]) -> TaskCall[P, R]:
        return TaskCall(self.task, {**self.overrides, **overrides}, self.args, self.kwargs)

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> TaskRef[R]:
        args_, kwargs_ = (args, kwargs) if (args or kwargs) else (self.args, self.kwargs)
        self.task.check_arguments(args_, kwargs_)
        ids = await self.task.app._enqueue_calls(
            [(self.task.name, args_, dict(kwargs_), self.overrides)]
        )
        return TaskRef(ids[0])

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> TaskRef[R]:
        return self.task.app._portal.call(self.enqueue, *args, **kwargs)


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations; one that cannot be resolved is left out, not fatal."""
    try:
        return typing.get_type_hints(fn)
    except Exception:
        pass
    hints: dict[str, Any] = {}
    namespace = getattr(fn, "__globals__", {})
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        holder = types.SimpleNamespace(__annotations__={name: annotation})
        try:
            hints.update(typing.get_type_hints(holder, globalns=namespace))
        except Exception:
            continue
    return hints


def _is_context_param(param: inspect.Parameter, hints: dict[str, Any]) -> bool:
    if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
        return False
    hint = hints.get(param.name, param.annotation)
    if hint is TaskContext or (isinstance(hint, str) and hint.split(".")[-1] == "TaskContext"):
        return True
    return param.annotation is inspect.Parameter.empty and param.name in ("ctx", "context")


def task_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "tasks"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not qualname:
        raise ConfigurationError(f"cannot derive a task name from {fn!r}; pass name=")
    return f"{module}.{qualname}"
