"""The RateLimiter contract suite."""

from __future__ import annotations

import asyncio

import pytest

from stem import Clock, RateLimit
from stem.contracts import RateLimiter

from ._support import ContractSuite, requires, unique

__all__ = ["RateLimiterContract"]

FIVE_A_SECOND = RateLimit(5, 1.0)  # starts 0.2 s apart
STEP = FIVE_A_SECOND.interval


class RateLimiterContract(ContractSuite):
    """The behaviour every :class:`stem.contracts.RateLimiter` must have.

    Subclass it as ``Test<YourRateLimiter>`` and define a ``limiter`` fixture that
    builds the limiter on the ``clock`` fixture. A limiter shared by every worker
    (``capabilities.shared``, the default) must also override ``other_limiter`` to
    build a second limiter on the same store, as another process would; a per-process
    limiter declares ``RateLimiterCapabilities(shared=False)`` and the sharing tests
    are skipped, saying so.

    The rules: ``reserve`` books the next start of a key and returns how far away it is,
    never a negative delay; starts are spaced evenly, ``period / count`` apart (GCRA,
    with no burst allowance, so idle time does not bank starts); a burst of calls books
    one start each, later and later, and none is dropped.
    """

    subject_fixture = "limiter"

    @pytest.fixture
    def limiter(self, clock: Clock) -> RateLimiter:
        """The rate limiter under test, built on ``clock``; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `limiter` fixture that builds the RateLimiter"
        )

    @pytest.fixture
    def other_limiter(self, limiter: RateLimiter) -> RateLimiter:
        """A second limiter on the same store (by default the same object)."""
        return limiter

    @pytest.fixture
    def key(self) -> str:
        return unique("task")

    def spaced(self, clock: Clock, count: int, first: float = 0.0) -> list[object]:
        """``count`` delays one step apart from ``first``, compared as :meth:`near` does."""
        return [self.near(clock, first + i * STEP) for i in range(count)]

    async def test_the_first_start_is_now(self, limiter: RateLimiter, key: str) -> None:
        assert await limiter.reserve(key, FIVE_A_SECOND) == 0.0

    async def test_starts_are_spaced_evenly(
        self, limiter: RateLimiter, clock: Clock, key: str
    ) -> None:
        delays = [await limiter.reserve(key, FIVE_A_SECOND) for _ in range(5)]
        assert delays == self.spaced(clock, 5)

    async def test_a_burst_books_increasing_delays_and_drops_nothing(
        self, limiter: RateLimiter, clock: Clock, key: str
    ) -> None:
        delays = await asyncio.gather(*(limiter.reserve(key, FIVE_A_SECOND) for _ in range(20)))
        # Every call booked a start of its own: twenty distinct slots, one step apart
        assert sorted(delays) == self.spaced(clock, 20)
        assert min(delays) >= 0.0

    async def test_a_start_booked_partway_waits_only_for_the_rest(
        self, limiter: RateLimiter, clock: Clock, key: str
    ) -> None:
        assert await limiter.reserve(key, FIVE_A_SECOND) == 0.0  # the next slot is at 0.2
        await self.advance(clock, 0.05)
        assert await limiter.reserve(key, FIVE_A_SECOND) == self.near(clock, STEP - 0.05)
        # Keeping to the rate exactly, every start is at once
        await self.advance(clock, STEP - 0.05)
        assert await limiter.reserve(key, FIVE_A_SECOND) == self.near(clock, STEP)

    async def test_delays_are_never_negative_and_idle_time_banks_no_burst(
        self, limiter: RateLimiter, clock: Clock, key: str
    ) -> None:
        await limiter.reserve(key, FIVE_A_SECOND)
        await self.advance(clock, 3.0)  # idle for fifteen steps
        delays = [await limiter.reserve(key, FIVE_A_SECOND) for _ in range(3)]
        # Not three starts at once: the next ones are spaced as ever
        assert delays == self.spaced(clock, 3)
        assert min(delays) >= 0.0

    async def test_the_step_follows_the_limit(
        self, limiter: RateLimiter, clock: Clock, key: str
    ) -> None:
        per_minute = RateLimit(2, 60.0)
        delays = [await limiter.reserve(key, per_minute) for _ in range(3)]
        assert delays == [self.near(clock, 0.0), self.near(clock, 30.0), self.near(clock, 60.0)]

    async def test_keys_are_independent(self, limiter: RateLimiter, clock: Clock, key: str) -> None:
        other_key = unique("task")
        busy = [await limiter.reserve(key, FIVE_A_SECOND) for _ in range(3)]
        assert busy == self.spaced(clock, 3)
        assert await limiter.reserve(other_key, FIVE_A_SECOND) == 0.0
        assert await limiter.reserve(key, FIVE_A_SECOND) == self.near(clock, 3 * STEP)

    @requires("shared")
    async def test_two_limiters_on_one_store_share_the_limit(
        self, limiter: RateLimiter, other_limiter: RateLimiter, clock: Clock, key: str
    ) -> None:
        assert other_limiter is not limiter, (
            f"{type(limiter).__name__} declares shared=True: override the other_limiter "
            "fixture to build a second limiter on the same store"
        )
        # Two workers taking turns keep to one limit between them
        delays = [
            await (limiter if i % 2 == 0 else other_limiter).reserve(key, FIVE_A_SECOND)
            for i in range(4)
        ]
        assert delays == self.spaced(clock, 4)

    @requires("shared")
    async def test_a_burst_across_two_limiters_books_distinct_starts(
        self, limiter: RateLimiter, other_limiter: RateLimiter, clock: Clock, key: str
    ) -> None:
        handles = [limiter, other_limiter] * 8
        delays = await asyncio.gather(*(h.reserve(key, FIVE_A_SECOND) for h in handles))
        assert sorted(delays) == self.spaced(clock, len(handles))
