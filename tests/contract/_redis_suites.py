"""The contract suites on the Redis adapter, for tests/contract/test_redis.py (one server)
and test_redis_cluster.py (a cluster): each builds its stores on the ``redis_url``
fixture, which the cluster's classes point at the cluster. The ``other_*`` fixtures open
a second client with connections of its own (``share_connection=False``), as another
process would, so the suites' concurrency tests race two clients for real.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stem import Clock, SystemClock
from stem.contracts import RunStatus
from stem.memory import MemoryWorkflowStore
from stem_adapter_tests import (
    BrokerContract,
    ControlChannelContract,
    EventBusContract,
    LockStoreContract,
    RateLimiterContract,
    ResultBackendContract,
    RevokeStoreContract,
    ScheduleStoreContract,
    WorkflowScriptContract,
    WorkflowStoreContract,
)
from stem_adapter_tests._support import WAIT_LIMIT, unique
from stem_redis import (
    RedisBroker,
    RedisControlChannel,
    RedisEventBus,
    RedisLockStore,
    RedisOptions,
    RedisRateLimiter,
    RedisResultBackend,
    RedisRevokeStore,
    RedisScheduleStore,
    RedisWorkflowStore,
    parse_url,
)

__all__ = [
    "RedisBrokerSuite",
    "RedisControlChannelSuite",
    "RedisEventBusSuite",
    "RedisLockStoreSuite",
    "RedisRateLimiterOnTheServerClockSuite",
    "RedisRateLimiterSuite",
    "RedisResultBackendSuite",
    "RedisRevokeStoreSuite",
    "RedisScheduleStoreOnTheServerClockSuite",
    "RedisScheduleStoreSuite",
    "RedisWorkflowScriptSuite",
    "RedisWorkflowStoreOnTheServerClockSuite",
    "RedisWorkflowStoreSuite",
]


class RedisBrokerSuite(BrokerContract):
    @pytest.fixture
    async def broker(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisBroker]:
        broker = RedisBroker(redis_url, clock=clock)
        yield broker
        await broker.aclose()

    @pytest.fixture
    async def other_broker(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisBroker]:
        other = RedisBroker(redis_url, clock=clock, share_connection=False)
        yield other
        await other.aclose()

    @pytest.fixture
    async def companion_backend(
        self, clock: Clock, redis_url: str
    ) -> AsyncIterator[RedisResultBackend]:
        backend = RedisResultBackend(redis_url, clock=clock)  # the same server: one script
        yield backend
        await backend.aclose()

    @pytest.fixture
    async def companion_locks(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisLockStore]:
        locks = RedisLockStore(redis_url, clock=clock)
        yield locks
        await locks.aclose()


class RedisResultBackendSuite(ResultBackendContract):
    @pytest.fixture
    async def backend(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisResultBackend]:
        backend = RedisResultBackend(redis_url, clock=clock)
        yield backend
        await backend.aclose()

    @pytest.fixture
    async def other_backend(
        self, clock: Clock, redis_url: str
    ) -> AsyncIterator[RedisResultBackend]:
        other = RedisResultBackend(redis_url, clock=clock, share_connection=False)
        yield other
        await other.aclose()


class RedisLockStoreSuite(LockStoreContract):
    @pytest.fixture
    async def locks(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisLockStore]:
        locks = RedisLockStore(redis_url, clock=clock)
        yield locks
        await locks.aclose()

    @pytest.fixture
    async def other_locks(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisLockStore]:
        other = RedisLockStore(redis_url, clock=clock, share_connection=False)
        yield other
        await other.aclose()


class RedisRevokeStoreSuite(RevokeStoreContract):
    @pytest.fixture
    async def revokes(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisRevokeStore]:
        revokes = RedisRevokeStore(redis_url, clock=clock)
        yield revokes
        await revokes.aclose()

    @pytest.fixture
    async def other_revokes(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisRevokeStore]:
        other = RedisRevokeStore(redis_url, clock=clock, share_connection=False)
        yield other
        await other.aclose()


def _foreign(redis_url: str) -> RedisOptions:
    """The options of ``redis_url`` with another prefix (another app's namespace) under
    this test's, so the test's clean-up removes its keys too."""
    options = parse_url(redis_url)
    return dataclasses.replace(options, prefix=f"{options.prefix}:foreign")


class RedisScheduleStoreSuite(ScheduleStoreContract):
    @pytest.fixture
    async def schedules(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisScheduleStore]:
        schedules = RedisScheduleStore(redis_url, clock=clock)
        yield schedules
        await schedules.aclose()

    @pytest.fixture
    async def other_schedules(
        self, clock: Clock, redis_url: str
    ) -> AsyncIterator[RedisScheduleStore]:
        other = RedisScheduleStore(redis_url, clock=clock, share_connection=False)
        yield other
        await other.aclose()

    @pytest.fixture
    async def foreign_schedules(
        self, clock: Clock, redis_url: str
    ) -> AsyncIterator[RedisScheduleStore]:
        foreign = RedisScheduleStore(_foreign(redis_url), clock=clock)
        yield foreign
        await foreign.aclose()


class RedisScheduleStoreOnTheServerClockSuite(ScheduleStoreContract):
    """With no clock given (production), claims follow the server's ``TIME``: the suite
    runs in real time."""

    @pytest.fixture
    def clock(self) -> Clock:
        return SystemClock()

    @pytest.fixture
    async def schedules(self, redis_url: str) -> AsyncIterator[RedisScheduleStore]:
        schedules = RedisScheduleStore(redis_url)
        assert schedules.server_clock is True
        yield schedules
        await schedules.aclose()

    @pytest.fixture
    async def other_schedules(self, redis_url: str) -> AsyncIterator[RedisScheduleStore]:
        other = RedisScheduleStore(redis_url, share_connection=False)
        yield other
        await other.aclose()

    @pytest.fixture
    async def foreign_schedules(self, redis_url: str) -> AsyncIterator[RedisScheduleStore]:
        foreign = RedisScheduleStore(_foreign(redis_url))
        yield foreign
        await foreign.aclose()


class RedisWorkflowStoreSuite(WorkflowStoreContract):
    @pytest.fixture
    async def workflows(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisWorkflowStore]:
        workflows = RedisWorkflowStore(redis_url, clock=clock)
        yield workflows
        await workflows.aclose()

    @pytest.fixture
    async def other_workflows(
        self, clock: Clock, redis_url: str
    ) -> AsyncIterator[RedisWorkflowStore]:
        other = RedisWorkflowStore(redis_url, clock=clock, share_connection=False)
        yield other
        await other.aclose()

    # -- beyond the contract: what the Redis store does its own way --------------------------

    async def test_wait_for_change_is_woken_by_a_publish_from_another_client(
        self, workflows: RedisWorkflowStore, other_workflows: RedisWorkflowStore, clock: Clock
    ) -> None:
        run = self.run(clock)
        await workflows.create_run(run)
        # The FakeClock stands still: only a notification can end this wait
        waiting = asyncio.ensure_future(workflows.wait_for_change(run.id, 3600.0))
        async with asyncio.timeout(WAIT_LIMIT):
            while not waiting.done():  # changes made before it subscribed go unseen
                # status changes (a renewal or a checkpoint does not wake a waiter)
                claimed = await other_workflows.claim_run(run.id, "w1", 3600.0)
                assert claimed is not None
                assert await other_workflows.release_run(run.id, claimed.fence)
                await asyncio.wait({waiting}, timeout=0.01)

    async def test_a_change_between_get_run_and_wait_for_change_ends_the_wait_at_once(
        self, workflows: RedisWorkflowStore, other_workflows: RedisWorkflowStore, clock: Clock
    ) -> None:
        run = self.run(clock)
        await workflows.create_run(run)
        assert await workflows.get_run(run.id) == run
        assert await other_workflows.claim_run(run.id, "w1", 3600.0) is not None
        async with asyncio.timeout(WAIT_LIMIT):  # published before it subscribed
            await workflows.wait_for_change(run.id, 3600.0)

    async def test_listing_with_a_parent_and_other_filters_pages_like_memory(
        self, workflows: RedisWorkflowStore, clock: Clock
    ) -> None:
        memory = MemoryWorkflowStore(clock=clock)
        parent = unique("parent")
        for i in range(9):
            run = self.run(
                clock,
                workflow=f"wf-{i % 2}",
                parent_id=parent if i != 4 else unique("parent"),
                created_at=clock.now() + 9 - i,  # created in the reverse of their ids
            )
            for store in (workflows, memory):
                await store.create_run(run)
                if i % 3 == 0:
                    assert await store.claim_run(run.id, "w1", 3600.0) is not None
        queries: list[dict[str, Any]] = [
            {"parent_id": parent},
            {"parent_id": parent, "workflow": "wf-0"},
            {"parent_id": parent, "workflow": "wf-0", "limit": 2, "offset": 1},
            {"parent_id": parent, "status": RunStatus.RUNNING, "offset": 1},
            {"parent_id": parent, "workflow": "wf-1", "status": RunStatus.PENDING, "limit": 1},
            {"workflow": "wf-1", "status": RunStatus.RUNNING},
            {"status": RunStatus.PENDING, "limit": 3, "offset": 2},
            {"limit": 4, "offset": 3},
            {"limit": 0},
        ]
        for query in queries:
            got = [r.id for r in await workflows.list_runs(**query)]
            assert got == [r.id for r in await memory.list_runs(**query)], query

    async def test_due_runs_tied_on_wake_at_come_in_creation_order(
        self, workflows: RedisWorkflowStore, clock: Clock
    ) -> None:
        wake = clock.now() - 1
        base = unique("tie")
        # Created in the reverse order of their ids, all due at the same time
        runs = [
            self.run(clock, id=f"{base}-{9 - i}", created_at=clock.now() + i, wake_at=wake)
            for i in range(4)
        ]
        for run in runs:
            await workflows.create_run(run)
        ids = {r.id for r in runs}
        got = await self.due(workflows, ids, limit=1)
        got += await self.due(workflows, ids, limit=2)
        got += await self.due(workflows, ids, limit=5)
        assert got == [r.id for r in runs]


class RedisWorkflowStoreOnTheServerClockSuite(WorkflowStoreContract):
    """With no clock given (production), the scripts read the server's ``TIME``: the
    suite runs in real time."""

    @pytest.fixture
    def clock(self) -> Clock:
        return SystemClock()

    @pytest.fixture
    async def workflows(self, redis_url: str) -> AsyncIterator[RedisWorkflowStore]:
        workflows = RedisWorkflowStore(redis_url)
        assert workflows.server_clock is True
        yield workflows
        await workflows.aclose()

    @pytest.fixture
    async def other_workflows(self, redis_url: str) -> AsyncIterator[RedisWorkflowStore]:
        other = RedisWorkflowStore(redis_url, share_connection=False)
        yield other
        await other.aclose()


class RedisRateLimiterSuite(RateLimiterContract):
    @pytest.fixture
    async def limiter(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisRateLimiter]:
        limiter = RedisRateLimiter(redis_url, clock=clock)
        yield limiter
        await limiter.aclose()

    @pytest.fixture
    async def other_limiter(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisRateLimiter]:
        other = RedisRateLimiter(redis_url, clock=clock, share_connection=False)
        yield other
        await other.aclose()


class RedisRateLimiterOnTheServerClockSuite(RateLimiterContract):
    """With no clock given (production), the script reads the server's ``TIME``: the
    suite runs in real time."""

    @pytest.fixture
    def clock(self) -> Clock:
        return SystemClock()

    @pytest.fixture
    async def limiter(self, redis_url: str) -> AsyncIterator[RedisRateLimiter]:
        limiter = RedisRateLimiter(redis_url)
        assert limiter.server_clock is True
        yield limiter
        await limiter.aclose()

    @pytest.fixture
    async def other_limiter(self, redis_url: str) -> AsyncIterator[RedisRateLimiter]:
        other = RedisRateLimiter(redis_url, share_connection=False)
        yield other
        await other.aclose()


class RedisControlChannelSuite(ControlChannelContract):
    @pytest.fixture
    async def control(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisControlChannel]:
        control = RedisControlChannel(redis_url, clock=clock)
        yield control
        await control.aclose()

    @pytest.fixture
    async def other_control(
        self, clock: Clock, redis_url: str
    ) -> AsyncIterator[RedisControlChannel]:
        other = RedisControlChannel(redis_url, clock=clock, share_connection=False)
        yield other
        await other.aclose()

    @pytest.fixture
    async def foreign_control(
        self, clock: Clock, redis_url: str
    ) -> AsyncIterator[RedisControlChannel]:
        # The same server, another app: its own prefix
        foreign_url = redis_url.replace("prefix=", "prefix=foreign-")
        foreign = RedisControlChannel(foreign_url, clock=clock)
        yield foreign
        await foreign.aclose()


class RedisEventBusSuite(EventBusContract):
    @pytest.fixture
    async def events(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisEventBus]:
        events = RedisEventBus(redis_url, clock=clock)
        yield events
        await events.aclose()

    @pytest.fixture
    async def other_events(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisEventBus]:
        other = RedisEventBus(redis_url, clock=clock, share_connection=False)
        yield other
        await other.aclose()

    @pytest.fixture
    async def foreign_events(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisEventBus]:
        # The same server, another app: its own prefix
        foreign = RedisEventBus(redis_url.replace("prefix=", "prefix=foreign-"), clock=clock)
        yield foreign
        await foreign.aclose()

    # -- beyond the contract: what pub/sub does when a connection drops ------------------------

    async def test_a_subscription_whose_connection_drops_subscribes_again_and_says_so(
        self, events: RedisEventBus, caplog: pytest.LogCaptureFixture
    ) -> None:
        ns = unique("t")
        subscription = await events.open_subscription(f"{ns}.*")
        try:
            node = subscription._redis  # type: ignore[attr-defined]  # its server (cluster: node)
            with caplog.at_level(logging.WARNING, logger="stem.events"):
                # The server drops every pattern subscriber (as it does one whose buffer
                # overflowed)
                listed = await node.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
                text = listed.decode() if isinstance(listed, bytes) else str(listed)
                ids = [
                    f.split("=", 1)[1]
                    for line in text.splitlines()
                    if " psub=1 " in f" {line} "
                    for f in line.split()
                    if f.startswith("id=")
                ]
                assert ids, text
                for client_id in ids:
                    await node.execute_command("CLIENT", "KILL", "ID", client_id)
                got = asyncio.ensure_future(anext(subscription))
                async with asyncio.timeout(WAIT_LIMIT):  # probes until one arrives again
                    while not got.done():
                        await events.publish(f"{ns}.probe", "again")
                        await asyncio.wait({got}, timeout=0.02)
            assert got.result() == (f"{ns}.probe", "again")
            assert "lost an event subscription's connection" in caplog.text
            assert "is back; events published while it was away were missed" in caplog.text
        finally:
            await subscription.aclose()


class RedisWorkflowScriptSuite(WorkflowScriptContract):
    @pytest.fixture
    async def workflows(self, clock: Clock, redis_url: str) -> AsyncIterator[RedisWorkflowStore]:
        workflows = RedisWorkflowStore(redis_url, clock=clock)
        yield workflows
        await workflows.aclose()
