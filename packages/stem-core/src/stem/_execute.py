"""Running one task message: decode its arguments, call the handler, classify the outcome.

The worker and eager mode share this, so both go through the same serialization
path a real deployment does.
"""

from __future__ import annotations

import asyncio
import enum
import math
import os
import traceback as tb
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from ._codec import JsonPayloadEncoder, enc_hook, encode_problem, plain_problem
from ._errors import (
    ArgumentError,
    DecodeError,
    Reject,
    Retry,
    SerializationError,
    TimeLimitExceeded,
)
from ._messages import Envelope, TaskError
from ._task import Task, TaskContext

if TYPE_CHECKING:
    from ._app import Stem

__all__ = [
    "HandlerFailure",
    "Interrupted",
    "Invoker",
    "Outcome",
    "OutcomeKind",
    "UnstorableResult",
    "bind_arguments",
    "decode_arguments",
    "decode_payload",
    "execute",
    "failed",
    "prepare",
    "safe_text",
    "succeeded",
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


@dataclass(slots=True)
class Outcome:
    kind: OutcomeKind
    value: Any = None
    error: TaskError | None = None
    countdown: float | None = None
    reason: str | None = None


class HandlerFailure(Exception):
    """A failure reported by a handler that ran elsewhere (a child process).

    ``kind`` is ``error``, ``retry`` or ``reject``; ``task_error`` is the remote record;
    ``type_names`` are the qualified names of the exception's classes (its MRO), so
    the worker matches them against the task's ``retry_for`` as it would the exception.
    """

    def __init__(
        self,
        error: TaskError,
        *,
        kind: str = "error",
        type_names: list[str] | None = None,
        countdown: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(f"{error.type}: {error.message}")
        self.task_error = error
        self.kind = kind
        self.type_names = type_names or []
        self.countdown = countdown
        self.reason = reason

    def is_a(self, classes: tuple[type[BaseException], ...]) -> bool:
        """Whether the remote exception is an instance of one of ``classes`` (by name)."""
        return any(_qualified(c) in self.type_names for c in classes)


class UnstorableResult(Exception):
    """A handler returned a value that cannot be carried back or stored."""

    def __init__(self, type_name: str, problem: str) -> None:
        super().__init__(f"{type_name}: {problem}")
        self.type_name = type_name
        self.problem = problem


class Interrupted(BaseException):
    """The worker stopped the handler (a shutdown, a terminate revocation) or lost it
    (its child process died): the task ended without a result.

    ``execute`` lets it through instead of recording a failure; the worker decides
    what becomes of the message. A BaseException, so ``except Exception`` in a handler
    does not swallow it.
    """


#: The message's arguments do not fit the handler: the public error a producer raises
#: for the same mistake, so a dead letter's error type reads ``stem.ArgumentError``.
BadArguments = ArgumentError


_STEM_DIR = os.path.dirname(os.path.abspath(__file__))


def task_error(exc: BaseException) -> TaskError:
    """The error record of an exception, its traceback without Stem's own frames.

    It never fails: an exception whose ``__str__`` or ``__repr__`` raises is described
    by its type's name, and text that is not valid Unicode (a lone surrogate) is
    escaped, so the record can always be stored.
    """
    kind = type(exc)
    message = _describe(exc)
    try:
        frames = exc.__traceback__
        while frames is not None and frames.tb_frame.f_code.co_filename.startswith(_STEM_DIR):
            frames = frames.tb_next
        traceback = "".join(tb.format_exception(kind, exc, frames or exc.__traceback__))
    except Exception as failure:
        traceback = f"{_qualified(kind)}: {message}\n(no traceback: formatting it failed with {type(failure).__name__})\n"
    return TaskError(
        type=_qualified(kind).removeprefix("builtins."),
        message=safe_text(message),
        traceback=safe_text(traceback),
    )


def _describe(exc: BaseException) -> str:
    """``str(exc)``, or its repr if that fails or is empty, or else its type's name."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:
        text = ""
    else:
        if text:
            return text
        if not exc.args:
            return name
    try:
        return repr(exc)
    except Exception:
        return f"<{name}: str() and repr() failed>"


def safe_text(text: str) -> str:
    """The text, with what UTF-8 cannot encode (lone surrogates) escaped."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _qualified(cls: type) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls.__name__)}"


def decode_payload(app: Stem, envelope: Envelope) -> tuple[list[Any], dict[str, Any]]:
    """The arguments as sent, decoded by the message's payload encoder.

    Raises:
        DecodeError: the encoder is missing, fails, or gives something else than a list
            and a map: the message can never run (``malformed``).
    """
    encoder = app.encoders.get(envelope.args_encoder)
    if type(encoder) is JsonPayloadEncoder:
        # The identity: a decoded envelope holds a list and a map already. Not copied:
        # bind_arguments copies before it converts.
        return envelope.args, envelope.kwargs
    try:
        args = encoder.decode(envelope.args)
        kwargs = encoder.decode(envelope.kwargs)
    except Exception as exc:
        raise DecodeError(
            f"payload encoder {envelope.args_encoder!r} could not decode the arguments: "
            f"{encode_problem(exc)}"
        ) from exc
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise DecodeError(
            f"payload encoder {envelope.args_encoder!r} decoded the arguments to a "
            f"{type(args).__name__} and a {type(kwargs).__name__}, not a list and a map"
        )
    return list(args), dict(kwargs)


def decode_arguments(
    app: Stem, task: Task[Any, Any], envelope: Envelope
) -> tuple[list[Any], dict[str, Any]]:
    """Decode and convert the arguments to the handler's annotated types.

    Raises:
        DecodeError: the payload does not decode.
        BadArguments: they do not bind to the signature or do not convert.
    """
    args, kwargs = decode_payload(app, envelope)
    return bind_arguments(task, args, kwargs)


def bind_arguments(
    task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Bind decoded arguments to the handler's signature, converted to its annotations.

    Raises:
        BadArguments: they do not bind or do not convert.
    """
    simple = task.positional
    if simple is not None and not kwargs and len(args) == len(simple):
        # The common case, without inspect's bind: positional arguments, one per parameter.
        converted: list[Any] | None = None
        for index, hint in enumerate(simple):
            if hint is None:
                continue
            value = args[index]
            if type(value) is hint and hint in _EXACT:
                continue  # converting would give the value itself
            if converted is None:
                converted = list(args)  # never change the list given
            converted[index] = _convert(value, hint, task.parameter_names[index])
        return (args if converted is None else converted), {}
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


#: Types that ``msgspec.convert`` returns a value of unchanged.
_EXACT = frozenset({int, str, float, bool})


def _convert(value: Any, hint: Any, name: str) -> Any:
    try:
        return msgspec.convert(value, hint, strict=False)
    except Exception as exc:
        raise BadArguments(f"argument {name!r}: {encode_problem(exc)}") from None


async def execute(app: Stem, task: Task[Any, Any], ctx: TaskContext, invoke: Invoker) -> Outcome:
    """Run a task through the middleware and classify what happened.

    Whatever the handler raises is the task's failure, ``SystemExit`` and
    ``KeyboardInterrupt`` included (a handler that exits must not stop the worker);
    only the worker's own cancellation and :class:`Interrupted` pass through.
    """
    envelope = ctx.envelope
    arguments = prepare(app, task, envelope)
    if isinstance(arguments, Outcome):
        return arguments
    args, kwargs = arguments
    try:
        middleware = app.hooks.middleware
        if middleware:
            value = await _chain(middleware, invoke, task, ctx, args, kwargs)()
        else:
            value = await invoke(task, ctx, args, kwargs)
    except BaseException as exc:
        return failed(task, envelope, exc)
    return succeeded(app, task, envelope, value)


def prepare(
    app: Stem, task: Task[Any, Any], envelope: Envelope
) -> tuple[list[Any], dict[str, Any]] | Outcome:
    """The handler's arguments, or the outcome of a message they cannot be made from.

    The first step of :func:`execute`; the worker runs the three steps itself for an
    async handler it calls inline.
    """
    try:
        if envelope.args_encoder == "json" and app.encoders.json_is_identity:
            return bind_arguments(task, envelope.args, envelope.kwargs)
        return decode_arguments(app, task, envelope)
    except BadArguments as exc:
        return Outcome(OutcomeKind.DEAD, error=task_error(exc), reason="bad-arguments")
    except DecodeError as exc:  # e.g. a payload encoder this process does not have
        return Outcome(OutcomeKind.DEAD, error=task_error(exc), reason="malformed")


def failed(task: Task[Any, Any], envelope: Envelope, exc: BaseException) -> Outcome:
    """The outcome of a handler that raised ``exc``.

    Raises:
        Interrupted: ``exc`` itself: the worker stopped or lost the handler.
        asyncio.CancelledError: ``exc`` itself, if the worker is cancelling the job.
    """
    if isinstance(exc, Retry):
        return _retry_or_fail(task, envelope, task_error(exc.exc or exc), exc.countdown)
    if isinstance(exc, Reject):
        return Outcome(OutcomeKind.DEAD, error=task_error(exc), reason=exc.reason)
    if isinstance(exc, TimeLimitExceeded):
        return Outcome(OutcomeKind.FAILED, error=task_error(exc), reason="time-limit")
    if isinstance(exc, UnstorableResult):
        return _unstorable(task, exc.type_name, exc.problem)
    if isinstance(exc, HandlerFailure):
        if exc.kind == "reject":
            return Outcome(OutcomeKind.DEAD, error=exc.task_error, reason=exc.reason or "rejected")
        if exc.kind == "retry" or exc.is_a(task.options_.retry_for):
            return _retry_or_fail(task, envelope, exc.task_error, exc.countdown)
        return Outcome(OutcomeKind.FAILED, error=exc.task_error, reason="failed")
    if isinstance(exc, Interrupted):
        raise exc
    if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
        raise exc  # the worker is stopping this job, not the handler failing
    if isinstance(exc, task.options_.retry_for):
        return _retry_or_fail(task, envelope, task_error(exc), None)
    return Outcome(OutcomeKind.FAILED, error=task_error(exc), reason="failed")


def succeeded(app: Stem, task: Task[Any, Any], envelope: Envelope, value: Any) -> Outcome:
    """The outcome of a handler that returned ``value``: a success with the value as it
    will be stored, or a failure if it cannot be stored exactly."""
    kind = type(value)
    if (
        (
            value is None
            or kind is int
            or kind is bool
            or (kind is float and math.isfinite(value))
            or (kind is str and value.isascii())
        )
        and envelope.result_encoder == "json"
        and app.encoders.json_is_identity
    ):
        # Stored as it is: the checks below would find nothing to change or refuse.
        return Outcome(OutcomeKind.SUCCEEDED, value=value)
    try:
        # to_builtins gives the value the shape every backend returns (dataclasses
        # become dicts, datetimes strings), even in memory; plain_problem checks that
        # it can be stored exactly.
        stored = msgspec.to_builtins(
            app.encoders.get(envelope.result_encoder).encode(value), enc_hook=enc_hook
        )
        problem = plain_problem(stored)
    except Exception as exc:
        problem = encode_problem(exc)
    if problem is not None:
        return _unstorable(task, type(value).__name__, problem)
    return Outcome(OutcomeKind.SUCCEEDED, value=stored)


def _being_cancelled() -> bool:
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


def _unstorable(task: Task[Any, Any], type_name: str, problem: str) -> Outcome:
    error = SerializationError(
        f"task {task.name!r} returned a {type_name}, which cannot be stored as a "
        f"result ({problem}); return plain data or register a result encoder"
    )
    return Outcome(OutcomeKind.FAILED, error=task_error(error), reason="unserializable-result")


def _retry_or_fail(
    task: Task[Any, Any], envelope: Envelope, error: TaskError, countdown: float | None
) -> Outcome:
    if envelope.attempt >= envelope.max_retries:
        reason = "max-retries" if envelope.max_retries else "failed"
        return Outcome(OutcomeKind.FAILED, error=error, reason=reason)
    if countdown is None:
        countdown = task.options_.backoff(envelope.attempt)
    return Outcome(OutcomeKind.RETRY, error=error, countdown=countdown)


def _chain(
    middleware: list[Any],
    invoke: Invoker,
    task: Task[Any, Any],
    ctx: TaskContext,
    args: list[Any],
    kwargs: dict[str, Any],
) -> Callable[[], Awaitable[Any]]:
    """The middleware wrapped around the handler's call, outermost first."""

    async def call_handler() -> Any:
        return await invoke(task, ctx, args, kwargs)

    chain: Callable[[], Awaitable[Any]] = call_handler
    for each in reversed(middleware):
        chain = _wrap(each, ctx, chain)
    return chain


def _wrap(
    middleware: Any, ctx: TaskContext, inner: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await middleware(ctx, inner)

    return call
