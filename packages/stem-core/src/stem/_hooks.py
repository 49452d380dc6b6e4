"""Signals and middleware: code that runs around enqueueing and executing tasks.

A failing hook is logged and never stops the enqueue or the worker.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

from ._errors import ConfigurationError

__all__ = ["DONE", "HOOK_EVENTS", "Hooks", "Middleware"]

log = logging.getLogger("stem.hooks")

HOOK_EVENTS = (
    "before_enqueue",
    "after_enqueue",
    "on_duplicate",
    "on_consume",
    "before_execute",
    "after_execute",
    "on_success",
    "on_retry",
    "on_failure",
    "on_dead_letter",
    "on_worker_start",
    "on_worker_stop",
)

F = TypeVar("F", bound=Callable[..., Any])


class _Done:
    """An awaitable that is already done: the hot path awaits it instead of a fresh coroutine."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that finishes at once


DONE: Awaitable[None] = _Done()

#: ``async def middleware(ctx, call_next)`` wraps each execution; ``await call_next()``
#: runs the handler (and the inner middleware) and returns its value.
Middleware = Callable[[Any, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class Hooks:
    """Handlers per event, plus execution middleware.

    Example:
        @app.hooks.on("on_failure")
        def alert(ctx, error): ...
    """

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[..., Any]]] = {e: [] for e in HOOK_EVENTS}
        self.middleware: list[Middleware] = []
        #: The events that have a handler: the hot path tests ``event in hooks.listened``
        #: and skips an event nobody listens to without building its arguments.
        self.listened: frozenset[str] = frozenset()

    def on(self, event: str) -> Callable[[F], F]:
        """Decorator: call the function (sync or async) with the event's keyword arguments.

        Raises:
            ConfigurationError: (a ValueError) ``event`` is not one of :data:`HOOK_EVENTS`.
        """
        if event not in self._handlers:
            close = difflib.get_close_matches(str(event), HOOK_EVENTS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ConfigurationError(
                f"unknown hook event {event!r}{hint} The events are: {', '.join(HOOK_EVENTS)}"
            )

        def register(fn: F) -> F:
            self._handlers[event].append(fn)
            self.listened = self.listened | {event}
            return fn

        return register

    def add_middleware(self, middleware: Middleware) -> Middleware:
        self.middleware.append(middleware)
        return middleware

    def has(self, event: str) -> bool:
        return event in self.listened

    def emit(self, event: str, **kwargs: Any) -> Awaitable[None]:
        """Call the event's handlers; with none registered, costs no coroutine."""
        handlers = self._handlers[event]
        return self._emit(handlers, event, kwargs) if handlers else DONE

    async def _emit(
        self, handlers: list[Callable[..., Any]], event: str, kwargs: dict[str, Any]
    ) -> None:
        for handler in handlers:
            try:
                result = handler(**kwargs)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception(
                    "hook %s for %s failed; going on",
                    getattr(handler, "__qualname__", handler),
                    event,
                )
