"""Task handles, the enqueue builder and the context handlers receive."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import inspect
import os
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar

import msgspec

from ._codec import enc_hook
from ._errors import ArgumentError, ConfigurationError, Retry, StemWarning
from ._messages import Envelope
from ._options import TaskOptions

if TYPE_CHECKING:
    from ._app import Stem
    from ._canvas import Partial

__all__ = [
    "EnqueueOptions",
    "NamedTask",
    "Task",
    "TaskCall",
    "TaskContext",
    "TaskRef",
    "check_call_shape",
]

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
    """What a context needs from whoever runs it; the worker's jobs are real ones."""

    __slots__ = ()

    def event_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop that runs the task, where ``call_sync`` sends coroutines (None: none)."""
        return None

    def call_sync(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a context coroutine from a handler thread on the worker's loop."""
        loop = self.event_loop()
        if loop is None:
            return asyncio.run(coro)
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

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

    def __init__(
        self, app: Stem, fn: Callable[..., Any], options: TaskOptions, *, kind: str = "task"
    ) -> None:
        self.app = app
        #: What the errors call it: "task", or "workflow" for a workflow's parameters.
        self.kind = kind
        self.fn = fn
        self.options_ = options
        self.name = options.name
        self.is_async = inspect.iscoroutinefunction(fn)
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        hints = _type_hints(fn)
        # A workflow's first parameter is always its context.
        self.takes_context = bool(params) and (
            kind == "workflow" or _is_context_param(params[0], hints)
        )
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
        # What enqueue converts the arguments to, in one msgspec pass, to check them as
        # the worker will: the positional list as a tuple type (the fast path), or the
        # bound arguments as a struct. The worker converts no unannotated, Any, *args or
        # **kwargs parameter, so they are left out here too.
        self._checked = {
            p.name: hints[p.name]
            for p in params
            if hints.get(p.name, Any) is not Any and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        self._positional_type: Any = None
        if self.positional is not None and self._checked:
            self._positional_type = tuple.__class_getitem__(
                tuple(Any if hint is None else hint for hint in self.positional)
            )
        self._bound_type: Any = None
        if self._checked:
            try:
                self._bound_type = msgspec.defstruct(
                    "Arguments", [(name, hint, None) for name, hint in self._checked.items()]
                )
            except (TypeError, ValueError):  # an annotation msgspec cannot hold: check one by one
                self._bound_type = _EACH

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options_.queue}>"

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Raise :class:`ArgumentError` now if the arguments do not fit the handler.

        They must bind to its signature and convert to its annotations the way the worker
        converts them (``msgspec.convert``, not strict: ``"7"`` is a valid ``int``). The
        values are sent as given, not converted.
        """
        positional = self.positional
        if positional is not None and not kwargs and len(args) == len(positional):
            if self._positional_type is not None and not _converts(args, self._positional_type):
                self._explain_types(dict(zip(self.parameter_names, args, strict=True)))
            return
        check_call_shape(args, kwargs)
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentError(self._explain_binding(args, kwargs, exc)) from None
        if self._bound_type is _EACH or (
            self._bound_type is not None and not _converts(bound.arguments, self._bound_type)
        ):
            self._explain_types(bound.arguments)

    def _explain_types(self, arguments: Mapping[str, Any]) -> None:
        """Find the argument that does not convert, and raise an error naming it.

        A value may fail the quick conversion but pass once encoded (a UUID for a ``str``
        parameter is a string on the wire): what the worker accepts is accepted here.
        """
        for name, hint in self._checked.items():
            if name not in arguments:
                continue
            value = arguments[name]
            if _converts(value, hint):
                continue
            try:
                wire = msgspec.to_builtins(value, enc_hook=enc_hook)
            except (TypeError, ValueError, OverflowError):
                continue  # cannot be encoded: encoding the message names it next
            try:
                msgspec.convert(wire, hint, strict=False)
            except (msgspec.ValidationError, TypeError) as exc:
                detail = re.sub(r" - at `\$(.*)`$", rf" at `{name}\1`", str(exc))
                raise ArgumentError(
                    f"argument {name!r} of {self.kind} {self.name!r} does not fit "
                    f"`{name}: {_type_name(hint)}`: {detail}"
                ) from None

    def _explain_binding(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], error: TypeError
    ) -> str:
        """Every reason the arguments do not bind, and the signature they must fit."""
        params = list(self.signature.parameters.values())
        kinds = {p.kind for p in params}
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        by_keyword = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        filled = {p.name for p in positional[: len(args)]}
        problems: list[str] = []
        if inspect.Parameter.VAR_POSITIONAL not in kinds and len(args) > len(positional):
            problems.append(
                f"it takes {len(positional)} positional arguments but {len(args)} were given"
            )
        for key in kwargs:
            if key in filled and key in by_keyword:
                problems.append(f"multiple values for argument {key!r}")
            elif key not in by_keyword and inspect.Parameter.VAR_KEYWORD not in kinds:
                free = sorted(by_keyword - filled - set(kwargs))
                close = difflib.get_close_matches(key, free, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unexpected argument {key!r}{hint}")
        missing = [
            p.name
            for p in params
            if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and p.name not in filled
            and p.name not in kwargs
        ]
        if missing:
            s = "s" if len(missing) > 1 else ""
            problems.append(f"missing argument{s} {', '.join(map(repr, missing))}")
        if not problems:
            problems.append(str(error))
        return (
            f"arguments do not fit {self.kind} {self.name!r}: {'; '.join(problems)}. "
            f"Its handler takes {self.name}({self._describe_parameters()})"
        )

    def _describe_parameters(self) -> str:
        hints = _type_hints(self.fn)
        parts: list[str] = []
        for p in self.signature.parameters.values():
            stars = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}
            text = stars.get(p.kind, "") + p.name  # type: ignore[call-overload]
            if p.name in hints:
                text += f": {_type_name(hints[p.name])}"
            elif p.annotation is not p.empty:
                text += f": {p.annotation}"
            if p.default is not p.empty:
                text += f" = {p.default!r}"
            parts.append(text)
        return ", ".join(parts)

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

    def partial(self, *args: Any, **kwargs: Any) -> Partial[R]:
        """A link of a canvas: this task called with the previous result as its first
        argument, then ``args`` and ``kwargs`` (see docs/canvas.md). The task itself is
        the link when it takes nothing else."""
        from ._canvas import Partial

        return Partial(self, args, dict(kwargs))


class NamedTask:
    """A task known only by name (its handler lives in another process)."""

    def __init__(self, app: Stem, name: str) -> None:
        self.app = app
        self.name = name

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Only the shape: the worker checks the rest, and dead-letters what does not fit."""
        check_call_shape(args, kwargs)


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


#: Stands for "no struct for these annotations: convert each argument on its own".
_EACH: Any = object()


def check_call_shape(args: Any, kwargs: Any) -> None:
    """Positional arguments in a sequence, keyword arguments in a mapping with str keys."""
    if not isinstance(args, Sequence) or isinstance(args, str | bytes):
        raise ArgumentError(
            f"args must be a list or tuple of positional arguments, not a {type(args).__name__}"
        )
    if not isinstance(kwargs, Mapping):
        raise ArgumentError(
            "kwargs must be a mapping of argument names to values (a dict), not a "
            f"{type(kwargs).__name__}; positional arguments go in args=[...]"
        )
    for key in kwargs:
        if not isinstance(key, str):
            raise ArgumentError(f"the names of keyword arguments must be strings, not {key!r}")


def _converts(value: Any, target: Any) -> bool:
    try:
        msgspec.convert(value, target, strict=False)
    except (msgspec.ValidationError, TypeError):
        return False
    return True


def _type_name(hint: Any) -> str:
    """``int``, ``list[Order]``: an annotation as written, without module paths."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__qualname__
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", repr(hint))


_STEM_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def task_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "tasks"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not qualname:
        raise ConfigurationError(f"cannot derive a task name from {fn!r}; pass name=")
    name = f"{module}.{qualname}"
    if module == "__main__":
        _warn_script_name(name, qualname)
    return name


def _warn_script_name(name: str, qualname: str) -> None:
    """A task defined in the script being run is ``__main__.x`` there but ``module.x`` in
    a worker that imports the module: the two never meet, so say so at definition."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    if spec is not None and spec.name != "__main__":
        module = spec.name  # python -m package.module
    else:
        module = os.path.splitext(os.path.basename(path))[0] if path else "tasks"
    suggested = f"{module}.{qualname}"
    warnings.warn(
        StemWarning(
            f"task {name!r} is named after __main__, the script being run; a worker that "
            f"imports the module calls it {suggested!r}, so neither finds the other's "
            f"messages. Pass a name (@app.task(name={suggested!r})) or define the task in "
            "a module that the script imports."
        ),
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """The stacklevel of the first frame outside Stem, so a warning points at user code."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_STEM_DIR):
        frame = frame.f_back
        level += 1
    return level
