"""Leases, locks and expiries on the Redis server's clock, whatever the clients' clocks say.

Each client here has a clock of its own, a ``FakeClock`` set an hour ahead of the
server or an hour behind it (and standing still), with ``server_clock=True``, as a
worker on a machine with a wrong clock would run in production. Where a test waits, it
waits for a short lease or time to live to end on the server's clock, and no longer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest

from stem import FakeClock, RateLimit, Stem
from stem.contracts import (
    Message,
    RevokeEntry,
    ScheduleEntry,
    TaskState,
    TaskStatus,
    WorkerHeartbeat,
    WorkflowRun,
)
from stem_redis import (
    RedisAdapter,
    RedisBroker,
    RedisLockStore,
    RedisRateLimiter,
    RedisResultBackend,
    RedisRevokeStore,
    RedisScheduleStore,
    RedisWorkflowStore,
)

pytestmark = pytest.mark.redis

HOUR = 3600.0
#: A lease or lock that outlives every test here.
HOLD = 30.0
#: A lease, lock or time to live that ends while the test waits for it.
SHORT = 1.0
#: What a test waits past SHORT: asyncio may wake a little early.
MARGIN = 0.05

S = TypeVar(
    "S",
    RedisBroker,
    RedisResultBackend,
    RedisLockStore,
    RedisRevokeStore,
    RedisRateLimiter,
    RedisScheduleStore,
    RedisWorkflowStore,
)
Build = Callable[..., Any]


def skewed(seconds: float) -> FakeClock:
    """A clock ``seconds`` ahead of the real time (behind, if negative)."""
    return FakeClock(start=time.time() + seconds)


@pytest.fixture
async def build(redis_url: str) -> AsyncIterator[Build]:
    """``build(StoreClass, skew)``: a store on the server's clock, on a client whose clock
    is ``skew`` seconds off, with connections of its own (as on another machine)."""
    opened: list[Any] = []

    def make(kind: type[S], skew: float, url: str = redis_url) -> S:
        store = kind(url, clock=skewed(skew), server_clock=True, share_connection=False)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()


def message(queue: str) -> Message:
    label = f"m-{uuid.uuid4().hex[:8]}"
    return Message(id=label, queue=queue, body=label.encode())


async def wait_past(seconds: float) -> None:
    """Let ``seconds`` pass on the server's clock (the machine's: the server is local)."""
    await asyncio.sleep(seconds + MARGIN)


# -- leases -----------------------------------------------------------------------------------


async def test_a_consumer_an_hour_ahead_leaves_a_message_held_under_a_live_lease_alone(
    build: Build,
) -> None:
    holder, ahead = build(RedisBroker, 0.0), build(RedisBroker, +HOUR)
    await holder.publish(message("q"))
    [held] = await holder.reserve(["q"], 1, HOLD)
    # An hour ahead, its clock says the lease ended long ago: the server's says it has not
    assert await ahead.reserve(["q"], 10, HOLD) == []
    stats = await ahead.queue_stats("q")
    assert (stats.pending, stats.delayed, stats.inflight) == (0, 0, 1)
    assert await ahead.purge("q") == 0  # purge drops expired leases only
    # It expects the lease to end within HOLD of its own now, not an hour ago
    due = await ahead.next_due(["q"])
    assert due is not None and 0 < due - ahead.clock.now() <= HOLD
    assert await holder.ack(held)


async def test_a_consumer_an_hour_behind_sees_a_lease_that_ended_on_the_servers_clock(
    build: Build,
) -> None:
    holder, behind = build(RedisBroker, 0.0), build(RedisBroker, -HOUR)
    await holder.publish(message("q"))
    [held] = await holder.reserve(["q"], 1, SHORT)
    assert await behind.reserve(["q"], 10, HOLD) == []
    due = await behind.next_due(["q"])
    assert due is not None and 0 < due - behind.clock.now() <= SHORT
    await wait_past(SHORT)
    # An hour behind, its clock says the lease has an hour to go: the server's says it ended
    stats = await behind.queue_stats("q")
    assert (stats.pending, stats.inflight) == (1, 0)
    [taken] = await behind.reserve(["q"], 10, HOLD)
    assert (taken.message, taken.deliveries) == (held.message, 2)
    # The lease end it reports is on its own clock: the worker renews by that clock
    assert taken.lease_expires_at == behind.clock.now() + HOLD
    assert not await holder.ack(held)
    assert await behind.ack(taken)


async def test_an_extension_and_a_nack_delay_from_a_client_an_hour_behind_count_from_the_servers_now(
    build: Build,
) -> None:
    behind, ahead = build(RedisBroker, -HOUR), build(RedisBroker, +HOUR)
    await behind.publish(message("q"))
    [held] = await behind.reserve(["q"], 1, SHORT)
    assert await behind.extend_lease(held, HOLD)
    await wait_past(SHORT)  # the first lease would have ended by now
    assert await ahead.reserve(["q"], 10, HOLD) == []
    assert await behind.nack(held, delay=HOLD)
    assert await ahead.reserve(["q"], 10, HOLD) == []
    stats = await ahead.queue_stats("q")
    assert (stats.pending, stats.delayed, stats.inflight) == (0, 1, 0)


# -- locks ------------------------------------------------------------------------------------


async def test_a_lock_taken_by_a_client_an_hour_ahead_expires_on_the_servers_clock(
    build: Build,
) -> None:
    ahead, behind = build(RedisLockStore, +HOUR), build(RedisLockStore, -HOUR)
    assert await ahead.acquire("job", "a", SHORT)
    assert not await behind.acquire("job", "b", HOLD)
    assert await behind.owner_of("job") == "a"
    await wait_past(SHORT)
    # Its end was not an hour and a second after the clock of the one who took it
    assert await behind.owner_of("job") is None
    assert not await ahead.renew("job", "a", HOLD)  # fenced: its lock ended
    assert await behind.acquire("job", "b", HOLD)


async def test_a_lock_taken_by_a_client_an_hour_behind_holds_against_one_ahead(
    build: Build,
) -> None:
    behind, ahead = build(RedisLockStore, -HOUR), build(RedisLockStore, +HOUR)
    assert await behind.acquire("job", "b", HOLD)
    assert not await ahead.acquire("job", "a", HOLD)
    assert await ahead.owner_of("job") == "b"
    assert not await ahead.release("job", "a")
    assert await behind.renew("job", "b", HOLD)
    assert await behind.release("job", "b")


# -- expiry of statuses, heartbeats and revocations ------------------------------------------


def heartbeat(worker_id: str) -> WorkerHeartbeat:
    return WorkerHeartbeat(worker_id=worker_id, host="h", pid=1, queues=["q"], concurrency=1)


async def test_what_a_client_an_hour_behind_writes_is_live_for_a_client_an_hour_ahead(
    build: Build,
) -> None:
    writer, reader = build(RedisResultBackend, -HOUR), build(RedisResultBackend, +HOUR)
    await writer.set_status(TaskStatus(id="t1", state=TaskState.SUCCEEDED, task="x"), ttl=HOLD)
    await writer.set_status(TaskStatus(id="t2", state=TaskState.SUCCEEDED, task="x"))
    assert await writer.expire("t2", HOLD)
    await writer.set_heartbeat(heartbeat("w1"), ttl=HOLD)
    assert (await reader.get_status("t1")) is not None
    assert set(await reader.get_statuses(["t1", "t2"])) == {"t1", "t2"}
    assert {s.id for s in await reader.list_statuses(task="x")} == {"t1", "t2"}
    assert [h.worker_id for h in await reader.list_heartbeats()] == ["w1"]
    # The time a status expires at is the server's: within HOLD of now, not an hour off
    status = await reader.get_status("t1")
    assert status is not None and status.expires_at is not None
    assert 0 < status.expires_at - time.time() <= HOLD
    # A revocation an hour behind, with a minute to live, is live for a worker an hour ahead
    revoker, worker = build(RedisRevokeStore, -HOUR), build(RedisRevokeStore, +HOUR)
    entry = RevokeEntry(task_id="t1", expires_at=revoker.clock.now() + 60)
    await revoker.revoke(entry)
    assert await worker.get("t1") is not None
    assert [e.task_id for e in await worker.list()] == ["t1"]


async def test_what_a_client_an_hour_ahead_writes_expires_on_the_servers_clock(
    build: Build,
) -> None:
    writer, reader = build(RedisResultBackend, +HOUR), build(RedisResultBackend, -HOUR)
    await writer.set_status(TaskStatus(id="t1", state=TaskState.SUCCEEDED, task="x"), ttl=SHORT)
    await writer.set_status(TaskStatus(id="t2", state=TaskState.SUCCEEDED, task="x"))
    assert await writer.expire("t2", SHORT)
    await writer.set_heartbeat(heartbeat("w1"), ttl=SHORT)
    revoker, worker = build(RedisRevokeStore, +HOUR), build(RedisRevokeStore, -HOUR)
    await revoker.revoke(RevokeEntry(task_id="t1", expires_at=revoker.clock.now() + SHORT))
    assert set(await reader.get_statuses(["t1", "t2"])) == {"t1", "t2"}
    assert await reader.get_heartbeat("w1") is not None
    assert await worker.get("t1") is not None
    await wait_past(SHORT)
    # An hour behind, the reader's clock says an hour to go: the server's says it is over
    assert await reader.get_status("t1") is None
    assert await reader.get_statuses(["t1", "t2"]) == {}
    assert await reader.list_statuses(task="x") == []
    assert await reader.get_heartbeat("w1") is None
    assert await reader.list_heartbeats() == []
    assert await worker.get("t1") is None
    assert await worker.list() == []


# -- workflow runs ----------------------------------------------------------------------------


async def test_a_workflow_runs_lease_taken_an_hour_ahead_ends_on_the_servers_clock(
    build: Build,
) -> None:
    ahead, behind = build(RedisWorkflowStore, +HOUR), build(RedisWorkflowStore, -HOUR)
    run = WorkflowRun(id=f"run-{uuid.uuid4().hex[:8]}", workflow="w", created_at=time.time())
    await ahead.create_run(run)
    held = await ahead.claim_run(run.id, "a", SHORT)
    assert held is not None
    # The lease end, and every time the store sets, is the server's: within SHORT of now
    assert held.lease_expires_at is not None and 0 < held.lease_expires_at - time.time() <= SHORT
    assert abs(held.updated_at - time.time()) < SHORT
    # An hour behind, its clock says the lease has an hour to go; an hour ahead, that it
    # ended long ago: neither matters, the lease is live on the server's clock
    assert await behind.claim_run(run.id, "b", HOLD) is None
    assert await ahead.claim_run(run.id, "a2", HOLD) is None
    assert await behind.due_runs() == []
    # The next wake is told on the asker's clock
    wake = await behind.next_wake()
    assert wake is not None and 0 < wake - behind.clock.now() <= SHORT
    await wait_past(SHORT)
    assert await behind.due_runs(redispatch_after=HOLD) == [run.id]
    taken = await behind.claim_run(run.id, "b", HOLD)
    assert taken is not None and taken.fence == held.fence + 1
    assert not await ahead.renew_run(run.id, held.fence, HOLD)


async def test_a_workflow_runs_lease_taken_an_hour_behind_holds_against_one_ahead(
    build: Build,
) -> None:
    behind, ahead = build(RedisWorkflowStore, -HOUR), build(RedisWorkflowStore, +HOUR)
    run = WorkflowRun(id=f"run-{uuid.uuid4().hex[:8]}", workflow="w", created_at=time.time())
    await behind.create_run(run)
    held = await behind.claim_run(run.id, "b", HOLD)
    assert held is not None
    assert await ahead.claim_run(run.id, "a", HOLD) is None
    assert await ahead.due_runs() == []
    assert await behind.renew_run(run.id, held.fence, HOLD)


# -- beat entries ---------------------------------------------------------------------------


async def test_a_beat_entrys_claim_taken_an_hour_ahead_ends_on_the_servers_clock(
    build: Build,
) -> None:
    ahead, behind = build(RedisScheduleStore, +HOUR), build(RedisScheduleStore, -HOUR)
    # Due by either beat's reckoning (due times are the caller's)
    entry = await ahead.upsert(
        ScheduleEntry(
            id=f"e-{uuid.uuid4().hex[:8]}", task="t", kind="interval", spec={}, next_run_at=0.0
        )
    )
    [held] = await ahead.due(behind.clock.now(), owner="a", claim_ttl=SHORT)
    # The claim's end is the server's: within SHORT of now
    assert held.claimed_until is not None and 0 < held.claimed_until - time.time() <= SHORT
    # An hour behind or ahead, the claim is live on the server's clock: no one takes it
    assert await behind.due(ahead.clock.now(), owner="b", claim_ttl=HOLD) == []
    assert await ahead.due(ahead.clock.now(), owner="a2", claim_ttl=HOLD) == []
    await wait_past(SHORT)
    # It ended: the beat an hour behind takes the firing, and the first cannot record it
    [taken] = await behind.due(ahead.clock.now(), owner="b", claim_ttl=HOLD)
    assert taken.claimed_by == "b"
    fired = {"due_at": 0.0, "ran_at": 1.0, "next_run_at": 60.0, "drift": 1.0}
    assert not await ahead.mark_executed(entry.id, owner="a", **fired)
    assert await behind.mark_executed(entry.id, owner="b", **fired)


# -- which clock ------------------------------------------------------------------------------


async def test_the_server_clock_is_the_default_without_a_clock_and_a_given_clock_otherwise(
    redis_url: str,
) -> None:
    adapter, fake = RedisAdapter(), FakeClock()
    made: list[Any] = []
    for factory in (
        adapter.broker,
        adapter.result_backend,
        adapter.lock_store,
        adapter.revoke_store,
        adapter.rate_limiter,
        adapter.workflow_store,
        adapter.schedule_store,
    ):
        production, tested = factory(redis_url), factory(redis_url, clock=fake)
        made += [production, tested]
        assert (production.server_clock, tested.server_clock) == (True, False)
    forced = RedisBroker(redis_url, clock=fake, server_clock=True)
    assert forced.server_clock and forced.clock is fake
    own = RedisLockStore(redis_url, server_clock=False)  # the system clock, sent
    assert not own.server_clock
    # Stem.from_url passes no clock in production, and the test's clock in tests
    app, tested_app = Stem.from_url(redis_url), Stem.from_url(redis_url, clock=fake)
    try:
        for store in (app.broker, app.backend, app.lock_store, app.revoke_store):
            assert getattr(store, "server_clock", None) is True, store
        for store in (tested_app.broker, tested_app.backend, tested_app.lock_store):
            assert getattr(store, "server_clock", None) is False, store
    finally:
        await app.aclose()
        await tested_app.aclose()
        for store in [*made, forced, own]:
            await store.aclose()


async def test_rate_limit_bookings_from_skewed_clients_are_one_interval_apart(
    build: Build,
) -> None:
    ahead, behind = build(RedisRateLimiter, +HOUR), build(RedisRateLimiter, -HOUR)
    limit = RateLimit.parse("1/m")
    assert await ahead.reserve("k", limit) == 0.0
    assert 59.0 < await behind.reserve("k", limit) <= 60.0


# -- Redis Cluster: each queue and status on its node's clock --------------------------------


async def test_on_a_cluster_skewed_clients_agree_on_leases_and_expiry(
    build: Build, redis_cluster_url: str
) -> None:
    holder = build(RedisBroker, 0.0, redis_cluster_url)
    ahead = build(RedisBroker, +HOUR, redis_cluster_url)
    queues = [f"q{i}" for i in range(6)]  # over several slots
    await holder.publish_many([message(q) for q in queues])
    held = await holder.reserve(queues, 10, HOLD)
    assert len(held) == len(queues)
    assert await ahead.reserve(queues, 10, HOLD) == []
    due = await ahead.next_due(queues)
    assert due is not None and 0 < due - ahead.clock.now() <= HOLD
    assert await holder.ack_many(held) == len(queues)
    writer = build(RedisResultBackend, -HOUR, redis_cluster_url)
    reader = build(RedisResultBackend, +HOUR, redis_cluster_url)
    ids = [f"t{i}" for i in range(20)]  # over several status tags
    await writer.set_statuses(
        [(TaskStatus(id=i, state=TaskState.SUCCEEDED, task="x"), HOLD) for i in ids]
    )
    assert set(await reader.get_statuses(ids)) == set(ids)
    assert len(await reader.list_statuses(task="x", limit=100)) == len(ids)
