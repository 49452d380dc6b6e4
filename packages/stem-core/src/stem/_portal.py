"""A background event loop that gives synchronous code a way into the async API."""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from ._errors import StemError

__all__ = ["Portal"]

P = ParamSpec("P")
T = TypeVar("T")


class Portal:
    """Runs coroutines on one daemon thread's loop, started on first use.

    Every synchronous call of an app goes through the same loop, so adapter
    connections opened there stay on the loop that owns them.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_serve, args=(loop,), name="stem-portal", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
                atexit.register(self.stop)
            return self._loop

    def call(self, fn: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise StemError(
                f"{getattr(fn, '__name__', 'this call')}_sync was called inside a running event "
                "loop; in async code use `await ...` instead of the _sync method"
            )
        loop = self._ensure()
        return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), loop).result()

    def stop(self) -> None:
        """Stop the loop from any thread, its own included (``close_sync`` runs on it).

        The portal thread closes the loop once it has stopped.
        """
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_forever()
    finally:
        loop.close()
