"""What the SQLite broker adds to the contract: several connections, processes and restarts."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from stem import FakeClock, TaskRef
from stem.contracts import Delivery, Message
from stem_sqlite import SqliteBroker

pytestmark = pytest.mark.sqlite

Run = Callable[..., subprocess.CompletedProcess[str]]
Sleeping = Callable[[FakeClock], Awaitable[None]]


def msg(mid: str, queue: str = "q", **kw: object) -> Message:
    return Message(id=mid, queue=queue, body=mid.encode(), **kw)  # type: ignore[arg-type]


@pytest.fixture
async def other(db_path: Path, clock: FakeClock) -> AsyncIterator[SqliteBroker]:
    """A second broker on the same file with a connection of its own, as another process has."""
    subject = SqliteBroker(db_path, clock=clock, share_connection=False)
    yield subject
    await subject.aclose()


async def test_a_message_published_on_one_connection_is_reserved_on_another(
    broker: SqliteBroker, other: SqliteBroker
) -> None:
    assert await broker._db() is not await other._db()
    await broker.publish(msg("m1"))
    [delivery] = await other.reserve(["q"], 10, 30)
    assert delivery.message == msg("m1")
    assert await broker.reserve(["q"], 10, 30) == []
    assert await broker.ack(delivery)  # any connection may settle a current delivery
    assert not await other.ack(delivery)
    assert (await other.queue_stats("q")).inflight == 0


async def test_an_expired_lease_is_redelivered_to_another_connection(
    broker: SqliteBroker, other: SqliteBroker, clock: FakeClock
) -> None:
    # Given a message leased by a consumer that then goes silent
    await broker.publish(msg("m1"))
    [first] = await broker.reserve(["q"], 1, 10)
    assert await other.reserve(["q"], 1, 10) == []
    # When its lease runs out
    clock.advance(10)
    assert (await other.queue_stats("q")).pending == 1
    [second] = await other.reserve(["q"], 1, 10)
    # Then another consumer gets it, and the first one's receipt is stale
    assert second.message == first.message
    assert second.deliveries == 2
    assert second.receipt != first.receipt
    assert not await broker.ack(first)
    assert not await broker.extend_lease(first, 30)
    assert await other.ack(second)


async def test_a_stale_receipt_never_settles_a_newer_message_in_a_reused_row(
    broker: SqliteBroker,
) -> None:
    # SQLite may reuse the largest rowid once its row is deleted; receipts carry a nonce.
    await broker.publish(msg("m1"))
    [old] = await broker.reserve(["q"], 1, 30)
    assert await broker.ack(old)
    await broker.publish(msg("m2"))
    [new] = await broker.reserve(["q"], 1, 30)
    assert new.receipt.split(".")[0] == old.receipt.split(".")[0]  # the same row
    assert not await broker.ack(old)
    assert not await broker.nack(old)
    assert not await broker.dead_letter(old, "stale")
    assert await broker.ack(new)


async def test_receipts_this_broker_did_not_write_are_unknown(broker: SqliteBroker) -> None:
    await broker.publish(msg("m1"))
    forged = Delivery(message=msg("m1"), receipt="not-a-receipt", deliveries=1, lease_expires_at=0)
    assert not await broker.ack(forged)
    assert await broker.ack_many([forged]) == 0
    assert not await broker.nack(forged)
    assert not await broker.extend_lease(forged, 5)
    assert not await broker.dead_letter(forged, "x")


async def test_connections_reserving_at_once_never_share_a_message(db_path: Path) -> None:
    # Given many messages and four consumers, each on its own connection (and thread)
    consumers = [SqliteBroker(db_path, share_connection=False) for _ in range(4)]
    await consumers[0].publish_many([msg(f"m{i}") for i in range(2000)])
    seen: list[str] = []

    async def drain(broker: SqliteBroker) -> None:
        while batch := await broker.reserve(["q"], 25, 60):
            seen.extend(d.message.id for d in batch)
            assert await broker.ack_many(batch) == len(batch)

    # When they drain the queue concurrently
    try:
        await asyncio.gather(*(drain(c) for c in consumers))
    finally:
        for c in consumers:
            await c.aclose()
    # Then every message went to exactly one of them
    assert sorted(seen) == sorted(f"m{i}" for i in range(2000))


async def test_messages_survive_a_restart_and_a_lease_held_at_a_crash_runs_out(
    db_path: Path, clock: FakeClock
) -> None:
    # Given a broker with a waiting message, a delayed one and a leased one
    first = SqliteBroker(db_path, clock=clock)
    await first.publish_many([msg("leased"), msg("waiting"), msg("later", eta=clock.now() + 60)])
    [leased] = await first.reserve(["q"], 1, 30)
    assert leased.message.id == "leased"
    await first.aclose()  # the process goes away without acking
    # When a new broker opens the file
    second = SqliteBroker(db_path, clock=clock)
    try:
        [waiting] = await second.reserve(["q"], 10, 30)
        assert waiting.message.id == "waiting"
        assert await second.ack(waiting)
        clock.advance(30)
        [again] = await second.reserve(["q"], 10, 30)
        assert (again.message.id, again.deliveries) == ("leased", 2)
        assert await second.ack(again)
        clock.advance(30)
        assert [d.message.id for d in await second.reserve(["q"], 10, 30)] == ["later"]
    finally:
        await second.aclose()


async def test_binary_bodies_round_trip(broker: SqliteBroker) -> None:
    body = bytes(range(256)) * 4
    await broker.publish(Message(id="b", queue="q", body=body))
    [delivery] = await broker.reserve(["q"], 1, 30)
    assert delivery.message.body == body
    assert isinstance(delivery.message.body, bytes)


# -- waking consumers ------------------------------------------------------------------------


async def test_wait_ends_at_once_on_a_publish_in_this_process(
    broker: SqliteBroker, other: SqliteBroker, clock: FakeClock, until_sleeping: Sleeping
) -> None:
    waiter = asyncio.create_task(broker.wait_for_messages(["q"], 3600))
    await until_sleeping(clock)
    await other.publish(msg("m1"))
    await asyncio.wait_for(waiter, 10)
    assert not clock.sleepers


async def test_wait_ends_when_the_fake_clock_passes_the_timeout(
    broker: SqliteBroker, clock: FakeClock, until_sleeping: Sleeping
) -> None:
    waiter = asyncio.create_task(broker.wait_for_messages(["q"], 5))
    await until_sleeping(clock)
    clock.advance(4)
    await asyncio.sleep(0.05)
    assert not waiter.done()
    clock.advance(1)
    await asyncio.wait_for(waiter, 10)


async def test_a_publish_between_an_empty_read_and_the_wait_is_not_missed(
    broker: SqliteBroker, db_path: Path
) -> None:
    # Given a consumer that just found its queue empty
    assert await broker.reserve(["q"], 1, 30) == []
    # When another process publishes before the consumer starts waiting (simulated with
    # a raw connection, which bypasses every in-process wake-up)
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute(
        "INSERT INTO stem_messages (queue, id, body, priority, due, state)"
        " VALUES ('q', 'm', x'00', 0, 0, 0)"
    )
    raw.close()
    # Then the wait returns at once, although its FakeClock never moves, even in a task
    # of its own (as a worker waits)
    await asyncio.wait_for(broker.wait_for_messages(["q"], 3600), 5)
    # And a second wait, without a read in between, waits
    second = asyncio.create_task(broker.wait_for_messages(["q"], 3600))
    await asyncio.sleep(0.05)
    assert not second.done()
    second.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await second


async def test_consume_sleeps_until_a_delayed_message_is_due(
    broker: SqliteBroker, clock: FakeClock, until_sleeping: Sleeping
) -> None:
    await broker.publish(msg("later", eta=clock.now() + 10))
    assert await broker.next_due(["q"]) == clock.now() + 10
    stream = broker.consume(["q"], prefetch=5, lease=30)
    reading = asyncio.ensure_future(anext(stream))
    await until_sleeping(clock)
    clock.advance(10)
    batch = await asyncio.wait_for(reading, 10)
    assert [d.message.id for d in batch] == ["later"]
    await stream.aclose()


async def test_next_due_includes_lease_ends(broker: SqliteBroker, clock: FakeClock) -> None:
    assert await broker.next_due(["q"]) is None
    await broker.publish(msg("m1"))
    await broker.reserve(["q"], 1, 30)
    await broker.publish(msg("m2", eta=clock.now() + 60))
    assert await broker.next_due(["q", "other"]) == clock.now() + 30


# -- the reserve query --------------------------------------------------------------------


async def test_reserve_reads_the_ready_index_in_order(broker: SqliteBroker, db_path: Path) -> None:
    await broker.publish(msg("m1"))
    conn = sqlite3.connect(db_path)
    try:
        plan = " | ".join(
            row[3]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT seq FROM stem_messages WHERE queue = ? AND state = 0"
                " ORDER BY priority DESC, due, seq LIMIT ?",
                ("q", 10),
            )
        )
    finally:
        conn.close()
    assert "stem_messages_ready" in plan
    assert "TEMP B-TREE" not in plan  # the index gives the order; nothing is sorted


async def test_priorities_and_publish_order_inside_one_batch(broker: SqliteBroker) -> None:
    await broker.publish_many([msg(f"m{i}", priority=i % 3) for i in range(9)])
    got = [d.message.id for d in await broker.reserve(["q"], 9, 30)]
    assert got == ["m2", "m5", "m8", "m1", "m4", "m7", "m0", "m3", "m6"]


async def test_ids_may_be_str_subclasses_such_as_task_refs(broker: SqliteBroker) -> None:
    # Given a message whose id the caller holds as a TaskRef (a str subclass)
    ref: TaskRef[int] = TaskRef("task-1")
    await broker.publish(Message(id=ref, queue="q", body=b""))
    [delivery] = await broker.reserve(["q"], 1, 30)
    assert await broker.dead_letter(delivery, "failed")
    # When dead letters are looked up, replayed and purged by it
    assert await broker.get_dead_letter("q", ref) is not None
    assert await broker.replay_dead_letters("q", [ref]) == 1
    [again] = await broker.reserve(["q"], 1, 30)
    assert await broker.dead_letter(again, "failed")
    assert await broker.purge_dead_letters("q", [ref]) == 1


async def test_settle_stores_and_acks_in_one_transaction(
    broker: SqliteBroker,
    db_path: Path,
    clock: FakeClock,
    traced: Callable[..., Any],
    count_commits: Callable[[list[str]], int],
) -> None:
    from stem.contracts import TaskState, TaskStatus
    from stem_sqlite import SqliteResultBackend

    backend = SqliteResultBackend(db_path, clock=clock)  # shares the broker's connection
    await broker.publish_many([msg("a"), msg("b")])
    deliveries = await broker.reserve(["q"], 2, 30)
    db = await broker._db()
    stale = Delivery(
        message=deliveries[0].message, receipt="0:stale", deliveries=1, lease_expires_at=0
    )
    statuses = [(TaskStatus(id=d.message.id, state=TaskState.SUCCEEDED), 60.0) for d in deliveries]
    with traced(db) as statements:
        await broker.settle([*deliveries, stale], statuses, backend)
    assert count_commits(statements) == 1
    assert (await broker.queue_stats("q")).inflight == 0
    stored = await backend.get_status("a")
    assert stored is not None and stored.state is TaskState.SUCCEEDED
    assert stored.expires_at == clock.now() + 60
    await backend.aclose()
