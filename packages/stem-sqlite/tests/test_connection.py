"""Lazy opening, one shared connection per file and event loop, and closing."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stem.contracts import Message
from stem_sqlite import SqliteBroker, SqliteLockStore, SqliteResultBackend
from stem_sqlite._connection import _begin_immediate, _pool

pytestmark = pytest.mark.sqlite


def open_connections() -> int:
    return sum(len(per_loop) for per_loop in _pool.values())


def test_constructors_do_not_touch_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "stem.db"
    SqliteBroker(path)
    SqliteResultBackend(path)
    SqliteLockStore(path)
    assert not path.parent.exists()


async def test_stores_of_one_file_share_a_connection_until_the_last_closes(db_path: Path) -> None:
    before = open_connections()
    broker, backend = SqliteBroker(db_path), SqliteResultBackend(db_path)
    db = await broker._db()
    assert await backend._db() is db
    assert open_connections() == before + 1
    await broker.aclose()
    assert await backend.get_status("t") is None  # still open for the other store
    await backend.aclose()
    assert open_connections() == before


async def test_concurrent_first_uses_open_one_connection(db_path: Path) -> None:
    stores = [SqliteBroker(db_path) for _ in range(5)]
    dbs = await asyncio.gather(*(s._db() for s in stores), *(stores[0]._db() for _ in range(3)))
    assert len({id(d) for d in dbs}) == 1
    for s in stores:
        await s.aclose()
    assert open_connections() == 0


async def test_a_closed_store_opens_again_when_used(db_path: Path) -> None:
    broker = SqliteBroker(db_path)
    await broker.publish(Message(id="m", queue="q", body=b""))
    await broker.aclose()
    await broker.aclose()  # twice is harmless
    assert await broker.pending_count("q") == 1
    await broker.aclose()


def test_a_store_used_from_two_event_loops_gets_a_connection_in_each(db_path: Path) -> None:
    broker = SqliteBroker(db_path)

    async def publish(mid: str) -> None:
        await broker.publish(Message(id=mid, queue="q", body=b""))

    async def count_and_close() -> int:
        try:
            return await broker.pending_count("q")
        finally:
            await broker.aclose()

    asyncio.run(publish("a"))  # its loop ends with the connection still held...
    asyncio.run(publish("b"))  # ...so this loop releases it and opens its own
    assert asyncio.run(count_and_close()) == 2


NEVER_CLOSED = """
import asyncio, sys
from stem import Stem

app = Stem.from_url(sys.argv[1])

async def main():
    await app.broker.publish_many([])
    assert await app.broker.pending_count("default") == 0
    await app.backend.get_status("t")

asyncio.run(main())  # no app.aclose(): the program must still end
print("done")
"""


def test_a_program_that_never_closes_its_stores_still_exits(
    db_path: Path, run_python: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    result = run_python(NEVER_CLOSED, f"sqlite:///{db_path}", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"


def test_a_write_takes_the_lock_soon_after_another_connection_lets_go(tmp_path: Path) -> None:
    # SQLite's own busy handler would sleep 1, 2, 5, 10... ms between tries; this one
    # tries again within a millisecond, and restores the connection's busy timeout.
    path = tmp_path / "stem.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode = WAL")
    waiter = sqlite3.connect(path, isolation_level=None)
    waiter.execute("PRAGMA busy_timeout = 30000")
    holder.execute("BEGIN IMMEDIATE")
    tries: list[str] = []
    waiter.set_trace_callback(tries.append)
    released = threading.Timer(0.1, lambda: holder.execute("ROLLBACK"))
    released.start()
    _begin_immediate(waiter, 30.0)
    released.join()
    waiter.execute("ROLLBACK")
    waiter.set_trace_callback(None)
    # 100 ms of waiting: a try every millisecond or so (SQLite's own handler makes 8)
    assert tries.count("BEGIN IMMEDIATE") > 15
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    holder.close()
    waiter.close()


def test_a_write_gives_up_at_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "stem.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, isolation_level=None)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _begin_immediate(waiter, 0.1)
    assert time.monotonic() - started >= 0.1
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 100
    holder.execute("ROLLBACK")
    holder.close()
    waiter.close()
