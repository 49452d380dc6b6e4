"""A pool of child processes for CPU-bound handlers, each child killable on its own.

``concurrent.futures.ProcessPoolExecutor`` cannot kill one stuck job without breaking
the whole pool, so Stem keeps its own children: one pipe each, jobs and results as
MessagePack (no pickle of payloads), SIGUSR1 for the soft time limit, SIGKILL and a
fresh child for the hard one.

A handler behaves as it would in a thread: the child binds and converts the
arguments to the handler's annotations itself, integers of any size cross the pipe
(MessagePack stops at 64 bits, so bigger ones travel as an extension), and a result
that cannot be sent back is reported as such, never as the handler's failure.

Children die with the worker: on Linux the kernel kills a child when its parent dies
(``PR_SET_PDEATHSIG``), and everywhere a thread in the child exits when its watch
pipe to the parent closes; otherwise a SIGKILLed worker's children would finish
their tasks while the messages are delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any, cast

import msgspec

from .._codec import encode_problem
from .._errors import Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from .._execute import HandlerFailure, Interrupted, UnstorableResult
from .._messages import TaskError

__all__ = ["ChildLost", "ProcessPool", "RemoteTaskError"]

_BIG_INT = 1  # the MessagePack extension code of an integer beyond 64 bits, as decimal text
_encoder = msgspec.msgpack.Encoder()


def _ext_hook(code: int, data: memoryview) -> Any:
    if code == _BIG_INT:
        return int(bytes(data))
    raise ValueError(f"unknown MessagePack extension {code}")


_decode = msgspec.msgpack.Decoder(ext_hook=_ext_hook).decode


def _encode(value: Any) -> bytes:
    """MessagePack, with integers beyond 64 bits as an extension (the common case pays nothing)."""
    try:
        return _encoder.encode(value)
    except OverflowError:
        return _encoder.encode(_wrap_big_ints(value))


def _wrap_big_ints(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if -(2**63) <= value < 2**64:
            return value
        return msgspec.msgpack.Ext(_BIG_INT, str(value).encode())
    if isinstance(value, dict):
        return {_wrap_big_ints(k): _wrap_big_ints(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_wrap_big_ints(v) for v in value]
    return value


class ChildLost(Interrupted):
    """The child process running a task died (killed, out of memory, crashed).

    Not the handler's own failure: the task ended without a result, and its message
    goes back to the queue.
    """


class RemoteTaskError(HandlerFailure):
    """A handler in a child process raised; carries the child's error record."""


class _Child:
    def __init__(
        self, process: multiprocessing.process.BaseProcess, conn: Connection, watch: Connection
    ) -> None:
        self.process = process
        self.conn = conn
        self.watch = watch  # never written: the child exits when it closes

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.process.is_alive():
                os.kill(self.pid, signal.SIGKILL)
        self.process.join(timeout=5)
        self.conn.close()
        self.watch.close()


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
        self._spawn_failed = False

    @property
    def healthy(self) -> bool:
        """False while new children exit at start (the last one tried did)."""
        return not self._spawn_failed

    async def _spawn(self) -> _Child:
        parent, child = self._mp.Pipe()
        watched, watch = self._mp.Pipe(duplex=False)
        process = self._mp.Process(
            target=_child_main,
            args=(child, list(sys.path), os.getpid(), watched),
            daemon=True,
            name="stem-child",
        )
        process.start()
        child.close()
        watched.close()
        spawned = _Child(process, parent, watch)
        self._all.add(spawned)
        # Wait for "ready": a signal sent before the child installs its handlers would kill it.
        try:
            await _readable(spawned.conn)
            _decode(spawned.conn.recv_bytes())
        except (EOFError, OSError):
            self._all.discard(spawned)
            spawned.kill()
            self._spawn_failed = True
            raise ChildLost(
                f"a new child process exited at start (exit code {process.exitcode})"
            ) from None
        self._spawn_failed = False
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
            except (RemoteTaskError, UnstorableResult):
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
            if kind == "unstorable":
                raise UnstorableResult(message["type"], message["problem"])
            raise RemoteTaskError(
                TaskError(**message["error"]),
                kind=kind,
                type_names=message.get("types"),
                countdown=message.get("countdown"),
                reason=message.get("reason"),
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


_in_handler = False  # the soft limit interrupts a handler only, never the child's own loop


def _raise_soft_limit(signum: int, frame: Any) -> None:
    if _in_handler:
        raise SoftTimeLimitExceeded("soft time limit exceeded")


def _resolve(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int, watched: Connection) -> None:  # pragma: no cover - child
    """Make sure this child does not outlive the worker that started it."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watch below still ends the child
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the death signal was set
    threading.Thread(
        target=_watch_parent, args=(watched,), name="stem-parent-watch", daemon=True
    ).start()


def _watch_parent(watched: Connection) -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(EOFError, OSError):
        watched.recv_bytes()  # the parent never writes: this returns when it is gone
    os._exit(1)


def _child_main(  # pragma: no cover - runs in the child
    conn: Connection, path: list[str], parent_pid: int, watched: Connection
) -> None:
    _die_with_parent(parent_pid, watched)
    sys.path[:] = path
    signal.signal(signal.SIGUSR1, _raise_soft_limit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent worker decides about shutdown
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    conn.send_bytes(_encode({"kind": "ready"}))
    bindings: dict[tuple[str, str], Any] = {}
    while True:
        try:
            job = _decode(conn.recv_bytes())
        except (EOFError, OSError):
            return
        reply = _run_job(conn, job, bindings)
        try:
            conn.send_bytes(reply)
        except OSError:
            return


def _run_job(conn: Connection, job: dict[str, Any], bindings: dict[tuple[str, str], Any]) -> bytes:
    """Run one job; the reply to send. Never raises (a failure is the reply)."""
    global _in_handler
    from .._execute import bind_arguments, task_error

    try:
        key = (job["module"], job["qualname"])
        task = bindings.get(key)
        if task is None:
            task = bindings[key] = _binding(_resolve(*key), job["task"])
        args, kwargs = bind_arguments(task, list(job["args"]), dict(job["kwargs"]))
        if job["takes_context"]:
            args.insert(0, ChildContext(conn, job))
        _in_handler = True
        try:
            value = task.fn(*args, **kwargs)
            if asyncio.iscoroutine(value):
                value = asyncio.run(value)
        finally:
            _in_handler = False
    except Retry as exc:
        error = task_error(exc.exc or exc)
        return _reply({"kind": "retry", "error": _plain(error), "countdown": exc.countdown})
    except Reject as exc:
        error = task_error(exc)
        return _reply({"kind": "reject", "error": _plain(error), "reason": exc.reason})
    except BaseException as exc:
        names = [f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__]
        return _reply({"kind": "error", "error": _plain(task_error(exc)), "types": names})
    try:
        return _encode({"kind": "ok", "value": value})
    except Exception as exc:
        problem = encode_problem(exc)
        return _reply({"kind": "unstorable", "type": type(value).__name__, "problem": problem})


def _binding(target: Any, name: str) -> Any:
    """What bind_arguments needs of a task: the Task itself, or one made for a plain function."""
    from .._options import TaskOptions
    from .._task import Task

    if isinstance(target, Task):
        return target
    return Task(cast(Any, None), target, TaskOptions(name=name))


def _reply(message: dict[str, Any]) -> bytes:
    try:
        return _encode(message)
    except Exception as exc:  # a reason or countdown that cannot be sent, say
        error = TaskError(
            type="SerializationError",
            message=f"the child process could not send its reply: {encode_problem(exc)}",
        )
        return _encode({"kind": "error", "error": _plain(error), "types": []})


def _plain(error: TaskError) -> dict[str, Any]:
    return {"type": error.type, "message": error.message, "traceback": error.traceback}
