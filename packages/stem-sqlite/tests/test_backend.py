"""What the SQLite result backend adds to the contract: other processes, JSON rows, sweeping."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from stem import FakeClock, TaskRef, TaskState, TaskStatus, WorkerHeartbeat
from stem_sqlite import SqliteResultBackend
from stem_sqlite._support import SWEEP_BATCH, SWEEP_EVERY

pytestmark = pytest.mark.sqlite

Run = Callable[..., subprocess.CompletedProcess[str]]
Sleeping = Callable[[FakeClock], Awaitable[None]]


@pytest.fixture
async def backend(db_path: Path, clock: FakeClock) -> AsyncIterator[SqliteResultBackend]:
    subject = SqliteResultBackend(db_path, clock=clock)
    yield subject
    await subject.aclose()


@pytest.fixture
async def other(db_path: Path, clock: FakeClock) -> AsyncIterator[SqliteResultBackend]:
    subject = SqliteResultBackend(db_path, clock=clock, share_connection=False)
    yield subject
    await subject.aclose()


async def test_a_change_between_a_read_and_the_wait_is_not_missed(
    backend: SqliteResultBackend, db_path: Path
) -> None:
    await backend.set_status(TaskStatus(id="t1", state=TaskState.STARTED))
    assert await backend.get_status("t1") is not None
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("UPDATE stem_task_statuses SET version = version + 1 WHERE id = 't1'")
    raw.close()
    async with asyncio.timeout(5):
        await backend.wait_for_change("t1", 3600)


async def test_two_connections_see_each_others_statuses(
    backend: SqliteResultBackend, other: SqliteResultBackend, clock: FakeClock
) -> None:
    await backend.set_status(TaskStatus(id="t1", state=TaskState.SUCCEEDED, value={"n": 1}), ttl=60)
    got = await other.get_status("t1")
    assert got is not None
    assert (got.state, got.value, got.expires_at) == (
        TaskState.SUCCEEDED,
        {"n": 1},
        clock.now() + 60,
    )
    clock.advance(60)
    assert await other.get_status("t1") is None


async def test_statuses_are_json_the_sqlite_shell_can_read(
    backend: SqliteResultBackend, db_path: Path
) -> None:
    await backend.set_status(
        TaskStatus(id="t1", state=TaskState.FAILED, task="billing.charge", value=[1, 2])
    )
    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute(
            "SELECT state, task, json_extract(data, '$.value[1]')"
            " FROM stem_task_statuses WHERE id = 't1'"
        ).fetchone()
    finally:
        conn.close()
    assert row == ("failed", "billing.charge", 2)


async def test_expire_changes_the_reported_expiry(
    backend: SqliteResultBackend, clock: FakeClock
) -> None:
    await backend.set_status(TaskStatus(id="t1", state=TaskState.SUCCEEDED))
    assert await backend.expire("t1", 5)
    got = await backend.get_status("t1")
    assert got is not None
    assert got.expires_at == clock.now() + 5
    clock.advance(5)
    assert not await backend.expire("t1", 5)


async def test_expired_rows_are_swept_in_passing(
    backend: SqliteResultBackend, clock: FakeClock, db_path: Path
) -> None:
    # Given statuses and heartbeats that expired long ago
    for i in range(5):
        await backend.set_status(TaskStatus(id=f"old{i}", state=TaskState.SUCCEEDED), ttl=1)
    await backend.set_heartbeat(
        WorkerHeartbeat(worker_id="w0", host="h", pid=1, queues=["q"], concurrency=1), ttl=1
    )
    clock.advance(SWEEP_EVERY + 1)
    # When more are written later
    await backend.set_status(TaskStatus(id="new", state=TaskState.STARTED))
    await backend.set_heartbeat(
        WorkerHeartbeat(worker_id="w1", host="h", pid=2, queues=["q"], concurrency=1), ttl=60
    )
    # Then the expired rows are gone from the file, not just hidden
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT id FROM stem_task_statuses").fetchall() == [("new",)]
        assert conn.execute("SELECT worker_id FROM stem_heartbeats").fetchall() == [("w1",)]
    finally:
        conn.close()


async def test_sweeping_keeps_up_with_statuses_expiring_faster_than_a_batch_a_minute(
    backend: SqliteResultBackend, clock: FakeClock, db_path: Path
) -> None:
    # Given more expired results than one sweep deletes (a busy worker's minute)
    expired = 2 * SWEEP_BATCH + 100
    for start in range(0, expired, 100):
        await backend.set_statuses(
            [
                (TaskStatus(id=f"old{i}", state=TaskState.SUCCEEDED), 1.0)
                for i in range(start, start + 100)
            ]
        )
    clock.advance(SWEEP_EVERY + 1)
    # When three more statuses are written, well within the minute
    for i in range(3):
        await backend.set_status(TaskStatus(id=f"new{i}", state=TaskState.STARTED))
    # Then each write swept while the sweeps found full batches: every expired row is gone
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT count(*) FROM stem_task_statuses").fetchone() == (3,)
    finally:
        conn.close()
    # And, caught up, the next write does not sweep again before the minute is out
    await backend.set_status(TaskStatus(id="late", state=TaskState.SUCCEEDED), ttl=1.0)
    clock.advance(2)
    await backend.set_status(TaskStatus(id="later", state=TaskState.STARTED))
    assert await backend.get_status("late") is None  # expired: hidden, though not yet deleted


async def test_listing_reads_an_index_range_for_every_filter(
    backend: SqliteResultBackend, db_path: Path
) -> None:
    from stem_sqlite._backend import _listing

    await backend.get_status("t")  # creates the file
    conn = sqlite3.connect(db_path)
    try:
        for state, task in (("failed", None), ("failed", "t"), (None, "t"), (None, None)):
            sql, params = _listing(state, task)
            plan = " ".join(
                row[3]
                for row in conn.execute(
                    "EXPLAIN QUERY PLAN " + sql, {**params, "now": 0.0, "limit": 10}
                )
            )
            assert "SCAN stem_task_statuses" not in plan, (state, task, plan)
            index = "stem_task_statuses_task" if task else "stem_task_statuses_state"
            assert f"USING INDEX {index}" in plan, (state, task, plan)
    finally:
        conn.close()


async def test_listing_with_no_filter_merges_every_state_newest_first(
    backend: SqliteResultBackend, clock: FakeClock
) -> None:
    for i, state in enumerate([TaskState.QUEUED, TaskState.FAILED, TaskState.SUCCEEDED] * 3):
        await backend.set_status(TaskStatus(id=f"s{i}", state=state, task=f"t{i % 2}"))
        clock.advance(1)
    assert [s.id for s in await backend.list_statuses(limit=4)] == ["s8", "s7", "s6", "s5"]
    assert [s.id for s in await backend.list_statuses(task="t0", limit=3)] == ["s8", "s6", "s4"]


async def test_one_chord_claim_wins_across_connections(db_path: Path) -> None:
    backends = [SqliteResultBackend(db_path, share_connection=False) for _ in range(4)]
    try:
        await backends[0].init_group("g", 2)
        wins = await asyncio.gather(*(b.claim_chord("g", f"w{i}") for i, b in enumerate(backends)))
        assert sorted(wins) == [False, False, False, True]
        group = await backends[1].get_group("g")
        assert group is not None
        assert group.chord_claimed_by == f"w{wins.index(True)}"
    finally:
        for b in backends:
            await b.aclose()


async def test_group_results_are_recorded_once_from_any_connection(
    backend: SqliteResultBackend, other: SqliteResultBackend
) -> None:
    await backend.init_group("g", 2, meta={"callback": "sum"})
    first = TaskStatus(id="a", state=TaskState.SUCCEEDED, value=1)
    await backend.add_group_result("g", first)
    group = await other.add_group_result("g", TaskStatus(id="a", state=TaskState.FAILED))
    assert group is not None
    assert group.results == {"a": first}
    assert group.meta == {"callback": "sum"}
    assert not group.complete


async def test_watching_an_expired_status_waits_quietly(
    backend: SqliteResultBackend, clock: FakeClock, until_sleeping: Sleeping
) -> None:
    # Given a status that has expired
    await backend.set_status(TaskStatus(id="t1", state=TaskState.STARTED), ttl=1)
    clock.advance(2)
    reads = 0
    real_get = backend.get_status

    async def counting_get(task_id: str) -> TaskStatus | None:
        nonlocal reads
        reads += 1
        return await real_get(task_id)

    backend.get_status = counting_get  # type: ignore[method-assign]
    # When it is watched
    watcher = asyncio.create_task(anext(backend.watch("t1", timeout=30), None))
    await until_sleeping(clock)
    await asyncio.sleep(0.1)
    # Then the watch reads once and waits, instead of spinning on the old row
    assert reads == 1
    clock.advance(30)
    assert await asyncio.wait_for(watcher, 10) is None


async def test_task_ids_may_be_task_refs(backend: SqliteResultBackend) -> None:
    ref: TaskRef[int] = TaskRef("t1")
    await backend.set_status(TaskStatus(id=ref, state=TaskState.SUCCEEDED, value=1))
    assert (await backend.get_statuses([ref]))[ref].value == 1
    await backend.init_group("g", 1)
    group = await backend.add_group_result("g", TaskStatus(id=ref, state=TaskState.SUCCEEDED))
    assert group is not None
    assert group.complete


async def test_a_wait_without_a_read_of_its_own_rereads_after_the_poll_interval(
    backend: SqliteResultBackend, clock: FakeClock, until_sleeping: Sleeping
) -> None:
    # Given a wait that follows no read in its own task, so it cannot tell whether the
    # status changed just before it started
    await backend.set_status(TaskStatus(id="t1", state=TaskState.STARTED))
    waiter = asyncio.create_task(backend.wait_for_change("t1", 3600))
    await until_sleeping(clock)
    # Then the wait ends after the poll interval, not after the whole timeout
    clock.advance(backend.poll_interval)
    await asyncio.wait_for(waiter, 10)
