"""The database thread's group commits, the loop's small writes, and the synchronous setting."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from stem import AdapterError, ConfigurationError, FakeClock, Stem
from stem.contracts import Message, TaskState, TaskStatus
from stem_sqlite import SqliteBroker, SqliteLockStore, SqliteResultBackend
from stem_sqlite._connection import Database

pytestmark = pytest.mark.sqlite

Traced = Callable[[Database], AbstractContextManager[list[str]]]
Commits = Callable[[list[str]], int]


def queued(task_id: str) -> tuple[TaskStatus, float | None]:
    return TaskStatus(id=task_id, state=TaskState.QUEUED, task="t"), None


async def enqueue_one(broker: SqliteBroker, backend: SqliteResultBackend, task_id: str) -> None:
    message = Message(id=task_id, queue="q", body=b"x")
    assert await broker.enqueue([message], [queued(task_id)], backend) == [None]


_held: set[asyncio.Future[None]] = set()


async def hold_thread(db: Database) -> threading.Event:
    """Keep the database thread busy in a write until the returned event is set (and wait
    until it is): small writes meanwhile queue for the thread, behind the write's lock."""
    release, busy = threading.Event(), threading.Event()

    def block(conn: sqlite3.Connection) -> None:
        busy.set()
        release.wait(30)

    held = asyncio.ensure_future(db.write(block))
    _held.add(held)
    held.add_done_callback(_held.discard)
    assert await asyncio.to_thread(busy.wait, 30)
    return release


async def scratch_table(db: Database) -> None:
    await db.write(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))


def insert(k: int) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k) VALUES (?)", (k,))

    return run


def keys(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")]


# -- group commit ------------------------------------------------------------------------------


async def test_concurrent_enqueues_on_the_loop_commit_in_two_transactions(
    db_path: Path, traced: Traced, count_commits: Commits
) -> None:
    # The first at once (it cannot know others follow), the other nine together
    broker, backend = SqliteBroker(db_path), SqliteResultBackend(db_path)
    db = await broker._db()
    with traced(db) as statements:
        await asyncio.gather(*(enqueue_one(broker, backend, f"t{i}") for i in range(10)))
    assert count_commits(statements) == 2
    assert sum(s.startswith("SAVEPOINT") for s in statements) == 9
    assert (await broker.queue_stats("q")).pending == 10
    assert len(await backend.list_statuses(state=TaskState.QUEUED)) == 10
    await broker.aclose()
    await backend.aclose()


async def test_a_lone_producers_enqueues_commit_without_waiting_for_the_loop(
    db_path: Path,
) -> None:
    broker, backend = SqliteBroker(db_path), SqliteResultBackend(db_path)
    await enqueue_one(broker, backend, "warm")  # the connection opened

    async def three_in_a_row() -> None:
        for i in range(3):
            await enqueue_one(broker, backend, f"t{i}")

    # Driven by hand: it must finish at its first step, never suspended on the loop
    coro = three_in_a_row()
    with pytest.raises(StopIteration):
        coro.send(None)
    assert (await broker.queue_stats("q")).pending == 4
    await broker.aclose()
    await backend.aclose()


async def test_a_read_on_the_thread_does_not_hold_small_writes_back(db_path: Path) -> None:
    broker, backend = SqliteBroker(db_path), SqliteResultBackend(db_path)
    db = await broker._db()
    release, busy = threading.Event(), threading.Event()

    def block(conn: sqlite3.Connection) -> None:
        busy.set()
        release.wait(30)

    reading = asyncio.ensure_future(db.run(block))  # a listing, a checkpoint: no lock
    assert await asyncio.to_thread(busy.wait, 30)
    try:
        await asyncio.wait_for(enqueue_one(broker, backend, "t"), 10)
    finally:
        release.set()
        await reading
    assert (await broker.queue_stats("q")).pending == 1
    await broker.aclose()
    await backend.aclose()


async def test_writes_queued_behind_a_busy_thread_commit_in_one_transaction(
    db_path: Path, traced: Traced, count_commits: Commits
) -> None:
    broker, backend = SqliteBroker(db_path), SqliteResultBackend(db_path)
    db = await broker._db()
    release = await hold_thread(db)
    with traced(db) as statements:
        # 40 producers: more than the loop commits by itself, so all go to the thread
        producers = [
            asyncio.ensure_future(enqueue_one(broker, backend, f"t{i}")) for i in range(40)
        ]
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*producers)
    assert count_commits(statements) == 2  # the held write's, then all 40 together
    assert (await broker.queue_stats("q")).pending == 40
    await broker.aclose()
    await backend.aclose()


async def test_one_callers_failure_in_a_group_leaves_the_others_committed(
    db_path: Path, traced: Traced, count_commits: Commits
) -> None:
    broker = SqliteBroker(db_path)
    db = await broker._db()
    await scratch_table(db)
    release = await hold_thread(db)
    with traced(db) as statements:
        writes = [asyncio.ensure_future(db.write(insert(k))) for k in (1, 1, 2)]
        await asyncio.sleep(0)
        release.set()
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert count_commits(statements) == 2  # the held write's, then the group's
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], AdapterError)
    assert isinstance(outcomes[1].__cause__, sqlite3.IntegrityError)
    assert keys(db_path) == [1, 2]
    await broker.aclose()


async def test_a_group_transaction_lost_midway_runs_each_caller_alone(db_path: Path) -> None:
    broker = SqliteBroker(db_path)
    db = await broker._db()
    await scratch_table(db)

    def ends_the_transaction(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")  # as SQLite does by itself on a full disk

    release = await hold_thread(db)
    writes = [
        asyncio.ensure_future(db.write(fn)) for fn in (insert(1), ends_the_transaction, insert(2))
    ]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], AdapterError)
    assert keys(db_path) == [1, 2]
    await broker.aclose()


# -- small writes on the loop ------------------------------------------------------------------


async def test_a_small_write_waits_for_another_connections_lock_on_the_thread(
    db_path: Path,
) -> None:
    broker, backend = SqliteBroker(db_path), SqliteResultBackend(db_path)
    db = await broker._db()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing
    producer = asyncio.ensure_future(enqueue_one(broker, backend, "t"))
    for _ in range(10_000):  # the loop's connection found the lock taken: handed to the thread
        if db._in_flight:
            break
        await asyncio.sleep(0)
    assert db._in_flight and not producer.done()
    other.execute("ROLLBACK")
    await asyncio.wait_for(producer, 30)
    other.close()
    assert (await broker.queue_stats("q")).pending == 1
    await broker.aclose()
    await backend.aclose()


async def test_under_synchronous_full_small_writes_commit_on_the_thread(
    db_path: Path, traced: Traced, count_commits: Commits
) -> None:
    broker = SqliteBroker(db_path, synchronous="full")
    backend = SqliteResultBackend(db_path, synchronous="full")
    db = await broker._db()
    assert db._direct is not None
    direct: list[str] = []
    with traced(db) as statements:
        db._direct.set_trace_callback(direct.append)  # only the loop's connection
        await enqueue_one(broker, backend, "t")
    assert count_commits(statements) == 1 and count_commits(direct) == 0
    await broker.aclose()
    await backend.aclose()


# -- synchronous ---------------------------------------------------------------------------------


def synchronous_of(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


@pytest.mark.parametrize(
    ("query", "level"), [("", 1), ("?synchronous=normal", 1), ("?synchronous=FULL", 2)]
)
async def test_the_url_sets_synchronous(db_path: Path, query: str, level: int) -> None:
    app = Stem.from_url(f"sqlite:///{db_path}{query}")
    db = await app.broker._client.db()  # type: ignore[attr-defined]
    await app.enqueue("t")  # a transaction applies the setting
    assert await db.run(synchronous_of) == level
    await app.aclose()


async def test_full_wins_among_the_stores_sharing_a_connection(db_path: Path) -> None:
    broker = SqliteBroker(db_path)
    db = await broker._db()
    locks = SqliteLockStore(db_path, synchronous="full")
    assert await locks._db() is db
    await broker.publish(Message(id="m", queue="q", body=b""))
    assert await db.run(synchronous_of) == 2
    await broker.aclose()
    await locks.aclose()


@pytest.mark.parametrize("value", ["off", "extra", "", 2])
def test_a_bad_synchronous_is_a_configuration_error(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"synchronous must be 'normal'.*or 'full'"):
        SqliteBroker(tmp_path / "x.db", synchronous=value)  # type: ignore[arg-type]


async def test_statuses_stored_on_either_connection_read_back(db_path: Path) -> None:
    # A status written on the loop (small) and one written on the thread (a large batch)
    backend = SqliteResultBackend(db_path, clock=FakeClock())
    await backend.set_status(TaskStatus(id="small", state=TaskState.STARTED, task="t"))
    await backend.set_statuses(
        [(TaskStatus(id=f"b{i}", state=TaskState.STARTED, task="t"), None) for i in range(20)]
    )
    assert (await backend.get_status("small")) is not None
    assert len(await backend.get_statuses([f"b{i}" for i in range(20)])) == 20
    await backend.aclose()
