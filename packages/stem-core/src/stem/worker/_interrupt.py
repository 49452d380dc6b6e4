"""Interrupting running handlers: async ones at their current await, threads by async exception."""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

__all__ = ["Interruptible", "raise_in_thread"]

T = TypeVar("T")


class Interruptible(Generic[T]):
    """Awaits a coroutine and can throw an exception into it where it is suspended.

    ``task.cancel()`` can only deliver a CancelledError. To let a handler catch a
    :class:`SoftTimeLimitExceeded` instead, this drives the coroutine by hand (as
    ``yield from`` would) and, after waking the task with ``cancel()``, throws the
    chosen exception into the coroutine in place of the cancellation, then takes the
    cancellation back with ``uncancel()`` so the task is not left half-cancelled.
    """

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._pending: BaseException | None = None
        self._task: asyncio.Task[Any] | None = None

    def interrupt(self, exc: BaseException) -> None:
        """Throw ``exc`` into the coroutine at its current await (soon, not now)."""
        if self._task is None or self._task.done():
            return
        self._pending = exc
        self._task.cancel()

    def __await__(self) -> Generator[Any, Any, T]:
        self._task = asyncio.current_task()
        coro = self._coro
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            try:
                yielded = coro.throw(to_throw) if to_throw is not None else coro.send(to_send)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            to_send, to_throw = None, None
            try:
                to_send = yield yielded
            except BaseException as exc:
                to_throw = exc
            if self._pending is not None:
                to_throw, self._pending = self._pending, None
                if self._task is not None:
                    self._task.uncancel()


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` in another thread when it next runs Python code.

    It cannot interrupt a blocking C call (a ``time.sleep``, a socket read); the
    exception arrives when the call returns. Returns False if the thread is gone.
    """
    if not any(t.ident == thread_id for t in threading.enumerate()):
        return False
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )
    if changed > 1:  # pragma: no cover - would mean a corrupt thread id; undo as CPython advises
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return bool(changed == 1)
