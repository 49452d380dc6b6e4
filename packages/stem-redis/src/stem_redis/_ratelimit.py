"""The Redis rate limiter: one limit per task for every worker that reaches the server."""

from __future__ import annotations

from stem import Clock, RateLimit, SystemClock
from stem.contracts import RateLimiter, RateLimiterCapabilities

from ._client import RedisStore
from ._url import RedisOptions

__all__ = ["RedisRateLimiter"]


class RedisRateLimiter(RedisStore, RateLimiter):
    """GCRA in one script: ``P:rate:KEY`` holds the key's theoretical arrival time (when
    its next start is free), so ``rate_limit="10/s"`` holds across every worker.

    Each ``reserve`` is one atomic round trip that books the next start and returns its
    delay; concurrent workers book distinct starts, ``period / count`` apart.

    Time follows the adapters' clock rule. In production (no ``clock`` given) the script
    reads the Redis server's clock (``TIME``), so the limit holds whatever the workers'
    clocks say. With a ``clock`` (a ``FakeClock`` in tests), ``now`` is read from it and
    sent with each call; workers whose clocks then disagree by *d* seconds can start up
    to *d* seconds early or late against each other's bookings. Every limiter of one
    prefix should use the same mode.

    Args:
        url: a ``redis://`` URL (or its parsed options); its ``prefix`` names the keys.
        clock: the clock ``now`` is read from; None (production) reads the server's.
        server_clock: override that choice: True reads the server's clock even with a
            ``clock``, False reads ``clock`` (the system clock if None).
        share_connection: False to take a client of its own instead of sharing the
            pool of every store of this server in this event loop.
    """

    capabilities = RateLimiterCapabilities(shared=True)

    def __init__(
        self,
        url: str | RedisOptions = "redis://localhost:6379/0",
        *,
        clock: Clock | None = None,
        server_clock: bool | None = None,
        share_connection: bool = True,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self._open(url, clock=clock, server_clock=server_clock, share_connection=share_connection)

    def _key(self, key: str) -> str:
        return f"{self.options.prefix}:rate:{key}"

    async def reserve(self, key: str, limit: RateLimit) -> float:
        delay = await self._client().script(
            "rate_reserve", [self._key(key)], [self._now(), repr(limit.interval)]
        )
        return max(0.0, float(delay))
