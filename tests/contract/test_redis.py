"""Every contract suite against the Redis adapter, on a real ``redis-server``.

Each test gets a key prefix of its own on the session's server (``redis_url``, from
tests/conftest.py). The ``other_*`` fixtures open a second client with connections of
its own (``share_connection=False``), as another process would, so the suites'
concurrency tests race two clients for real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stem import Clock
from stem_adapter_tests import (
    BrokerContract,
    LockStoreContract,
    ResultBackendContract,
    RevokeStoreContract,
)
from stem_redis import RedisBroker, RedisLockStore, RedisResultBackend, RedisRevokeStore

pytestmark = pytest.mark.redis


class TestRedisBroker(BrokerContract):
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


class TestRedisResultBackend(ResultBackendContract):
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


class TestRedisLockStore(LockStoreContract):
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


class TestRedisRevokeStore(RevokeStoreContract):
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
