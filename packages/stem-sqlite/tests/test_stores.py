"""Locks and revocations across connections, and the schedule store (no contract suite yet)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stem import FakeClock
from stem.contracts import RevokeEntry, ScheduleEntry
from stem_sqlite import SqliteLockStore, SqliteRevokeStore, SqliteScheduleStore

pytestmark = pytest.mark.sqlite


async def test_one_of_many_connections_gets_a_lock(db_path: Path, clock: FakeClock) -> None:
    stores = [SqliteLockStore(db_path, clock=clock, share_connection=False) for _ in range(5)]
    try:
        wins = await asyncio.gather(*(s.acquire("k", f"o{i}", 10) for i, s in enumerate(stores)))
        assert wins.count(True) == 1
        winner = f"o{wins.index(True)}"
        assert await stores[0].owner_of("k") == winner
        # When the lock expires, another connection may take it
        clock.advance(10)
        assert await stores[0].owner_of("k") is None
        assert await stores[1].acquire("k", "late", 10)
        assert not await stores[2].release("k", winner)
        assert await stores[3].release("k", "late")
    finally:
        for s in stores:
            await s.aclose()


async def test_expired_locks_are_swept_by_a_later_acquire(db_path: Path, clock: FakeClock) -> None:
    import sqlite3

    store = SqliteLockStore(db_path, clock=clock)
    try:
        for i in range(10):
            assert await store.acquire(f"unique:{i}", "o", 1)
        clock.advance(3600)
        assert await store.acquire("fresh", "o", 60)
    finally:
        await store.aclose()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT key FROM stem_locks").fetchall() == [("fresh",)]
    finally:
        conn.close()


async def test_revocations_survive_a_restart(db_path: Path, clock: FakeClock) -> None:
    first = SqliteRevokeStore(db_path, clock=clock)
    stored = await first.revoke(RevokeEntry(task_id="t1", terminate=True, revoked_at=clock.now()))
    await first.aclose()
    second = SqliteRevokeStore(db_path, clock=clock)
    try:
        assert await second.is_revoked("t1")
        assert await second.list() == [stored]
        assert stored.seq == 1
    finally:
        await second.aclose()


# -- schedule store ---------------------------------------------------------------------------


@pytest.fixture
async def schedules(db_path: Path, clock: FakeClock) -> AsyncIterator[SqliteScheduleStore]:
    subject = SqliteScheduleStore(db_path, clock=clock)
    yield subject
    await subject.aclose()


def entry(entry_id: str, next_run_at: float | None, **kw: object) -> ScheduleEntry:
    return ScheduleEntry(
        id=entry_id,
        task="reports.daily",
        kind="interval",
        spec={"every": 60},
        next_run_at=next_run_at,
        **kw,  # type: ignore[arg-type]
    )


async def test_schedule_entries_round_trip(schedules: SqliteScheduleStore) -> None:
    e = entry("a", 100.0, args=[1, "x"], kwargs={"k": [1]}, queue="reports", meta={"m": 1})
    await schedules.upsert(e)
    assert await schedules.get("a") == e
    assert await schedules.get("missing") is None


async def test_upsert_replaces_and_list_keeps_first_insert_order(
    schedules: SqliteScheduleStore,
) -> None:
    await schedules.upsert(entry("b", 1.0))
    await schedules.upsert(entry("a", 2.0))
    await schedules.upsert(entry("b", 3.0, enabled=False))
    assert [(e.id, e.next_run_at, e.enabled) for e in await schedules.list()] == [
        ("b", 3.0, False),
        ("a", 2.0, True),
    ]


async def test_due_gives_enabled_entries_whose_time_came_earliest_first(
    schedules: SqliteScheduleStore,
) -> None:
    await schedules.upsert(entry("late", 30.0))
    await schedules.upsert(entry("early", 10.0))
    await schedules.upsert(entry("off", 5.0, enabled=False))
    await schedules.upsert(entry("never", None))
    await schedules.upsert(entry("future", 99.0))
    assert [e.id for e in await schedules.due(30.0)] == ["early", "late"]
    assert [e.id for e in await schedules.due(30.0, limit=1)] == ["early"]
    assert await schedules.due(9.0) == []


async def test_mark_executed_records_the_run_and_the_drift(schedules: SqliteScheduleStore) -> None:
    await schedules.upsert(entry("a", 10.0))
    await schedules.mark_executed("a", ran_at=10.5, next_run_at=70.0, drift=0.5)
    await schedules.mark_executed("a", ran_at=70.25, next_run_at=None, drift=0.25)
    got = await schedules.get("a")
    assert got is not None
    assert (got.last_run_at, got.next_run_at, got.last_drift, got.total_runs) == (
        70.25,
        None,
        0.25,
        2,
    )
    assert await schedules.due(1e12) == []
    await schedules.mark_executed("missing", ran_at=1.0, next_run_at=2.0, drift=0.0)  # no error


async def test_remove(schedules: SqliteScheduleStore) -> None:
    await schedules.upsert(entry("a", 1.0))
    assert await schedules.remove("a")
    assert not await schedules.remove("a")
    assert await schedules.list() == []
