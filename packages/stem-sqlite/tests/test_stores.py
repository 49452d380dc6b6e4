"""Locks and revocations across connections; what the schedule store does beyond its contract."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import stem_sqlite
from stem import ConfigurationError, FakeClock
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


# -- schedule store (the contract suite is in tests/contract/test_sqlite.py) -------------------


def entry(entry_id: str, next_run_at: float | None, **kw: object) -> ScheduleEntry:
    return ScheduleEntry(
        id=entry_id,
        task="reports.daily",
        kind="interval",
        spec={"every": 60},
        next_run_at=next_run_at,
        **kw,  # type: ignore[arg-type]
    )


async def test_the_url_names_the_schedule_namespace(db_path: Path, clock: FakeClock) -> None:
    # Two apps on one file, one of them giving a namespace in its URL
    url = f"sqlite:///{db_path}"
    ours = stem_sqlite.adapter.schedule_store(f"{url}?namespace=billing", clock=clock)
    theirs = stem_sqlite.adapter.schedule_store(url, clock=clock)
    try:
        assert (ours.namespace, theirs.namespace) == ("billing", "default")
        mine = await ours.upsert(entry("nightly", 10.0))
        assert await theirs.get("nightly") is None
        assert await theirs.list() == []
        assert await theirs.due(1e9, owner="b", claim_ttl=30) == []
        # Each has an entry of that id, its own
        other = await theirs.upsert(entry("nightly", 20.0, queue="theirs"))
        assert await ours.list() == [mine]
        assert await theirs.list() == [other]
        assert [e.id for e in await ours.due(1e9, owner="a", claim_ttl=30)] == ["nightly"]
        assert await ours.remove("nightly")
        assert await theirs.get("nightly") == other
    finally:
        await ours.aclose()
        await theirs.aclose()


def test_an_empty_namespace_is_refused(db_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="namespace must be a non-empty string"):
        SqliteScheduleStore(db_path, namespace="")


async def test_due_with_a_limit_of_zero_or_less_claims_nothing(db_path: Path) -> None:
    # SQLite reads LIMIT -1 as no limit: the store must not pass it on
    store = SqliteScheduleStore(db_path, clock=FakeClock())
    try:
        await store.upsert(entry("a", 1.0))
        assert await store.due(10.0, owner="b", claim_ttl=30, limit=-1) == []
        assert await store.due(10.0, owner="b", claim_ttl=30, limit=0) == []
        [got] = await store.due(10.0, owner="b", claim_ttl=30)
        assert got.claimed_by == "b"
    finally:
        await store.aclose()
