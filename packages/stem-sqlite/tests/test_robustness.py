"""The SQLite adapter under a hostile world: rows written by other programs, a database
file deleted or replaced under running workers, short leases and unstorable results."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stem import FakeClock, Stem, StoreLostError, TaskState
from stem.contracts import Message
from stem_sqlite import SqliteBroker, SqliteResultBackend, _connection
from stem_sqlite._broker import row_problems

pytestmark = pytest.mark.sqlite


@pytest.fixture
async def app(db_path: Path) -> AsyncIterator[Stem]:
    """An app on a real file and the real clock, as a deployment runs it."""
    stem = Stem(SqliteBroker(db_path, poll_interval=0.05), SqliteResultBackend(db_path))
    yield stem
    await stem.aclose()


def insert_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows straight into the queue table, as another program would."""
    conn = sqlite3.connect(path)
    try:
        for row in rows:
            values = {"queue": "q", "priority": 0, "eta": None, "due": 0.0, "state": 0, **row}
            columns = ", ".join(values)
            marks = ", ".join(
                f"CAST(:{k} AS TEXT)" if isinstance(v, bytes) and k == "id" else f":{k}"
                for k, v in values.items()
            )
            conn.execute(f"INSERT INTO stem_messages ({columns}) VALUES ({marks})", values)
        conn.commit()
    finally:
        conn.close()


# -- rows written by another program (issue 7, item 13) ----------------------------------------


async def test_reserve_dead_letters_malformed_rows_and_serves_the_rest(
    broker: SqliteBroker, db_path: Path
) -> None:
    await broker.publish(Message(id="good-1", queue="q", body=b"one"))
    insert_rows(
        db_path,
        [
            {"id": "text-body", "body": "a text body"},
            {"id": "int-body", "body": 12},
            {"id": "text-priority", "body": b"x", "priority": "high"},
            {"id": "text-eta", "body": b"x", "eta": "tomorrow"},
            {"id": "text-due", "body": b"x", "due": "soon"},
            {"id": "delayed-text-due", "body": b"x", "due": "later", "state": 1},
            # Leased without a readable end: it would never be handed out again.
            {"id": "leased-forever", "body": b"x", "state": 2, "lease_until": "never"},
            {"id": b"\xffbad-utf8", "body": b"x"},
        ],
    )
    await broker.publish(Message(id="good-2", queue="q", body=b"two", priority=5))
    served = await broker.reserve(["q"], 20, 30)
    assert [d.message.id for d in served] == ["good-2", "leased-forever", "good-1"]
    for _ in range(2):  # and on every poll after: nothing raises
        assert await broker.reserve(["q"], 20, 30) == []
    assert await broker.next_due(["q"]) is not None  # the good ones' leases; no text
    dead = {d.message.id: d for d in await broker.list_dead_letters("q")}
    assert {d.reason for d in dead.values()} == {"malformed"}
    assert set(dead) == {
        "text-body",
        "int-body",
        "text-priority",
        "text-eta",
        "text-due",
        "delayed-text-due",
        "\ufffdbad-utf8",
    }
    for mid, column in [
        ("text-body", "body"),
        ("int-body", "body"),
        ("text-priority", "priority"),
        ("text-eta", "eta"),
        ("text-due", "due"),
        ("delayed-text-due", "due"),
        ("\ufffdbad-utf8", "id"),
    ]:
        assert f"{column} is " in (dead[mid].error or ""), (mid, dead[mid].error)
    # The body is kept, as bytes, so a fixed message can be replayed.
    assert dead["text-body"].message.body == b"a text body"
    assert dead["text-priority"].message.priority == 0
    assert "'high'" in (dead["text-priority"].error or "")
    stats = await broker.queue_stats("q")
    assert (stats.pending, stats.inflight, stats.dead) == (0, 3, 7)


def test_a_null_priority_or_id_is_named() -> None:
    # The schema's NOT NULL keeps them out today; the check does not rely on it.
    problems = row_problems((1, None, b"x", None, None, 0.0, 1))
    assert problems is not None and "id is NULL" in problems and "priority is NULL" in problems
    assert row_problems((1, "ok", b"x", 0, None, 0.0, 1)) is None


async def test_a_worker_serves_innocent_messages_next_to_malformed_rows(
    app: Stem, db_path: Path
) -> None:
    @app.task(name="t")
    async def t(n: int) -> int:
        return n

    refs = [await t.enqueue(n) for n in range(3)]
    insert_rows(db_path, [{"id": "junk", "queue": "default", "body": "{}", "priority": "9"}])
    insert_rows(db_path, [{"id": "junk2", "queue": "default", "body": 5, "priority": "x"}])
    async with app.worker(max_deliveries=1):
        for n, ref in enumerate(refs):
            result = await app.wait_for_task(ref, timeout=30)
            assert result.value == n and result.status is not None
            assert result.status.attempt == 0
    letters = await app.broker.list_dead_letters("default")
    assert {(d.message.id, d.reason) for d in letters} == {
        ("junk", "malformed"),
        ("junk2", "malformed"),
    }


# -- a deleted or replaced database file (issue 7, item 12) ------------------------------------


@pytest.fixture
def check_file_often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_connection, "FILE_CHECK_INTERVAL", 0.0)


def delete_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with_suffix = Path(f"{path}{suffix}")
        if with_suffix.exists():
            with_suffix.unlink()


@pytest.mark.usefixtures("check_file_often")
async def test_a_deleted_database_is_an_error_naming_the_file(
    broker: SqliteBroker, db_path: Path
) -> None:
    await broker.publish(Message(id="m", queue="q", body=b"x"))
    delete_database(db_path)
    with pytest.raises(StoreLostError, match="deleted") as caught:
        await broker.reserve(["q"], 1, 30)
    assert str(db_path) in str(caught.value) and "start" in str(caught.value)
    with pytest.raises(StoreLostError):  # and stays one: nothing goes to the lost file
        await broker.publish(Message(id="m2", queue="q", body=b"x"))


@pytest.mark.usefixtures("check_file_often")
async def test_a_replaced_database_is_an_error_for_every_store_of_the_file(
    db_path: Path, tmp_path: Path, clock: FakeClock
) -> None:
    broker = SqliteBroker(db_path, clock=clock)
    backend = SqliteResultBackend(db_path, clock=clock)
    try:
        await broker.publish(Message(id="m", queue="q", body=b"x"))
        other = SqliteBroker(tmp_path / "other.db", clock=clock)
        await other.publish(Message(id="elsewhere", queue="q", body=b"x"))
        await other.aclose()
        os.replace(tmp_path / "other.db", db_path)  # a restore from a backup, say
        with pytest.raises(StoreLostError, match="replaced"):
            await backend.get_status("m")
        with pytest.raises(StoreLostError, match="replaced"):
            await broker.reserve(["q"], 1, 30)
    finally:
        await broker.aclose()
        await backend.aclose()


@pytest.mark.usefixtures("check_file_often")
async def test_a_worker_stops_when_its_database_is_deleted(
    app: Stem, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="t")
    async def t() -> str:
        return "ok"

    caplog.set_level(logging.INFO, "stem.worker")
    worker = app.worker()
    running = asyncio.ensure_future(worker.run())
    assert (await app.wait_for_task(await t.enqueue(), timeout=30)).value == "ok"
    delete_database(db_path)
    # A producer in another process creates a new file at the same path.
    producer = Stem(SqliteBroker(db_path, share_connection=False))
    await producer.enqueue("t")
    await producer.aclose()
    async with asyncio.timeout(30):
        with pytest.raises(StoreLostError, match=str(db_path)):
            await running
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "stops" in r.message]
    assert len(errors) == 1 and str(db_path) in errors[0].getMessage()


# -- the worker's loops on SQLite (issue 7, items 2 and 6) ------------------------------------


async def test_a_one_second_lease_on_a_three_second_task_runs_it_once(app: Stem) -> None:
    runs: dict[int, int] = {}

    @app.task(name="slow", visibility_timeout=1)
    async def slow(n: int) -> int:
        runs[n] = runs.get(n, 0) + 1
        await asyncio.sleep(3)
        return n

    refs = [await slow.enqueue(n) for n in range(2)]
    async with app.worker(), app.worker():  # a second worker would take a lapsed lease
        for n, ref in enumerate(refs):
            assert (await app.wait_for_task(ref, timeout=30)).value == n
    assert runs == {0: 1, 1: 1}
    assert await app.broker.list_dead_letters("default") == []


async def test_one_unstorable_result_fails_alone_on_sqlite(app: Stem) -> None:
    runs: dict[int, int] = {}

    @app.task(name="t")
    async def t(n: int) -> str:
        runs[n] = runs.get(n, 0) + 1
        return "\ud800" if n == 3 else f"ok {n}"

    async with app.worker(concurrency=20):
        refs = await app.enqueue_many([t.call(n) for n in range(20)])
        results = [await app.wait_for_task(ref, timeout=30) for ref in refs]
    assert runs == {n: 1 for n in range(20)}
    assert [r.state for r in results] == [
        TaskState.FAILED if n == 3 else TaskState.SUCCEEDED for n in range(20)
    ]
    (dead,) = await app.broker.list_dead_letters("default")
    assert (dead.message.id, dead.reason) == (refs[3], "unserializable-result")
