"""Connections: opened lazily, shared per (file, event loop); a database thread that
group-commits, and short work done on the event loop where it cannot block.

Every store built for one file in one event loop shares one :class:`Database`, counted
by reference and closed by the last ``aclose``. Event loops are kept apart because
pytest and :class:`stem.Stem`'s synchronous portal each run their own.

A :class:`Database` holds two connections to the file:

- **The database thread's.** A transaction is one Python function run there, start to
  commit (:meth:`Database.write`, :meth:`Database.read`, :meth:`Database.run`): it never
  interleaves with another coroutine's statements, and SQLite's write lock is never held
  across an ``await``. The loop keeps working meanwhile. Writes that queue up while a
  transaction runs are **group-committed**: the thread takes every write waiting, runs
  each caller's function under a ``SAVEPOINT`` of one ``BEGIN IMMEDIATE`` transaction and
  commits once, so a burst of enqueues, or a worker's reserve and settle, pay one commit.
  A caller whose function fails is rolled back to its savepoint and gets its own
  exception; the others commit. If the whole transaction is lost (SQLite rolls back by
  itself on a full disk, or the commit fails), each caller is run again alone, so each
  still gets its own outcome: transaction functions only run SQL on the connection they
  are given, so running one again is safe.
- **The loop's**, opened with a busy timeout of 0, for work short enough to do without a
  thread hop (one costs tens of microseconds, more than the work): point reads
  (:meth:`Database.peek`: a status, a version counter) and, with ``synchronous=normal``,
  small writes (:meth:`Database.write_small`: one enqueue). Small writes made in one turn
  of the loop are committed together at its end. They run on the loop only while the
  database thread is idle and the write lock is free (``BEGIN IMMEDIATE`` fails at once
  otherwise), else they join the thread's next group. Under ``synchronous=normal`` a
  commit in WAL mode writes to the operating system's cache and never waits for the
  disk; the loop's connection never checkpoints (the thread does, every
  :data:`CHECKPOINT_EVERY` commits made on the loop), so it cannot stall on a flush of the
  WAL either. Under ``synchronous=full`` every commit waits for an fsync, so writes always
  go to the thread.

The rejected alternative, ``await``-ing ``BEGIN``, each statement and ``COMMIT`` under an
asyncio lock, costs three to five thread hops per transaction and holds the file's write
lock while other coroutines run.

A connection keeps the file it opened even if the path is deleted or replaced, while
other processes open the new file: the two would never meet again. So the database
remembers its file's identity (device and inode) and, at most every
:data:`FILE_CHECK_INTERVAL` seconds, before a transaction, checks that the path still
names that file; if not, that transaction and every later one raise
:class:`stem.StoreLostError`.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, cast

from stem import AdapterError, StoreLostError

from ._errors import translate, translate_os_error
from ._schema import check_version, migrate, read_version
from ._url import DEFAULT_SYNCHRONOUS, SqliteOptions
from ._wake import Signals, signals_for

__all__ = ["CHECKPOINT_EVERY", "FILE_CHECK_INTERVAL", "Client", "Database", "open_database"]

T = TypeVar("T")

#: Longest time (monotonic seconds) between two checks that the path still names the
#: file a connection opened: one stat() per database per interval, however busy.
FILE_CHECK_INTERVAL = 1.0
#: Commits made on the loop's connection between two checkpoints run by the thread:
#: about SQLite's own automatic checkpoint of 1,000 pages, at a few pages per commit.
CHECKPOINT_EVERY = 200
#: Most callers' functions run in one group transaction (it holds the write lock
#: while it runs: other processes wait for it).
MAX_GROUP = 64
#: Most small writes committed on the loop in one transaction (the loop does nothing
#: else meanwhile); a larger turn's writes go to the thread.
MAX_LOOP_GROUP = 16

_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


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
        conn = _connect(path, busy_timeout)
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


def _connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    # isolation_level=None: autocommit, we write BEGIN IMMEDIATE ourselves.
    # check_same_thread=False: opened on one thread, then used by another; never by two
    # threads at once.
    return sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )


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
            # WAL: readers never block the writer and the writer never blocks readers.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise AdapterError(
                    f"cannot switch the SQLite database {path} to WAL mode "
                    f"(it is in {mode and mode[0]!r} mode): it may be on a file system "
                    "without shared memory, such as a network share; keep Stem's database "
                    "on a local disk"
                )
            _set_synchronous(conn, DEFAULT_SYNCHRONOUS)
            # Truncate the WAL file back to 64 MiB after a checkpoint, so a burst of work
            # does not leave a large file behind for good.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            migrate(conn, path)
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)  # on the opening worker thread, never the event loop
            pause = min(pause * 2, 0.05)


def _set_synchronous(conn: sqlite3.Connection, level: str) -> None:
    # NORMAL in WAL mode: a commit survives a crash of the program, not of the machine;
    # FULL: it also survives a power loss (an fsync of the WAL per commit).
    conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[level]}")


def _is_busy(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return isinstance(exc, sqlite3.OperationalError) and name.startswith(
        ("SQLITE_BUSY", "SQLITE_LOCKED")
    )


#: Shortest and longest pause between two tries of BEGIN IMMEDIATE while another
#: connection writes (see _begin_immediate).
_FIRST_PAUSE, _LONGEST_PAUSE = 50e-6, 0.001


def _begin_immediate(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """``BEGIN IMMEDIATE``, tried again every 50 us to 1 ms while another connection
    holds the write lock, for up to ``busy_timeout`` seconds.

    SQLite's own busy handler sleeps 1, 2, 5, 10, ... ms between tries, so a waiter
    sleeps through several of another process's short transactions: two workers on
    one file drained barely faster than one. Its timeout is off for this statement.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        pause, deadline = _FIRST_PAUSE, None
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + busy_timeout
                if not _is_busy(exc) or now >= deadline:
                    raise
            time.sleep(pause)  # on the database thread, never the event loop
            pause = min(pause * 2, _LONGEST_PAUSE)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")


def _identity(path: str) -> tuple[int, int] | None:
    """The file ``path`` names now (device, inode); None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


_Opened = tuple[sqlite3.Connection, sqlite3.Connection, tuple[int, int] | None]


def _open(path: str, busy_timeout: float) -> _Opened:
    conn = open_database(path, busy_timeout)
    try:
        # The loop's connection: never waits for a lock (busy timeout 0) and never
        # checkpoints (the thread's connection does).
        direct = _connect(path, 0)
        try:
            direct.execute("PRAGMA wal_autocheckpoint = 0")
            _set_synchronous(direct, DEFAULT_SYNCHRONOUS)
            return conn, direct, _identity(path)
        except BaseException:
            direct.close()
            raise
    except sqlite3.Error as exc:
        conn.close()
        raise translate(exc, path, busy_timeout) from exc
    except BaseException:
        conn.close()
        raise


class _Job:
    """One caller's function, waiting for or run by the database thread."""

    __slots__ = ("args", "error", "fn", "future", "kind", "outcome")

    def __init__(
        self, kind: int, fn: Callable[..., Any], args: tuple[Any, ...], future: asyncio.Future[Any]
    ) -> None:
        self.kind = kind
        self.fn = fn
        self.args = args
        self.future = future
        self.outcome: Any = None
        self.error: BaseException | None = None


# Job kinds: a function run with no transaction, in a read transaction, in a write one.
_RUN, _READ, _WRITE = 0, 1, 2
_BEGIN = {_RUN: None, _READ: "BEGIN", _WRITE: "BEGIN IMMEDIATE"}
_STOP = None


class _TransactionLost(Exception):
    """SQLite rolled a group transaction back by itself: every caller runs again alone."""


class Database:
    """The open connections to one file, used by every store of that file in one event loop.

    Built by :meth:`open`; used only from that loop.
    """

    def __init__(
        self,
        options: SqliteOptions,
        raw: sqlite3.Connection,
        direct: sqlite3.Connection,
        identity: tuple[int, int] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.path = options.path
        self.busy_timeout = options.busy_timeout
        self.signals: Signals = signals_for(options.path)
        self._loop = loop
        self._raw = raw  # the database thread's
        self._direct: sqlite3.Connection | None = direct  # the loop's; None once closed
        # synchronous wanted by the stores sharing this database (the strongest wins), and
        # what each connection was last set to (each is touched only by its own thread).
        self.synchronous = DEFAULT_SYNCHRONOUS
        self._raw_synchronous = DEFAULT_SYNCHRONOUS
        self._direct_synchronous = DEFAULT_SYNCHRONOUS
        # The file opened, and when to check next that the path still names it; the
        # error once it does not. Read and written by both threads: each value is set in
        # one assignment, and at worst both threads stat() once.
        self._identity = identity
        self._next_check = time.monotonic() + FILE_CHECK_INTERVAL
        self._lost: str | None = None
        # Loop side: jobs handed to the thread and not yet delivered back; small writes
        # waiting for the end of this loop turn; commits on the loop since a checkpoint.
        self._in_flight = 0
        self._turn: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        # The task that committed a small write on the loop in this loop turn (see write_small).
        self._committer: asyncio.Task[Any] | None = None
        self._loop_commits = 0
        self._closed = False
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name=f"stem-sqlite {options.path}", daemon=True
        )
        # A daemon: a program that enqueues and ends without aclose() must not hang at exit.
        # SQLite is built for programs that end abruptly: each transaction commits before
        # its caller hears back, and one cut short is rolled back on the next open.
        self._thread.start()

    @classmethod
    async def open(cls, options: SqliteOptions) -> Database:
        # Opening can fail (bad path, not a database, newer schema), so it runs on a worker
        # thread of its own, and the database thread starts only with connections that work.
        raw, direct, identity = await asyncio.to_thread(_open, options.path, options.busy_timeout)
        return cls(options, raw, direct, identity, asyncio.get_running_loop())

    def want_synchronous(self, level: str) -> None:
        """Use at least ``level`` from now on (``full`` is stronger than ``normal``)."""
        if level == "full":
            self.synchronous = "full"

    # -- the file ---------------------------------------------------------------------------

    def _check_file(self) -> None:
        """Raise StoreLostError if the path no longer names the file this database opened."""
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

    def _failure(self, exc: BaseException) -> BaseException:
        """The exception a caller gets for ``exc`` (a fresh one each time where it can be)."""
        if isinstance(exc, StoreLostError):
            return StoreLostError(str(exc))
        if isinstance(exc, sqlite3.Error):
            error = translate(exc, self.path, self.busy_timeout)
            error.__cause__ = exc
            return error
        return exc

    # -- the database thread ------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` on the database thread, outside any transaction (one
        statement, or reads that need no common snapshot)."""
        return cast(T, await self._submit(_RUN, fn, args))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` in one read transaction: its reads see one snapshot."""
        return cast(T, await self._submit(_READ, fn, args))

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` in a ``BEGIN IMMEDIATE`` transaction, then commit,
        on the database thread; possibly in one transaction with other callers' writes.

        IMMEDIATE takes the write lock first (waiting up to the busy timeout): a deferred
        transaction that reads and then writes can fail at once in WAL mode if another
        process wrote in between, without waiting. ``fn`` must do nothing but SQL on the
        connection it is given: it may be run a second time (see the module docstring).
        """
        return cast(T, await self._submit(_WRITE, fn, args))

    def _submit(
        self, kind: int, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        if self._closed:
            raise AdapterError(f"the SQLite database {self.path} was closed; open a new store")
        future = self._loop.create_future()
        if kind == _WRITE:
            # Only writes keep small writes off the loop (their lock would make the loop's
            # BEGIN fail); a read or a PASSIVE checkpoint on the thread takes no lock.
            self._in_flight += 1
        self._jobs.put(_Job(kind, fn, args, future))
        return future

    def _serve(self) -> None:
        """The database thread: take every job waiting, run them in order (consecutive
        writes as one group), hand each group's outcomes back to the loop in one call."""
        jobs = self._jobs
        while True:
            first = jobs.get()
            if first is _STOP:
                break
            batch = [first]
            stop = False
            while len(batch) < MAX_GROUP:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                batch.append(job)
            start = 0
            while start < len(batch):
                end = start + 1
                if batch[start].kind == _WRITE:
                    while end < len(batch) and batch[end].kind == _WRITE:
                        end += 1
                group = [job for job in batch[start:end] if not job.future.cancelled()]
                if len(group) > 1:
                    self._write_group(group)
                elif group:
                    self._alone(self._raw, group[0])
                self._hand_back(batch[start:end])
                start = end
            if stop:
                break
        self._raw.close()

    def _hand_back(self, jobs: list[_Job]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, jobs)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _deliver(self, jobs: list[_Job]) -> None:
        self._in_flight -= sum(job.kind == _WRITE for job in jobs)
        _settle(jobs)  # a future already done was cancelled by its caller

    def _prepare_raw(self) -> None:
        self._check_file()
        if self._raw_synchronous != self.synchronous:
            _set_synchronous(self._raw, self.synchronous)
            self._raw_synchronous = self.synchronous

    def _alone(self, conn: sqlite3.Connection, job: _Job) -> None:
        """Run one job in a transaction of its own (or none, for _RUN); record its outcome."""
        job.outcome = job.error = None
        begin = _BEGIN[job.kind]
        try:
            self._prepare_raw()
            if begin is None:
                job.outcome = job.fn(conn, *job.args)
                return
            if begin == "BEGIN IMMEDIATE":
                _begin_immediate(conn, self.busy_timeout)
            else:
                conn.execute(begin)
            job.outcome = job.fn(conn, *job.args)
            conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            job.error = self._failure(exc)

    def _write_group(self, jobs: list[_Job]) -> None:
        """Several callers' writes in one transaction, each under a savepoint of its own."""
        conn = self._raw
        try:
            self._prepare_raw()
            _begin_immediate(conn, self.busy_timeout)
            _run_savepoints(conn, jobs, self._failure)
            conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            if isinstance(exc, StoreLostError) or _is_busy(exc):
                # Not one caller's doing, and the same for each alone: say so to all.
                for job in jobs:
                    job.outcome, job.error = None, self._failure(exc)
                return
            # The group's transaction was lost (a failed commit, a full disk): each caller
            # again in a transaction of its own, so each gets its own outcome.
            for job in jobs:
                self._alone(conn, job)

    # -- the loop's connection ----------------------------------------------------------------

    async def peek(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)``, a short read (an indexed lookup or two), on the
        event loop; on the database thread if the file is busy in a way a reader must wait for.
        """
        direct = self._direct
        if direct is None:
            return await self.run(fn, *args)
        self._check_file()
        try:
            return fn(direct, *args)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):  # a WAL reset or recovery in progress: rare, and brief
                raise self._failure(exc) from exc
        return await self.run(fn, *args)

    async def write_small(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`write` for a small write (one enqueue, say): committed on the event loop
        when that cannot block, with the other small writes of this loop turn.

        Under ``synchronous=full`` (an fsync per commit), or while the database thread has
        work, it goes to the thread, into the next group commit.
        """
        if self._direct is None or self.synchronous != "normal" or self._in_flight:
            return await self.write(fn, *args)
        future = self._loop.create_future()
        task = asyncio.current_task()
        if not self._turn and self._committer in (None, task):
            # Nobody else has written in this loop turn (a lone producer, one call after
            # the other): commit now, without the two loop turns of waiting for the turn
            # to end and for the future's callback. A second task writing in the same
            # turn (a burst of concurrent enqueues) joins the turn's group commit instead.
            if self._committer is None:
                self._loop.call_soon(self._forget_committer)
            self._committer = task
            job = _Job(_WRITE, fn, args, future)
            if not self._commit_on_loop(self._direct, [job]):
                _chain(self._submit(_WRITE, fn, args), future)
            return cast(T, await future)  # done already, unless it went to the thread
        if not self._turn:
            self._loop.call_soon(self._end_turn)
        self._turn.append((fn, args, future))
        return cast(T, await future)

    def _forget_committer(self) -> None:
        self._committer = None

    def _end_turn(self) -> None:
        """Commit this loop turn's small writes: on the loop if the lock is free, else on the thread."""
        turn, self._turn = self._turn, []
        jobs = [
            _Job(_WRITE, fn, args, future) for fn, args, future in turn if not future.cancelled()
        ]
        if not jobs:
            return
        if (
            self._direct is None
            or self._in_flight
            or len(jobs) > MAX_LOOP_GROUP
            or not self._commit_on_loop(self._direct, jobs)
        ):
            for job in jobs:
                _chain(self._submit(_WRITE, job.fn, job.args), job.future)

    def _commit_on_loop(self, conn: sqlite3.Connection, jobs: list[_Job]) -> bool:
        """Run ``jobs`` in one transaction on the loop's connection and settle their futures;
        False (nothing done) if another connection holds the write lock."""
        try:
            self._check_file()
            if self._direct_synchronous != self.synchronous:
                _set_synchronous(conn, self.synchronous)
                self._direct_synchronous = self.synchronous
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            if _is_busy(exc):
                return False  # another connection is writing: the thread waits for it
            for job in jobs:
                job.error = self._failure(exc)
            _settle(jobs)
            return True
        try:
            if len(jobs) == 1:
                job = jobs[0]
                try:
                    job.outcome = job.fn(conn, *job.args)
                except BaseException as exc:
                    _rollback(conn)
                    job.error = self._failure(exc)
                    _settle(jobs)
                    return True
            else:
                _run_savepoints(conn, jobs, self._failure)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            # The transaction was lost: the thread runs each caller again, alone if need
            # be, and gives each its own outcome.
            for job in jobs:
                _chain(self._submit(_WRITE, job.fn, job.args), job.future)
            return True
        _settle(jobs)
        self._loop_commits += 1
        if self._loop_commits >= CHECKPOINT_EVERY:
            self._loop_commits = 0
            _chain(self._submit(_RUN, _checkpoint, ()), None)
        return True

    # -- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Run the jobs handed to the thread, then close both connections.

        May be called from another event loop than the one this database served (that
        one may be closed already): nothing here waits on it.
        """
        if self._closed:
            return
        direct, self._direct = self._direct, None
        if self._turn:
            self._end_turn()  # to the thread, now that the loop's connection is gone
        self._closed = True
        self._jobs.put(_STOP)  # after every job handed over: the thread runs those first
        await asyncio.to_thread(self._thread.join)
        if direct is not None:
            direct.close()


def _run_savepoints(
    conn: sqlite3.Connection, jobs: list[_Job], failure: Callable[[BaseException], BaseException]
) -> None:
    """Run each job under a savepoint of the open transaction; a failing job is rolled back
    alone. Raises _TransactionLost if SQLite rolled the whole transaction back."""
    for job in jobs:
        job.outcome = job.error = None
        conn.execute("SAVEPOINT stem_caller")
        try:
            job.outcome = job.fn(conn, *job.args)
        except BaseException as exc:
            if not conn.in_transaction:
                raise _TransactionLost from exc
            conn.execute("ROLLBACK TO stem_caller")
            conn.execute("RELEASE stem_caller")
            job.error = failure(exc)
            continue
        conn.execute("RELEASE stem_caller")


def _settle(jobs: list[_Job]) -> None:
    for job in jobs:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.outcome)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is open; an error doing so (the disk is gone) must not hide the first."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any] | None) -> None:
    """Give ``source``'s outcome to ``target`` (None: only retrieve it, so it is not logged)."""

    def copy(done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            if target is not None:
                target.cancel()
            return
        error = done.exception()
        if target is None or target.done():
            return
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)


def _checkpoint(conn: sqlite3.Connection) -> None:
    # PASSIVE: copy what it can without waiting for readers or writers.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


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
        shared.db.want_synchronous(options.synchronous)
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
