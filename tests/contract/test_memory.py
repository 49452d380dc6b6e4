"""Every contract suite against the in-memory adapter, the reference implementation."""

from __future__ import annotations

import logging

import pytest

from stem import Clock, FakeClock, Stem
from stem._ratelimit import LocalRateLimiter
from stem.memory import (
    MemoryBroker,
    MemoryControlChannel,
    MemoryEventBus,
    MemoryLockStore,
    MemoryResultBackend,
    MemoryRevokeStore,
    MemoryScheduleStore,
    MemoryWorkflowStore,
)
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

pytestmark = pytest.mark.memory


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    async def broker(self, clock: Clock) -> MemoryBroker:
        return MemoryBroker(clock=clock)


class TestMemoryResultBackend(ResultBackendContract):
    @pytest.fixture
    async def backend(self, clock: Clock) -> MemoryResultBackend:
        return MemoryResultBackend(clock=clock)


class TestMemoryLockStore(LockStoreContract):
    @pytest.fixture
    async def locks(self, clock: Clock) -> MemoryLockStore:
        return MemoryLockStore(clock=clock)


class TestMemoryRevokeStore(RevokeStoreContract):
    @pytest.fixture
    async def revokes(self, clock: Clock) -> MemoryRevokeStore:
        return MemoryRevokeStore(clock=clock)


class TestMemoryScheduleStore(ScheduleStoreContract):
    @pytest.fixture
    async def schedules(self, clock: Clock) -> MemoryScheduleStore:
        return MemoryScheduleStore(clock=clock)

    @pytest.fixture
    async def foreign_schedules(self, clock: Clock) -> MemoryScheduleStore:
        return MemoryScheduleStore(clock=clock)  # another app's: a store of its own


class TestLocalRateLimiter(RateLimiterContract):
    """The per-process limiter: it declares shared=False, so the sharing tests skip."""

    @pytest.fixture
    async def limiter(self, clock: Clock) -> LocalRateLimiter:
        return LocalRateLimiter(clock=clock)


class TestMemoryControlChannel(ControlChannelContract):
    @pytest.fixture
    async def control(self, clock: Clock) -> MemoryControlChannel:
        return MemoryControlChannel(clock=clock)

    @pytest.fixture
    async def foreign_control(self, clock: Clock) -> MemoryControlChannel:
        return MemoryControlChannel(clock=clock)  # memory://OTHER: another channel object


class TestMemoryEventBus(EventBusContract):
    @pytest.fixture
    async def events(self, clock: Clock) -> MemoryEventBus:
        return MemoryEventBus(clock=clock)

    @pytest.fixture
    async def foreign_events(self, clock: Clock) -> MemoryEventBus:
        return MemoryEventBus(clock=clock)  # memory://OTHER: another bus object

    async def test_a_subscriber_past_its_backlog_loses_the_oldest_and_is_warned(
        self, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        bus = MemoryEventBus(clock=clock, backlog=3)
        async with bus.subscription("*") as events:
            with caplog.at_level(logging.WARNING, logger="stem.events"):
                for i in range(5):
                    await bus.publish(f"e.{i}", i)
            assert [await anext(events) for _ in range(3)] == [("e.2", 2), ("e.3", 3), ("e.4", 4)]
        assert "fell 3 events behind" in caplog.text


class TestMemoryAdapterWiring:
    """What ``Stem.from_url("memory://...")`` gives, and which limiter a worker takes."""

    async def test_memory_urls_give_a_control_channel_and_a_schedule_store_but_no_shared_limiter(
        self,
    ) -> None:
        first, second = Stem.from_url("memory://wiring"), Stem.from_url("memory://wiring")
        try:
            assert isinstance(first.control_channel, MemoryControlChannel)
            assert isinstance(first.schedule_store, MemoryScheduleStore)
            # memory://NAME: the apps of one process share them, as they share the queues
            assert second.control_channel is first.control_channel
            assert second.schedule_store is first.schedule_store
            # No limiter shared between workers: each worker keeps the limit on its own
            assert first.rate_limiter is None
            assert isinstance(first.worker().rate_limiter, LocalRateLimiter)
        finally:
            await first.aclose()
            await second.aclose()

    async def test_a_worker_takes_the_apps_limiter_unless_given_one(self) -> None:
        clock = FakeClock()
        shared, own = LocalRateLimiter(clock=clock), LocalRateLimiter(clock=clock)
        app = Stem(MemoryBroker(clock=clock), clock=clock, rate_limiter=shared)
        try:
            assert app.worker().rate_limiter is shared
            assert app.worker(rate_limiter=own).rate_limiter is own
        finally:
            await app.aclose()


class TestMemoryWorkflowStore(WorkflowStoreContract):
    @pytest.fixture
    async def workflows(self, clock: Clock) -> MemoryWorkflowStore:
        return MemoryWorkflowStore(clock=clock)


class TestMemoryWorkflowScripts(WorkflowScriptContract):
    @pytest.fixture
    async def workflows(self, clock: Clock) -> MemoryWorkflowStore:
        return MemoryWorkflowStore(clock=clock)
