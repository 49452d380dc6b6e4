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
                thread = threading.Thread(target=loop.run_forever, name="stem-portal", daemon=True)
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
        """Stop and close the loop (apps call this from ``aclose``)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()
