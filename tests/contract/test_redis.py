"""Every contract suite against the Redis adapter, on a real ``redis-server``.

Each test gets a key prefix of its own on the session's server (``redis_url``, from
tests/conftest.py); the suites' fixtures are in _redis_suites.py, shared with the
cluster's tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest
import redis
from _redis_suites import (
    RedisBrokerSuite,
    RedisControlChannelSuite,
    RedisEventBusSuite,
    RedisLockStoreSuite,
    RedisRateLimiterOnTheServerClockSuite,
    RedisRateLimiterSuite,
    RedisResultBackendSuite,
    RedisRevokeStoreSuite,
    RedisScheduleStoreOnTheServerClockSuite,
    RedisScheduleStoreSuite,
    RedisWorkflowScriptSuite,
    RedisWorkflowStoreOnTheServerClockSuite,
    RedisWorkflowStoreSuite,
)

from stem import Clock, FakeClock, RateLimit, Stem, SystemClock
from stem.contracts import ControlMessage, RateLimiter
from stem_adapter_tests import (
    BrokerContract,
    LockStoreContract,
    ResultBackendContract,
    RevokeStoreContract,
)
from stem_redis import (
    RedisBroker,
    RedisControlChannel,
    RedisLockStore,
    RedisRateLimiter,
    RedisResultBackend,
    RedisRevokeStore,
    RedisScheduleStore,
    RedisWorkflowStore,
)

pytestmark = pytest.mark.redis


class TestRedisBroker(RedisBrokerSuite):
    pass


class TestRedisResultBackend(RedisResultBackendSuite):
    pass


class TestRedisLockStore(RedisLockStoreSuite):
    pass


class TestRedisRevokeStore(RedisRevokeStoreSuite):
    pass


class TestRedisScheduleStore(RedisScheduleStoreSuite):
    pass


class TestRedisScheduleStoreOnTheServerClock(RedisScheduleStoreOnTheServerClockSuite):
    pass


class TestRedisWorkflowScripts(RedisWorkflowScriptSuite):
    pass


class TestRedisWorkflowStore(RedisWorkflowStoreSuite):
    pass


class TestRedisWorkflowStoreOnTheServerClock(RedisWorkflowStoreOnTheServerClockSuite):
    pass


class TestRedisRateLimiter(RedisRateLimiterSuite):
    pass


class TestRedisRateLimiterOnTheServerClock(RedisRateLimiterOnTheServerClockSuite):
    pass


class TestRedisControlChannel(RedisControlChannelSuite):
    pass


class TestRedisEventBus(RedisEventBusSuite):
    pass


_ServerSide = TypeVar(
    "_ServerSide", RedisBroker, RedisResultBackend, RedisLockStore, RedisRevokeStore
)


class _OnTheServerClock:
    """Stores built as production builds them (no clock: the scripts read the server's
    ``TIME``), so the suites run in real time. A second handle has connections of its own."""

    @pytest.fixture
    def clock(self) -> Clock:
        return SystemClock()

    @staticmethod
    def server_side(store: _ServerSide) -> _ServerSide:
        assert store.server_clock is True
        return store


class TestRedisBrokerOnTheServerClock(_OnTheServerClock, BrokerContract):
    @pytest.fixture
    async def broker(self, redis_url: str) -> AsyncIterator[RedisBroker]:
        broker = self.server_side(RedisBroker(redis_url))
        yield broker
        await broker.aclose()

    @pytest.fixture
    async def other_broker(self, redis_url: str) -> AsyncIterator[RedisBroker]:
        other = self.server_side(RedisBroker(redis_url, share_connection=False))
        yield other
        await other.aclose()

    @pytest.fixture
    async def companion_backend(self, redis_url: str) -> AsyncIterator[RedisResultBackend]:
        backend = self.server_side(RedisResultBackend(redis_url))
        yield backend
        await backend.aclose()

    @pytest.fixture
    async def companion_locks(self, redis_url: str) -> AsyncIterator[RedisLockStore]:
        locks = self.server_side(RedisLockStore(redis_url))
        yield locks
        await locks.aclose()


class TestRedisResultBackendOnTheServerClock(_OnTheServerClock, ResultBackendContract):
    @pytest.fixture
    async def backend(self, redis_url: str) -> AsyncIterator[RedisResultBackend]:
        backend = self.server_side(RedisResultBackend(redis_url))
        yield backend
        await backend.aclose()

    @pytest.fixture
    async def other_backend(self, redis_url: str) -> AsyncIterator[RedisResultBackend]:
        other = self.server_side(RedisResultBackend(redis_url, share_connection=False))
        yield other
        await other.aclose()


class TestRedisLockStoreOnTheServerClock(_OnTheServerClock, LockStoreContract):
    @pytest.fixture
    async def locks(self, redis_url: str) -> AsyncIterator[RedisLockStore]:
        locks = self.server_side(RedisLockStore(redis_url))
        yield locks
        await locks.aclose()

    @pytest.fixture
    async def other_locks(self, redis_url: str) -> AsyncIterator[RedisLockStore]:
        other = self.server_side(RedisLockStore(redis_url, share_connection=False))
        yield other
        await other.aclose()


class TestRedisRevokeStoreOnTheServerClock(_OnTheServerClock, RevokeStoreContract):
    @pytest.fixture
    async def revokes(self, redis_url: str) -> AsyncIterator[RedisRevokeStore]:
        revokes = self.server_side(RedisRevokeStore(redis_url))
        yield revokes
        await revokes.aclose()

    @pytest.fixture
    async def other_revokes(self, redis_url: str) -> AsyncIterator[RedisRevokeStore]:
        other = self.server_side(RedisRevokeStore(redis_url, share_connection=False))
        yield other
        await other.aclose()


class _Bookings:
    """The starts booked through the limiters it wraps, and by which worker."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.starts: list[tuple[int, float]] = []
        self._changed = asyncio.Event()

    def wrap(self, inner: RateLimiter, who: int) -> RateLimiter:
        bookings = self

        class Booking(RateLimiter):
            async def reserve(self, key: str, limit: RateLimit) -> float:
                delay = await inner.reserve(key, limit)
                bookings.starts.append((who, bookings.clock.now() + delay))
                bookings._changed.set()
                return delay

            async def aclose(self) -> None:
                await inner.aclose()

        return Booking()

    async def until(self, count: int) -> None:
        try:
            async with asyncio.timeout(10):
                while len(self.starts) < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(
                f"{len(self.starts)} of {count} starts were booked through app.rate_limiter "
                "within 10 s: do the workers use it?"
            )


class TestRedisRateLimitAcrossWorkers:
    """``Stem.from_url`` takes the adapter's shared stores, and workers use its limiter."""

    async def test_from_url_keeps_the_adapters_shared_stores(self, redis_url: str) -> None:
        mine = RedisRateLimiter(redis_url)
        app, other = Stem.from_url(redis_url), Stem.from_url(redis_url, rate_limiter=mine)
        try:
            assert isinstance(app.rate_limiter, RedisRateLimiter)
            assert isinstance(app.control_channel, RedisControlChannel)
            assert isinstance(app.schedule_store, RedisScheduleStore)
            assert isinstance(app.workflow_store, RedisWorkflowStore)
            assert app.worker().rate_limiter is app.rate_limiter
            assert other.rate_limiter is mine  # one passed in wins
        finally:
            await app.aclose()
            await other.aclose()

    async def test_two_workers_keep_one_rate_limit_between_them(self, redis_url: str) -> None:
        clock = FakeClock()
        # Two apps on one server, as on two machines: each has a limiter of its own
        apps = [Stem.from_url(redis_url, clock=clock) for _ in range(2)]
        bookings = _Bookings(clock)
        tasks = []
        for who, app in enumerate(apps):
            assert isinstance(app.rate_limiter, RedisRateLimiter)
            app.rate_limiter = bookings.wrap(app.rate_limiter, who)

            @app.task(name="limited", rate_limit="5/s")
            async def limited(i: int) -> int:
                return i

            tasks.append(limited)
        start = clock.now()
        try:
            async with apps[0].worker(concurrency=5), apps[1].worker(concurrency=5):
                refs = await apps[0].enqueue_many(tasks[0].call(i) for i in range(10))
                # Every task books a start before the clock moves: the six due within
                # rate_limit_hold (1 s) wait in their slots, the rest go back with an eta
                await bookings.until(10)
                # One limit for both: ten starts 0.2 s apart, none twice
                starts = sorted(at - start for _, at in bookings.starts)
                assert starts == pytest.approx([0.2 * i for i in range(10)], abs=1e-6)
                # Six wait in slots, and a worker has five: both booked from the one limit
                assert {who for who, _ in bookings.starts} == {0, 1}
                clock.advance(2.0)
                async with asyncio.timeout(10):
                    results = [await apps[0].wait_for_task(ref) for ref in refs]
            assert [r.value for r in results] == list(range(10))
            assert len(bookings.starts) == 10  # a postponed task does not book again
        finally:
            for app in apps:
                await app.aclose()


class TestRedisControlChannelEntries:
    async def test_entries_that_are_not_control_messages_are_skipped(
        self, redis_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        control = RedisControlChannel(redis_url, clock=FakeClock())
        reply_to = "r-1"
        key = f"{{{control.options.prefix}:control}}:replies:{reply_to}"
        raw = redis.Redis.from_url(redis_url.partition("?")[0])
        first, last = (ControlMessage(id=f"m-{i}", command="pong") for i in range(2))
        replies = control.replies(reply_to)
        try:
            await control.reply(reply_to, first)
            # Written by hand between two replies: no message field, and junk in it
            raw.xadd(key, {"colour": "blue"})
            raw.xadd(key, {"m": b"\xff\x00 not json"})
            await control.reply(reply_to, last)
            assert [await anext(replies), await anext(replies)] == [first, last]
        finally:
            await replies.aclose()  # type: ignore[attr-defined]
            await control.aclose()
            raw.close()
        skipped = [r for r in caplog.records if "not a Stem control message" in r.getMessage()]
        assert len(skipped) == 2
