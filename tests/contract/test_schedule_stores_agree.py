"""The schedule stores agree with the reference: the same random operations on memory,
SQLite and Redis (one FakeClock for all) give equal results, step after step.

The contract suite checks each rule on its own; this walks the corners between them
(claims running out mid-way, ties in due time at the limit, entries created with a
claim, stale versions, failed firings) the way several beats and an admin would.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stem import FakeClock, ScheduleConflictError
from stem.contracts import ScheduleEntry, ScheduleStore
from stem.memory import MemoryScheduleStore
from stem_redis import RedisScheduleStore
from stem_sqlite import SqliteScheduleStore

pytestmark = [pytest.mark.sqlite, pytest.mark.redis]

IDS = [f"e{i}" for i in range(6)]
OWNERS = ["a", "b", "c"]
OPERATIONS = ["upsert", "upsert", "get", "list", "remove", "due", "due", "mark", "mark", "release"]


@pytest.fixture
async def stores(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[FakeClock, list[Any]]]:
    clock = FakeClock(start=1000.0)
    opened = [
        MemoryScheduleStore(clock=clock),
        SqliteScheduleStore(tmp_path / "stem.db", clock=clock),
        RedisScheduleStore(redis_url, clock=clock),
    ]
    yield clock, opened
    for store in opened:
        await store.aclose()


async def apply(store: ScheduleStore, op: str, entry_id: str, pick: random.Random, ref: Any) -> Any:
    """One operation, its arguments drawn from ``pick`` (seeded alike for every store)."""
    now = store.clock.now()
    try:
        if op == "upsert":
            version = ref.version if ref else 0
            if pick.random() < 0.15:
                version += pick.choice([-1, 1])  # a stale or made-up version: a conflict
            entry = ScheduleEntry(
                id=entry_id,
                task="t",
                kind="interval",
                spec={"every": 60},
                enabled=pick.random() < 0.8,
                next_run_at=pick.choice([None, 1000.0, 1001.0, 1002.0, now, now + 3]),
                total_runs=pick.randint(0, 3),
                last_error=pick.choice([None, "x"]),
                claimed_by=pick.choice([None, None, "z"]),
                claimed_until=pick.choice([None, now + 2]),
                version=version,
            )
            return await store.upsert(entry)
        if op == "get":
            return await store.get(entry_id)
        if op == "list":
            return await store.list()
        if op == "remove":
            return await store.remove(entry_id)
        if op == "due":
            return await store.due(
                now + pick.choice([0, 2, 100]),
                owner=pick.choice(OWNERS),
                claim_ttl=pick.choice([1, 5, 30]),
                limit=pick.choice([-1, 0, 1, 2, 100]),
            )
        if op == "mark":
            known = ref is not None and ref.next_run_at is not None and pick.random() < 0.9
            return await store.mark_executed(
                entry_id,
                owner=pick.choice(OWNERS),
                due_at=ref.next_run_at if known else 999.0,
                ran_at=now,
                next_run_at=pick.choice([None, now + 10]),
                drift=0.25,
                error=pick.choice([None, None, "boom"]),
            )
        return await store.release(entry_id, pick.choice(OWNERS))
    except ScheduleConflictError:
        return "conflict"


@pytest.mark.parametrize("seed", range(4))
async def test_every_store_does_what_the_reference_does(
    stores: tuple[FakeClock, list[ScheduleStore]], seed: int
) -> None:
    clock, (memory, *others) = stores
    steps = random.Random(seed)
    for step in range(250):
        if steps.random() < 0.1:
            clock.advance(steps.choice([0.5, 1, 5, 30]))
            continue
        op, entry_id = steps.choice(OPERATIONS), steps.choice(IDS)
        ref = await memory.get(entry_id)
        expected = await apply(memory, op, entry_id, random.Random(step), ref)
        for store in others:
            got = await apply(store, op, entry_id, random.Random(step), ref)
            assert got == expected, f"step {step}: {op}({entry_id}) on {type(store).__name__}"
    listed = await memory.list()
    for store in others:
        assert await store.list() == listed
