"""The contract suites on the Redis adapter, for tests/contract/test_redis.py (one server)
and test_redis_cluster.py (a cluster): each builds its stores on the ``redis_url``
fixture, which the cluster's classes point at the cluster. The ``other_*`` fixtures open
a second client with connections of its own (``share_connection=False``), as another
process would, so the suites' concurrency tests race two clients for real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stem import Clock, SystemClock
from stem_adapter_tests import (
    BrokerContract,
    ControlChannelContract,
    LockStoreContract,
    RateLimiterContract,
    ResultBackendContract,
    RevokeStoreContract,
    ScheduleStoreContract,
)
from stem_redis import (
    RedisBroker,
    RedisControlChannel,
    RedisLockStore,
    RedisRateLimiter,
    RedisResultBackend,
    RedisRevokeStore,
    RedisScheduleStore,
)

__all__ = [
    "RedisBrokerSuite",
    "RedisControlChannelSuite",
    "RedisLockStoreSuite",
    "RedisRateLimiterOnTheServerClockSuite",
    "RedisRateLimiterSuite",
    "RedisResultBackendSuite",
    "RedisRevokeStoreSuite",
    "RedisScheduleStoreSuite",
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
