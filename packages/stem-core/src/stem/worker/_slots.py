"""Running one job after another in a worker's slot task, each in its own context.

A worker has one asyncio task per slot of concurrency (not one per job): a slot takes
the next reserved job and runs it to the end, inline, without creating a task or a
future. What a task per job gave for free is kept by :class:`InContext`:

* each job runs in a copy of the slot's context, so a context variable a handler or
  a middleware sets (a trace span, a log binding) does not leak into the next job;
* the worker learns when a job suspends (waits for I/O), so it can wake another slot
  for the next job; a job that never suspends is followed by the next in the same slot;
* an exception can be thrown into the job where it waits (a terminate revocation, a
  forced shutdown), as :class:`~stem.worker._interrupt.Interruptible` does for a
  handler with its own task.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["DONE", "InContext", "run_inline"]


def run_inline(coro: Coroutine[Any, Any, Any], context: contextvars.Context) -> Any:
    """Run ``coro`` in ``context`` up to its first suspension.

    Returns:
        :data:`DONE` if it finished (a quick job: no task, no future, no generator), or
        what it yielded, to go on with :class:`InContext`.
    """
    try:
        return context.run(coro.send, None)
    except StopIteration:
        return DONE


#: What :func:`run_inline` returns for a coroutine that finished.
DONE: Any = object()


class InContext:
    """Awaits the rest of a coroutine that :func:`run_inline` started and that
    yielded ``yielded``, with every step run in ``context``."""

    __slots__ = ("_context", "_coro", "_pending", "_task", "_yielded")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context,
        task: asyncio.Task[Any],
        yielded: Any,
    ) -> None:
        """``task``: the task that awaits it (the slot)."""
        self._coro = coro
        self._context = context
        self._task = task
        self._yielded = yielded
        self._pending: BaseException | None = None

    def interrupt(self, exc: BaseException) -> None:
        """Throw ``exc`` into the coroutine where it waits now (soon, not at once).

        The caller checks that the coroutine is still running and waits where ``exc``
        is meant to land (in the handler). The slot task is woken with ``cancel()``;
        the cancellation is replaced by ``exc`` and taken back with ``uncancel()``.
        """
        self._pending = exc
        self._task.cancel()

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, run, yielded = self._coro, self._context.run, self._yielded
        self._yielded = None
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation or an interrupt: to the job
                thrown = exc
                if self._pending is not None:
                    thrown, self._pending = self._pending, None
                    self._task.uncancel()
                try:
                    yielded = run(coro.throw, thrown)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = run(coro.send, sent)
                except StopIteration as stop:
                    return stop.value
