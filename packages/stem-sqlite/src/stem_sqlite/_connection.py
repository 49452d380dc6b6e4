"""Connections: opened lazily, shared per (file, event loop), one thread hop per transaction.

Every store built for one file in one event loop shares one aiosqlite connection
(and its thread), counted by reference and closed by the last ``aclose``. Event loops
are kept apart because pytest and :class:`stem.Stem`'s synchronous portal each run
their own.

A transaction is one Python function run on the connection's thread
(:meth:`Database.run` and :meth:`Database.write`): it cannot interleave with another
coroutine's statements, and SQLite's write lock is never held across an ``await``.
The rejected alternative, ``await``-ing ``BEGIN``, each statement and ``COMMIT``
under an asyncio lock, costs three to five thread hops per transaction and holds
the file's write lock while other coroutines run.

A connection keeps the file it opened even if the path is deleted or replaced, while
other processes open the new file: the two would never meet again. So each
connection remembers its file's identity (device and inode) and, at most every
:data:`FILE_CHECK_INTERVAL` seconds, before a transaction, checks that the path
still names that file; if not, that transaction and every later one raise
:class:`stem.StoreLostError`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, cast

import aiosqlite

from stem import AdapterError, StoreLostError

from ._errors import translate, translate_os_error
from ._schema import check_version, migrate, read_version
from ._url import SqliteOptions
from ._wake import Signals, signals_for

__all__ = ["FILE_CHECK_INTERVAL", "Client", "Database", "open_database"]

T = TypeVar("T")

#: Longest time (monotonic seconds) between two checks that the path still names the
#: file a connection opened: one stat() per connection per interval, however busy.
FILE_CHECK_INTERVAL = 1.0


def open_database(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the file; blocking, run on a worker thread.

    Raises:
        AdapterError: the path cannot be created or opened, is not a SQLite database, or
            stays locked beyond ``busy_timeout``.
        SchemaVersionError: the file was written by a newer stem-sqlite; it is left unchanged.
    """
    if os.path.isdir(path):
        raise AdapterError(
            f"{path} is a directory, but a SQLite database is a file: point the sqlite:// URL "
            f"at a file inside it, for example sqlite:///{os.path.join(path, 'stem.db')}"
        )
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    except OSError as exc:
        raise translate_os_error(exc, path) from exc
    try:
        # isolation_level=None: autocommit, we write BEGIN IMMEDIATE ourselves.
        # check_same_thread=False: opened on one thread, then handed to aiosqlite's; never
        # used by two threads at once.
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise translate(exc, path, busy_timeout) from exc
    try:
        _prepare(conn, path, busy_timeout)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise translate(exc, path, busy_timeout) from exc
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: str, busy_timeout: float) -> None:
    """Check the schema version, switch to WAL, migrate; retried while the file is busy.

    Switching a new file to WAL needs an exclusive lock, and SQLite reports a clash there
    (with another process doing the same) at once, without calling the busy handler; so
    the whole step is retried, with backoff, up to the busy timeout.
    """
    deadline = time.monotonic() + busy_timeout
    pause = 0.001
    while True:
        try:
            # The schema check comes first and only reads, so a file we must refuse
            # (not SQLite, or from a newer Stem) is not written to at all.
            check_version(read_version(conn), path)
            # WAL: readers never block the writer and the writer never blocks readers;
            # NORMAL is durable across a crash of the program (not of the machine) in WAL.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise AdapterError(
                    f"cannot switch the SQLite database {path} to WAL mode "
                    f"(it is in {mode and mode[0]!r} mode): it may be on a file system "
                    "without shared memory, such as a network share; keep Stem's database "
                    "on a local disk"
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            # Truncate the WAL file back to 64 MiB after a checkpoint, so a burst of work
            # does not leave a large file behind for good.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            migrate(conn, path)
            return
        except sqlite3.OperationalError as exc:
            busy = (getattr(exc, "sqlite_errorname", "") or "").startswith("SQLITE_BUSY")
            if not busy or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)  # on the opening worker thread, never the event loop
            pause = min(pause * 2, 0.05)


def _identity(path: str) -> tuple[int, int] | None:
    """The file ``path`` names now (device, inode); None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _open(path: str, busy_timeout: float) -> tuple[sqlite3.Connection, tuple[int, int] | None]:
    conn = open_database(path, busy_timeout)
    try:
        return conn, _identity(path)
    except BaseException:
        conn.close()
        raise


class Database:
    """One open connection to one file, used by every store of that file in one event loop."""

    def __init__(
        self,
        options: SqliteOptions,
        conn: aiosqlite.Connection,
        raw: sqlite3.Connection,
        identity: tuple[int, int] | None = None,
    ) -> None:
        self.path = options.path
        self.busy_timeout = options.busy_timeout
        self.signals: Signals = signals_for(options.path)
        self._conn = conn
        self._raw = raw
        # The file opened, and when to check next that the path still names it (both
        # used only on the connection's thread); the error once it does not.
        self._identity = identity
        self._next_check = time.monotonic() + FILE_CHECK_INTERVAL
        self._lost: str | None = None
        # aiosqlite's way to run a function on its thread; private, but stable since 0.1
        # and the only way to run a whole transaction in one hop (see the module docstring).
        self._submit = cast(Callable[..., Any], conn._execute)

    @classmethod
    async def open(cls, options: SqliteOptions) -> Database:
        # Opening can fail (bad path, not a database, newer schema), so it runs on a worker
        # thread of its own and aiosqlite only receives a connection that works: a connector
        # that raises leaves aiosqlite's thread to finish after our event loop may be gone.
        raw, identity = await asyncio.to_thread(_open, options.path, options.busy_timeout)
        conn = aiosqlite.Connection(lambda: raw, 64)
        _make_daemon(conn)
        try:
            await conn
        except BaseException:
            raw.close()
            raise
        return cls(options, conn, raw, identity)

    def _check_file(self) -> None:
        """Raise StoreLostError if the path no longer names the file this connection has open."""
        if self._lost is None:
            now = time.monotonic()
            if now < self._next_check or self._identity is None:
                return
            self._next_check = now + FILE_CHECK_INTERVAL
            try:
                current = _identity(self.path)
            except OSError:
                return  # cannot tell (a directory made unreadable): carry on
            if current == self._identity:
                return
            self._lost = (
                f"the SQLite database {self.path} was "
                + ("deleted" if current is None else "replaced by another file")
                + " while this process had it open: what it writes now would reach no other "
                "process, and messages published to the file now at that path would never "
                "reach it. Stop every process that uses the database (workers stop by "
                "themselves), put the right file in place if it was a mistake, then start them "
                "again"
            )
        raise StoreLostError(self._lost)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], begin: str | None) -> T:
        self._check_file()
        raw = self._raw
        try:
            if begin is None:
                return fn(raw, *args)
            raw.execute(begin)
            result = fn(raw, *args)
            raw.execute("COMMIT")
            return result
        except BaseException as exc:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise translate(exc, self.path, self.busy_timeout) from exc
            raise

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` on the connection's thread (one statement, or reads
        that need no common snapshot)."""
        return cast(T, await self._submit(self._call, fn, args, None))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` in one read transaction: its reads see one snapshot."""
        return cast(T, await self._submit(self._call, fn, args, "BEGIN"))

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` in one ``BEGIN IMMEDIATE`` transaction, then commit.

        IMMEDIATE takes the write lock first (waiting up to the busy timeout): a deferred
        transaction that reads and then writes can fail at once in WAL mode if another
        process wrote in between, without waiting.
        """
        return cast(T, await self._submit(self._call, fn, args, "BEGIN IMMEDIATE"))

    async def close(self) -> None:
        await self._conn.close()


def _make_daemon(conn: aiosqlite.Connection) -> None:
    """Let the program exit even if nobody closed the store.

    aiosqlite's thread is not a daemon (since 0.22), so an app that enqueues and ends
    without ``aclose()`` would hang at exit. SQLite is built for programs that end
    abruptly: each of our transactions commits before its function returns, and one cut
    short is rolled back from the journal on the next open. Done the way other aiosqlite
    pools do it (sqlspec, hassette); older aiosqlite, where the connection is itself the
    thread, is handled too.
    """
    thread = conn if isinstance(conn, threading.Thread) else getattr(conn, "_thread", None)
    if isinstance(thread, threading.Thread) and not thread.is_alive():
        thread.daemon = True


class _Shared:
    def __init__(self, opening: asyncio.Task[Database]) -> None:
        self.opening = opening
        self.db: Database | None = None
        self.refs = 0


_pool: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Shared]] = (
    weakref.WeakKeyDictionary()
)
_pool_lock = threading.Lock()


async def _acquire(options: SqliteOptions, share: bool) -> tuple[Database, _Shared]:
    loop = asyncio.get_running_loop()
    with _pool_lock:
        per_loop = _pool.setdefault(loop, {}) if share else {}
        shared = per_loop.get(options.path)
        if shared is None:
            shared = per_loop[options.path] = _Shared(loop.create_task(Database.open(options)))
        shared.refs += 1
    try:
        shared.db = await asyncio.shield(shared.opening)
        return shared.db, shared
    except BaseException:
        with _pool_lock:
            shared.refs -= 1
            orphan = shared.refs == 0
            if orphan and per_loop.get(options.path) is shared:
                del per_loop[options.path]  # the next caller opens afresh
        if orphan:  # failed, or every caller was cancelled while it was opening
            shared.opening.add_done_callback(_close_orphan)
        raise


_closing: set[asyncio.Task[None]] = set()


def _close_orphan(opening: asyncio.Task[Database]) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return  # the exception was raised to the caller; nothing to close
    task = asyncio.ensure_future(opening.result().close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _release(shared: _Shared, path: str, loop: asyncio.AbstractEventLoop) -> None:
    with _pool_lock:
        shared.refs -= 1
        if shared.refs > 0:
            return
        per_loop = _pool.get(loop, {})
        if per_loop.get(path) is shared:
            del per_loop[path]
    if shared.db is not None:
        await shared.db.close()


class Client:
    """What each store holds: its options, and its share of a connection, taken on first use.

    With ``share=False`` the store gets a connection of its own, as a store in another
    process would (tests of concurrency between connections use it).
    """

    def __init__(self, options: SqliteOptions, *, share: bool = True) -> None:
        self.options = options
        self.share = share
        self._db: Database | None = None
        self._shared: _Shared | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    async def db(self) -> Database:
        """The connection for the running event loop, opened (and migrated) on first use."""
        loop = asyncio.get_running_loop()
        if self._db is not None and self._loop is loop:
            return self._db
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            if self._db is None or self._loop is not loop:
                await self.aclose()
                self._db, self._shared = await _acquire(self.options, self.share)
                self._loop = loop
            return self._db

    async def aclose(self) -> None:
        shared, loop = self._shared, self._loop
        self._db = self._shared = self._loop = None
        if shared is not None and loop is not None:
            await _release(shared, self.options.path, loop)


class FileStore:
    """What every SQLite store has: its file and its (shared or own) connection."""

    _client: Client

    @property
    def path(self) -> str:
        """The database file."""
        return self._client.options.path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    async def _db(self) -> Database:
        return await self._client.db()
