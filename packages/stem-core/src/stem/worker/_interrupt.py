"""Interrupting running handlers: async ones at their current await, threads by async exception.

An exception raised into a thread (``PyThreadState_SetAsyncExc``) arrives when that
thread next runs Python code, wherever that is. In a ``ThreadPoolExecutor`` it can
arrive after the handler returned, in the executor's own queue read, and kill the
thread. So plain handlers run on threads the worker owns (:class:`ThreadPool`), and
a thread can only be interrupted while it runs the call the interrupt is for: the
thread enters and leaves that call under a lock, the interrupter raises only while
the thread is inside, and the thread, leaving, clears under the same lock anything
still pending.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

__all__ = ["Interruptible", "ThreadCall", "ThreadPool"]

log = logging.getLogger("stem.worker")

T = TypeVar("T")


class Interruptible(Generic[T]):
    """Awaits a coroutine and can throw an exception into it where it is suspended.

    ``task.cancel()`` can only deliver a CancelledError. To let a handler catch a
    :class:`SoftTimeLimitExceeded` instead, this drives the coroutine by hand (as
    ``yield from`` would) and, after waking the task with ``cancel()``, throws the
    chosen exception into the coroutine in place of the cancellation, then takes the
    cancellation back with ``uncancel()`` so the task is not left half-cancelled.
    """

    __slots__ = ("_coro", "_over", "_pending", "_task")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._pending: BaseException | None = None
        self._task: asyncio.Task[Any] | None = None
        self._over = False

    def interrupt(self, exc: BaseException) -> None:
        """Throw ``exc`` into the coroutine at its current await (soon, not now).

        Does nothing once the coroutine has ended: the task that ran it (a worker's
        slot) may be running another handler by then.
        """
        if self._task is None or self._over or self._task.done():
            return
        self._pending = exc
        self._task.cancel()

    def __await__(self) -> Generator[Any, Any, T]:
        self._task = asyncio.current_task()
        coro = self._coro
        to_send: Any = None
        to_throw: BaseException | None = None
        try:
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
        finally:
            self._over = True


class ThreadCall:
    """One handler call on a :class:`ThreadPool`; ``future`` resolves on the loop that submitted it."""

    _QUEUED, _RUNNING, _DONE = range(3)

    def __init__(
        self,
        fn: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self._lock = threading.Lock()
        self._state = self._QUEUED
        self._ident = 0

    @property
    def running(self) -> bool:
        return self._state == self._RUNNING

    def interrupt(self, exc_type: type[BaseException]) -> bool:
        """Raise ``exc_type`` in the handler, if it is running now; never anywhere else.

        A call that has not started yet will not start. The exception arrives when the
        thread next runs Python code: a blocking C call (``time.sleep``, a socket
        read) finishes first. Returns whether an exception was sent.
        """
        with self._lock:
            if self._state == self._QUEUED:
                self._state = self._DONE
                self._resolve(exc_type, None)
                return False
            if self._state != self._RUNNING:
                return False
            sent = ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._ident), ctypes.py_object(exc_type)
            )
            return bool(sent == 1)

    def run(self) -> None:
        """Run the call in this thread (a pool thread); never raises."""
        value: Any = None
        error: BaseException | None = None
        started = False
        try:
            try:
                with self._lock:  # no interrupt can be sent while it is held
                    if self._state == self._QUEUED:
                        started = True
                        self._ident = threading.get_ident()
                        self._state = self._RUNNING
                if started:
                    value = self.fn(*self.args, **self.kwargs)
            finally:
                self._leave()
        except BaseException as exc:
            error = exc
        self._leave()  # again: an interrupt may have arrived before the first one began
        if started:  # else it was interrupted before it started, and is settled
            self._resolve(error, value)

    def _leave(self) -> None:
        # An interrupt sent just before the lock is taken may arrive inside this loop;
        # it was meant for the call that just ended, so it is dropped, and the loop
        # goes on until the call is marked done and nothing is left pending.
        while True:
            try:
                with self._lock:
                    if self._state == self._RUNNING:
                        self._state = self._DONE
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(self._ident), None
                        )
                return
            except BaseException:  # the interrupt of a call that is over
                continue

    def _resolve(self, error: BaseException | type[BaseException] | None, value: Any) -> None:
        if isinstance(error, StopIteration):  # a Future refuses it, as a coroutine would
            error = RuntimeError(f"the handler raised {type(error).__name__}")
        try:
            self.loop.call_soon_threadsafe(_settle, self.future, error, value)
        except RuntimeError:
            pass  # the loop is closed: nobody waits for this result any more


def _settle(
    future: asyncio.Future[Any], error: BaseException | type[BaseException] | None, value: Any
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class ThreadPool:
    """Threads that run plain handlers, owned by one worker.

    ``size`` threads run handlers at once. A thread whose call passed its hard time
    limit is *abandoned*: the task has already failed, the thread was interrupted,
    but a blocking C call may hold it for a while yet. Each abandoned thread is
    replaced, up to ``size`` of them, so the pool keeps its capacity; past that the
    pool runs with fewer threads and reports itself unhealthy until they come back.
    Threads are daemons, so one stuck for good does not keep the process alive.
    """

    def __init__(self, size: int, *, name: str = "stem-task") -> None:
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue[ThreadCall | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._abandoned: set[ThreadCall] = set()
        self._waiting = 0  # calls in the queue
        self._idle = 0  # threads waiting for a call
        self._numbers = itertools.count(1)
        self._closed = False
        self._start_failed = False

    def submit(self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> ThreadCall:
        """Queue a call; await its ``future`` (from the running loop)."""
        call = ThreadCall(fn, args, kwargs, asyncio.get_running_loop())
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker's thread pool is shut down")
            self._waiting += 1
            self._queue.put(call)
            self._grow()
        return call

    def abandon(self, call: ThreadCall, exc_type: type[BaseException]) -> None:
        """Give up on a call past its hard limit: interrupt it with ``exc_type`` and, if
        its thread stays busy, count that thread as stuck and start another in its place."""
        call.interrupt(exc_type)
        with self._lock:
            if call.running:
                self._abandoned.add(call)
                if len(self._abandoned) == self.size:
                    log.error(
                        "%d threads are stuck in handlers past their hard time limit; the "
                        "thread pool replaces no more of them and reports the worker unhealthy",
                        self.size,
                    )
                self._grow()

    @property
    def stuck(self) -> int:
        """Threads still running a call that passed its hard time limit."""
        return len(self._abandoned)

    @property
    def healthy(self) -> bool:
        """False if the pool cannot run ``size`` handlers at once (threads stuck or not starting)."""
        with self._lock:
            working = len(self._threads) - len(self._abandoned)
            return not self._start_failed and (working >= self.size or self._can_grow())

    def _can_grow(self) -> bool:
        stuck = len(self._abandoned)
        return len(self._threads) - stuck < self.size and stuck <= self.size

    def _grow(self) -> None:
        """Start a thread if a call waits for one and the pool may have another (lock held)."""
        if self._closed or self._waiting <= self._idle or not self._can_grow():
            return
        thread = threading.Thread(
            target=self._work, name=f"{self.name}-{next(self._numbers)}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:
            self._start_failed = True
            log.exception("the worker could not start a thread for a handler")
            return
        self._start_failed = False
        self._threads.add(thread)

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                self._idle += 1
            call = self._queue.get()
            with self._lock:
                self._idle -= 1
                if call is None:
                    self._threads.discard(me)
                    return
                self._waiting -= 1
            call.run()
            with self._lock:
                if call in self._abandoned:
                    self._abandoned.discard(call)
                    if len(self._threads) - len(self._abandoned) > self.size:
                        self._threads.discard(me)  # its replacement runs on: one too many now
                        return

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = False) -> None:
        """Stop the threads once their calls end; ``cancel_futures`` drops queued calls."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    call = self._queue.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    call.interrupt(_Cancelled)
        for _ in threads:
            self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()


class _Cancelled(BaseException):
    """Settles a queued call dropped at shutdown."""
