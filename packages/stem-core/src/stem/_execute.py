"""Running one task message: decode its arguments, call the handler, classify the outcome.

The worker and eager mode share this, so both go through the same serialization
path a real deployment does.
"""

from __future__ import annotations

import enum
import os
import traceback as tb
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from ._codec import enc_hook
from ._errors import DecodeError, Reject, Retry, SerializationError, TimeLimitExceeded
from ._messages import Envelope, TaskError
from ._task import Task, TaskContext

if TYPE_CHECKING:
    from ._app import Stem

__all__ = [
    "HandlerFailure",
    "Invoker",
    "Outcome",
    "OutcomeKind",
    "decode_arguments",
    "execute",
    "task_error",
]

#: Calls the handler with its context and arguments; the worker's version picks the pool
#: and enforces time limits.
Invoker = Callable[[Task[Any, Any], TaskContext, list[Any], dict[str, Any]], Awaitable[Any]]


class OutcomeKind(enum.Enum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"  # final: dead-lettered with its error
    DEAD = "dead"  # never ran (unknown task, bad arguments) or rejected


@dataclass
class Outcome:
    kind: OutcomeKind
    value: Any = None
    error: TaskError | None = None
    countdown: float | None = None
    reason: str | None = None


class HandlerFailure(Exception):
    """A failure reported by a handler that ran elsewhere (a child process).

    ``kind`` is ``error``, ``retry`` or ``reject``; ``task_error`` is the remote record.
    """

    def __init__(
        self,
        error: TaskError,
        *,
        retryable: bool,
        kind: str = "error",
        countdown: float | None = None,
    ) -> None:
        super().__init__(f"{error.type}: {error.message}")
        self.task_error = error
        self.retryable = retryable
        self.kind = kind
        self.countdown = countdown


class BadArguments(Exception):
    """The message's arguments do not fit the handler."""


_STEM_DIR = os.path.dirname(os.path.abspath(__file__))


def task_error(exc: BaseException) -> TaskError:
    """The error record of an exception, its traceback without Stem's own frames."""
    frames = exc.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename.startswith(_STEM_DIR):
        frames = frames.tb_next
    return TaskError(
        type=f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
        message=str(exc),
        traceback="".join(tb.format_exception(type(exc), exc, frames or exc.__traceback__)),
    )


def decode_arguments(
    app: Stem, task: Task[Any, Any], envelope: Envelope
) -> tuple[list[Any], dict[str, Any]]:
    """Decode and convert the arguments to the handler's annotated types.

    Raises:
        BadArguments: they do not bind to the signature or do not convert.
    """
    encoder = app.encoders.get(envelope.args_encoder)
    args = list(encoder.decode(envelope.args))
    kwargs = dict(encoder.decode(envelope.kwargs))
    simple = task.positional
    if simple is not None and not kwargs and len(args) == len(simple):
        # The common case, without inspect's bind: positional arguments, one per parameter.
        for index, hint in enumerate(simple):
            if hint is not None:
                args[index] = _convert(args[index], hint, task.parameter_names[index])
        return args, {}
    try:
        bound = task.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise BadArguments(str(exc)) from None
    if task.arg_types:
        for name, value in list(bound.arguments.items()):
            hint = task.arg_types.get(name)
            if hint is None or task.signature.parameters[name].kind in (
                task.signature.parameters[name].VAR_POSITIONAL,
                task.signature.parameters[name].VAR_KEYWORD,
            ):
                continue
            bound.arguments[name] = _convert(value, hint, name)
    return list(bound.args), dict(bound.kwargs)


def _convert(value: Any, hint: Any, name: str) -> Any:
    try:
        return msgspec.convert(value, hint, strict=False)
    except (msgspec.ValidationError, TypeError) as exc:
        raise BadArguments(f"argument {name!r}: {exc}") from None


async def execute(app: Stem, task: Task[Any, Any], ctx: TaskContext, invoke: Invoker) -> Outcome:
    """Run a task through the middleware and classify what happened."""
    envelope = ctx.envelope
    try:
        args, kwargs = decode_arguments(app, task, envelope)
    except BadArguments as exc:
        return Outcome(OutcomeKind.DEAD, error=task_error(exc), reason="bad-arguments")
    except DecodeError as exc:  # e.g. a payload encoder this process does not have
        return Outcome(OutcomeKind.DEAD, error=task_error(exc), reason="malformed")

    async def call_handler() -> Any:
        return await invoke(task, ctx, args, kwargs)

    chain: Callable[[], Awaitable[Any]] = call_handler
    for middleware in reversed(app.hooks.middleware):
        chain = _wrap(middleware, ctx, chain)
    try:
        value = await chain()
    except Retry as exc:
        return _retry_or_fail(task, envelope, task_error(exc.exc or exc), exc.countdown)
    except Reject as exc:
        return Outcome(OutcomeKind.DEAD, error=task_error(exc), reason=exc.reason)
    except TimeLimitExceeded as exc:
        return Outcome(OutcomeKind.FAILED, error=task_error(exc), reason="time-limit")
    except HandlerFailure as exc:
        if exc.kind == "reject":
            return Outcome(OutcomeKind.DEAD, error=exc.task_error, reason="rejected")
        if exc.kind == "retry" or exc.retryable:
            return _retry_or_fail(task, envelope, exc.task_error, exc.countdown)
        return Outcome(OutcomeKind.FAILED, error=exc.task_error, reason="failed")
    except Exception as exc:
        if isinstance(exc, task.options_.retry_for):
            return _retry_or_fail(task, envelope, task_error(exc), None)
        return Outcome(OutcomeKind.FAILED, error=task_error(exc), reason="failed")
    try:
        # to_builtins both checks the value can be stored and gives it the shape every
        # backend returns (dataclasses become dicts, datetimes strings), even in memory.
        stored = msgspec.to_builtins(
            app.encoders.get(envelope.result_encoder).encode(value), enc_hook=enc_hook
        )
    except (SerializationError, TypeError) as exc:
        error = SerializationError(
            f"task {task.name!r} returned a {type(value).__name__}, which cannot be stored as a "
            f"result ({exc}); return plain data or register a result encoder"
        )
        return Outcome(OutcomeKind.FAILED, error=task_error(error), reason="unserializable-result")
    return Outcome(OutcomeKind.SUCCEEDED, value=stored)


def _retry_or_fail(
    task: Task[Any, Any], envelope: Envelope, error: TaskError, countdown: float | None
) -> Outcome:
    if envelope.attempt >= envelope.max_retries:
        reason = "max-retries" if envelope.max_retries else "failed"
        return Outcome(OutcomeKind.FAILED, error=error, reason=reason)
    if countdown is None:
        countdown = task.options_.backoff(envelope.attempt)
    return Outcome(OutcomeKind.RETRY, error=error, countdown=countdown)


def _wrap(
    middleware: Any, ctx: TaskContext, inner: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await middleware(ctx, inner)

    return call
