"""Wake-ups between processes that share a database file: Unix datagram sockets.

SQLite tells no other process about a commit. Each process that waits on a file
(a worker for messages, a caller of ``wait_for_task`` for a status) binds a datagram
socket in a directory of that file's own under the temporary directory, named for
what it waits on (``q-...`` for queues, ``s-...`` for statuses); a process that
commits such a change sends one datagram to each socket of that kind. The socket's
own buffer holds a datagram sent while its reader is busy, so a wake-up is not lost
between a read and the next wait; readers still read a version counter now and
then (see ``_wake``), which covers what this cannot: a platform without Unix
sockets, a directory owned by another user, a socket bound after the send.

A sender finds the sockets by listing the directory again when its modification time
changes (read at most every :data:`CHECK_EVERY` seconds), and at least every
:data:`RELIST_EVERY` seconds (that time is coarse). A socket whose process died
refuses datagrams: the sender removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import socket
import stat
import tempfile
import time
import weakref
from collections.abc import Callable

__all__ = ["QUEUES", "STATUSES", "WakeBus"]

QUEUES, STATUSES = "q", "s"
#: A sender looks at the directory's modification time at most this often (seconds)...
CHECK_EVERY = 0.002
#: ...and lists the sockets again when it changed, and at least this often.
RELIST_EVERY = 0.5
#: Largest datagram sent; a longer list of task ids is sent as "everything changed".
MAX_PAYLOAD = 32 * 1024


class WakeBus:
    """The datagram sockets of one database file, in this process."""

    def __init__(self, database: str) -> None:
        digest = hashlib.sha256(os.path.realpath(database).encode()).hexdigest()[:24]
        self.directory = os.path.join(tempfile.gettempdir(), f"stem-wake-{digest}")
        self._usable: bool | None = None  # decided on first use
        self._sender: socket.socket | None = None
        self._listed: dict[str, list[str]] = {QUEUES: [], STATUSES: []}
        self._listed_mtime = -1
        self._listed_at = 0.0
        self._checked_at = -CHECK_EVERY

    def _ready(self) -> bool:
        if self._usable is None:
            self._usable = hasattr(socket, "AF_UNIX") and self._make_directory()
        return self._usable

    def _make_directory(self) -> bool:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            info = os.lstat(self.directory)
        except OSError:
            return False
        # Only a directory of this user's own: another user's could hand our datagrams
        # to anyone, and would refuse our sockets anyway.
        return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()

    # -- receiving ----------------------------------------------------------------------

    def listen(
        self, loop: asyncio.AbstractEventLoop, kind: str, on_wake: Callable[[bytes], None]
    ) -> object | None:
        """Bind a socket of ``kind`` read by ``loop``; ``on_wake(payload)`` per datagram.

        Returns a handle that closes the socket when collected (keep it as long as
        wake-ups are wanted), or None where this platform or directory offers none.
        """
        if not self._ready():
            return None
        path = os.path.join(self.directory, f"{kind}-{os.getpid()}-{secrets.token_hex(4)}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(path)
            loop.add_reader(sock.fileno(), _drain, sock, on_wake)
        except (OSError, NotImplementedError, RuntimeError):
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        handle = _Handle()
        weakref.finalize(handle, _close, loop, sock, path)
        return handle

    # -- sending ------------------------------------------------------------------------

    def send(self, kind: str, payload: bytes = b"") -> None:
        """Wake every other socket of ``kind`` on this file (never blocks)."""
        if not self._ready():
            return
        targets = self._targets(kind)
        if not targets:
            return
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
            weakref.finalize(self, self._sender.close)
        if len(payload) > MAX_PAYLOAD:
            payload = b""
        for path in targets:
            try:
                self._sender.sendto(payload, path)
            except BlockingIOError:
                pass  # its buffer is full of wake-ups already
            except (ConnectionRefusedError, FileNotFoundError):
                # Its process died without removing it.
                with contextlib.suppress(OSError):
                    os.unlink(path)
                self._listed_mtime, self._checked_at = -1, -CHECK_EVERY
            except OSError:
                pass  # a wake-up is an optimisation: the reader's checks catch up

    def _targets(self, kind: str) -> list[str]:
        now = time.monotonic()
        if now - self._checked_at < CHECK_EVERY:
            return self._listed[kind]
        self._checked_at = now
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except OSError:
            return []
        if mtime != self._listed_mtime or now - self._listed_at > RELIST_EVERY:
            listed: dict[str, list[str]] = {QUEUES: [], STATUSES: []}
            try:
                names = os.listdir(self.directory)
            except OSError:
                names = []
            # This process's own sockets are left out: its waiters are woken in-process.
            # (By process id, not by the sockets it bound: a forked child must wake them.)
            own = f"-{os.getpid()}-"
            for name in names:
                if name[:2] in ("q-", "s-") and name[1 : 1 + len(own)] != own:
                    listed[name[0]].append(os.path.join(self.directory, name))
            self._listed, self._listed_mtime, self._listed_at = listed, mtime, now
        return self._listed[kind]


class _Handle:
    """Keeps a listening socket open while referenced."""


def _drain(sock: socket.socket, on_wake: Callable[[bytes], None]) -> None:
    while True:
        try:
            payload = sock.recv(MAX_PAYLOAD + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        on_wake(payload)


def _close(loop: asyncio.AbstractEventLoop, sock: socket.socket, path: str) -> None:
    if not loop.is_closed():
        with contextlib.suppress(Exception):
            loop.remove_reader(sock.fileno())
    sock.close()
    with contextlib.suppress(OSError):
        os.unlink(path)
