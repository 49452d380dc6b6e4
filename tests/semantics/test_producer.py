"""What a producer can count on, on every adapter: statuses from the first moment, unique
claims that live and die with their publish, expiry counted from enqueue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import pytest

from stem import AdapterError, FakeClock, Stem, TaskState
from stem.contracts import Message
from stem_sqlite import SqliteBroker

from .conftest import Drive


async def state_of(app: Stem, task_id: str) -> TaskState | None:
    status = await app.get_status(task_id)
    return status.state if status else None


async def test_enqueue_records_queued_at_once(app: Stem) -> None:
    @app.task(name="greet")
    async def greet(name: str) -> str:
        return f"hello {name}"

    ref = await greet.enqueue("ada")
    refs = await app.enqueue_many([greet.call("bob"), greet.call("cy")])
    for task_id in [ref, *refs]:
        status = await app.get_status(task_id)
        assert status is not None and status.state is TaskState.QUEUED
        assert status.task == "greet" and status.queue == "default"
    # Listing sees them too, and a wait that times out reports the queued state
    listed = {s.id for s in await app.backend.list_statuses(state=TaskState.QUEUED)}
    assert {ref, *refs} <= listed
    result = await app.wait_for_task(ref, timeout=0)
    assert result.timed_out and result.state is TaskState.QUEUED


async def test_a_queued_status_never_overwrites_the_workers(app: Stem, drive: Drive) -> None:
    @app.task(name="quick")
    async def quick() -> int:
        return 1

    broker: Any = app.broker
    if not isinstance(broker, SqliteBroker):  # SQLite: one transaction, nothing between
        real = broker.publish_many

        async def slow_to_return(messages: Sequence[Message]) -> None:
            # The worker gets to run the task before the producer's call returns, as
            # over a network: a status written after the publish would overwrite it.
            await real(messages)
            for _ in range(50):
                await asyncio.sleep(0)

        broker.publish_many = slow_to_return
    async with app.worker(concurrency=4):
        refs = [await quick.enqueue() for _ in range(20)]

        async def all_done() -> bool:
            return [await state_of(app, r) for r in refs] == [TaskState.SUCCEEDED] * len(refs)

        await drive(all_done)


@contextlib.contextmanager
def publish_fails(app: Stem, fail: Callable[[], Awaitable[None]]) -> Iterator[None]:
    """Make the write of the messages themselves fail, after any claim was taken.

    On memory the publish raises; on SQLite a row the table refuses makes the one
    enqueue transaction (claims, statuses, messages) fail part-way and roll back.
    """
    broker: Any = app.broker
    if isinstance(broker, SqliteBroker):
        real_rows = broker._rows

        def bad_rows(*args: Any) -> list[tuple[Any, ...]]:
            return [(*row[:2], None, *row[3:]) for row in real_rows(*args)]  # body NOT NULL

        broker._rows = bad_rows
        try:
            yield
        finally:
            del broker._rows
    else:

        async def publish_many(messages: Sequence[Message]) -> None:
            await fail()

        broker.publish_many = publish_many
        try:
            yield
        finally:
            del broker.publish_many


async def test_a_unique_claim_is_released_when_the_publish_fails(app: Stem) -> None:
    @app.task(name="once", unique=True)
    async def once(n: int) -> int:
        return n

    async def refuse() -> None:
        raise ConnectionError("broker went away")

    with publish_fails(app, refuse), pytest.raises((ConnectionError, AdapterError)):
        await once.enqueue(1)
    # The claim did not outlive the failed publish: the same call enqueues a real task
    ref = await once.enqueue(1)
    assert await state_of(app, ref) is TaskState.QUEUED
    assert (await app.broker.queue_stats("default")).pending == 1


async def test_a_cancelled_enqueue_leaves_no_claim_without_its_task(app: Stem) -> None:
    @app.task(name="once", unique=True)
    async def once(n: int) -> int:
        return n

    entered = asyncio.Event()

    async def hang() -> None:
        entered.set()
        await asyncio.Event().wait()  # never returns: the producer is cancelled here

    if isinstance(app.broker, SqliteBroker):
        pytest.skip(
            "one SQLite transaction: a cancelled producer's write commits whole or not at all"
        )
    with publish_fails(app, hang):
        producer = asyncio.ensure_future(once.enqueue(1))
        await entered.wait()
        producer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await producer
    ref = await once.enqueue(1)
    assert await state_of(app, ref) is TaskState.QUEUED


async def test_a_claim_whose_task_never_existed_is_not_honoured(app: Stem) -> None:
    @app.task(name="once", unique=True)
    async def once(n: int) -> int:
        return n

    # A producer killed between claim and publish left this claim behind
    from stem._unique import unique_key

    probe = app._build("once", (1,), {}, {}, app.clock.now())[0]
    key = f"stem:unique:once:{unique_key(probe)}"
    assert await app.lock_store.acquire(key, "ghost-task-id", 86400)
    ref = await once.enqueue(1)
    assert ref != "ghost-task-id"
    assert await state_of(app, ref) is TaskState.QUEUED
    # and the claim is now the new task's: a second enqueue is its duplicate
    assert await once.enqueue(1) == ref


async def test_duplicates_return_the_live_task(app: Stem) -> None:
    @app.task(name="once", unique=True)
    async def once(n: int) -> int:
        return n

    first = await once.enqueue(1)
    assert await once.enqueue(1) == first
    assert await once.enqueue(2) != first
    both = await app.enqueue_many([once.call(3), once.call(3)])
    assert both[0] == both[1]
    assert app.unique.duplicates == 2


async def test_expires_counts_from_enqueue_not_from_the_delay(
    app: Stem, clock: FakeClock, drive: Drive
) -> None:
    ran: list[int] = []

    @app.task(name="late")
    async def late(n: int) -> None:
        ran.append(n)

    async with app.worker(concurrency=1):
        ref = await late.options(expires=1, delay=2).enqueue(1)
        kept = await late.options(expires=5, delay=2).enqueue(2)

        async def both_final() -> bool:
            states = [await state_of(app, r) for r in (ref, kept)]
            return all(s is not None and s.is_final for s in states)

        await drive(both_final)
    assert await state_of(app, ref) is TaskState.REVOKED
    assert await state_of(app, kept) is TaskState.SUCCEEDED
    assert ran == [2]
