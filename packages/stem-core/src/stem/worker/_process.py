"""A pool of child processes for CPU-bound handlers, each child killable on its own.

``concurrent.futures.ProcessPoolExecutor`` cannot kill one stuck job without breaking
the whole pool, so Stem keeps its own children: one pipe each, jobs and results as
MessagePack (no pickle of payloads), SIGUSR1 for the soft time limit, SIGKILL and a
fresh child for the hard one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from .._errors import Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from .._execute import HandlerFailure
from .._messages import TaskError

__all__ = ["ChildLost", "ProcessPool", "RemoteTaskError"]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class ChildLost(BaseException):
    """The child process running a task died (killed, out of memory, crashed).

    A BaseException so that it is not taken for the handler's own failure: the task
    ended without a result, and its message goes back to the queue.
    """


class RemoteTaskError(HandlerFailure):
    """A handler in a child process raised; carries the child's error record."""


class _Child:
    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.process.is_alive():
                os.kill(self.pid, signal.SIGKILL)
        self.process.join(timeout=5)
        self.conn.close()


class ProcessPool:
    """Up to ``size`` children, started on demand with the ``spawn`` method.

    ``spawn`` rather than ``fork``: the worker process has threads (the thread pool,
    database drivers), and forking a threaded process can deadlock the child.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._mp = multiprocessing.get_context("spawn")
        self._idle: list[_Child] = []
        self._all: set[_Child] = set()
        self._available = asyncio.Semaphore(size)
        self.replaced = 0

    async def _spawn(self) -> _Child:
        parent, child = self._mp.Pipe()
        process = self._mp.Process(
            target=_child_main, args=(child, list(sys.path)), daemon=True, name="stem-child"
        )
        process.start()
        child.close()
        spawned = _Child(process, parent)
        self._all.add(spawned)
        # Wait for "ready": a signal sent before the child installs its handlers would kill it.
        try:
            await _readable(spawned.conn)
            _decode(spawned.conn.recv_bytes())
        except (EOFError, OSError):
            self._all.discard(spawned)
            spawned.kill()
            raise ChildLost(
                f"a new child process exited at start (exit code {process.exitcode})"
            ) from None
        return spawned

    async def run(
        self,
        job: dict[str, Any],
        *,
        soft_limit: float | None,
        hard_limit: float | None,
        sleep: Any,
        on_progress: Any = None,
        on_child: Any = None,
    ) -> Any:
        """Run one job in a child; returns its value or raises RemoteTaskError / ChildLost / TimeoutError."""
        async with self._available:
            child = self._idle.pop() if self._idle else await self._spawn()
            if on_child is not None:
                on_child(child.pid)
            healthy = False
            timers: list[asyncio.Task[None]] = []
            try:
                child.conn.send_bytes(_encode(job))
                if soft_limit is not None:
                    timers.append(
                        asyncio.ensure_future(
                            _after(sleep, soft_limit, lambda: _signal(child, signal.SIGUSR1))
                        )
                    )
                reply = asyncio.ensure_future(self._read_reply(child, on_progress))
                if hard_limit is None:
                    result = await reply
                else:
                    deadline = asyncio.ensure_future(sleep(hard_limit))
                    done, _ = await asyncio.wait(
                        {reply, deadline}, return_when=asyncio.FIRST_COMPLETED
                    )
                    deadline.cancel()
                    if reply not in done:
                        reply.cancel()
                        raise TimeLimitExceeded(
                            f"hard time limit of {hard_limit:g}s passed; the child process was killed"
                        )
                    result = reply.result()
                healthy = True
                return result
            except RemoteTaskError:
                healthy = True  # the handler failed; the child itself is fine
                raise
            finally:
                for timer in timers:
                    timer.cancel()
                if healthy and child.process.is_alive():
                    self._idle.append(child)
                else:
                    self._all.discard(child)
                    child.kill()
                    self.replaced += 1

    async def _read_reply(self, child: _Child, on_progress: Any) -> Any:
        while True:
            await _readable(child.conn)
            try:
                message = _decode(child.conn.recv_bytes())
            except (EOFError, OSError):
                code = child.process.exitcode
                raise ChildLost(
                    f"the child process running the task died (exit code {code})"
                ) from None
            kind = message.get("kind")
            if kind == "progress":
                if on_progress is not None:
                    await on_progress(message["fraction"], message.get("data"))
                continue
            if kind == "ok":
                return message.get("value")
            error = TaskError(**message["error"])
            raise RemoteTaskError(
                error,
                retryable=bool(message.get("retryable")),
                kind=kind,
                countdown=message.get("countdown"),
            )

    def kill_running(self, pid: int) -> None:
        """Kill the child with ``pid`` (a terminate revocation); the pool replaces it."""
        for child in self._all:
            if child.pid == pid:
                _signal(child, signal.SIGKILL)

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._all]

    async def resize(self, size: int) -> None:
        """Change how many children may run at once; idle extras are stopped."""
        delta = size - self.size
        self.size = size
        if delta > 0:
            for _ in range(delta):
                self._available.release()
        else:
            for _ in range(-delta):
                await self._available.acquire()
            while len(self._idle) > size:
                child = self._idle.pop()
                self._all.discard(child)
                child.kill()

    def close(self) -> None:
        for child in list(self._all):
            child.kill()
        self._all.clear()
        self._idle.clear()


async def _readable(conn: Connection) -> None:
    """Wait until the pipe has data (or was closed) without blocking the loop."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()
    loop.add_reader(fd, _wake, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _after(sleep: Any, seconds: float, action: Any) -> None:
    await sleep(seconds)
    action()


def _signal(child: _Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        if child.process.is_alive():
            os.kill(child.pid, signum)


# -- the child side --------------------------------------------------------------------------


class ChildContext:
    """The task context inside a child process: identity, retry and progress."""

    def __init__(self, conn: Connection, job: dict[str, Any]) -> None:
        self._conn = conn
        self.id: str = job["id"]
        self.name: str = job["task"]
        self.attempt: int = job["attempt"]
        self.max_retries: int = job["max_retries"]
        self.queue: str = job["queue"]
        self.headers: dict[str, str] = job["headers"]
        self.meta: dict[str, Any] = job["meta"]

    def retry(self, countdown: float | None = None, exc: BaseException | None = None) -> Any:
        raise Retry(countdown=countdown, exc=exc)

    def progress_sync(self, fraction: float, data: Any = None) -> None:
        self._conn.send_bytes(_encode({"kind": "progress", "fraction": fraction, "data": data}))

    async def progress(self, fraction: float, data: Any = None) -> None:
        self.progress_sync(fraction, data)


def _raise_soft_limit(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded("soft time limit exceeded")


def _resolve(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _child_main(conn: Connection, path: list[str]) -> None:  # pragma: no cover - runs in the child
    from .._execute import task_error

    sys.path[:] = path
    signal.signal(signal.SIGUSR1, _raise_soft_limit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent worker decides about shutdown
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    conn.send_bytes(_encode({"kind": "ready"}))
    while True:
        try:
            job = _decode(conn.recv_bytes())
        except (EOFError, OSError):
            return
        retry_for: tuple[type[BaseException], ...] = (Exception,)
        try:
            target = _resolve(job["module"], job["qualname"])
            fn = getattr(target, "fn", target)
            retry_for = getattr(getattr(target, "options_", None), "retry_for", retry_for)
            args = list(job["args"])
            if job["takes_context"]:
                args.insert(0, ChildContext(conn, job))
            value = fn(*args, **job["kwargs"])
            if asyncio.iscoroutine(value):
                value = asyncio.run(value)
            reply = {"kind": "ok", "value": value}
            encoded = _encode(reply)
        except Retry as exc:
            encoded = _encode(
                {
                    "kind": "retry",
                    "error": _plain(task_error(exc.exc or exc)),
                    "countdown": exc.countdown,
                    "retryable": True,
                }
            )
        except Reject as exc:
            encoded = _encode(
                {"kind": "reject", "error": _plain(task_error(exc)), "retryable": False}
            )
        except BaseException as exc:
            encoded = _encode(
                {
                    "kind": "error",
                    "error": _plain(task_error(exc)),
                    "retryable": isinstance(exc, retry_for),
                }
            )
        conn.send_bytes(encoded)


def _plain(error: TaskError) -> dict[str, Any]:
    return {"type": error.type, "message": error.message, "traceback": error.traceback}
