"""The per-process rate limiter (GCRA)."""

from __future__ import annotations

from ._clock import Clock, SystemClock
from ._options import RateLimit
from .contracts import RateLimiter, RateLimiterCapabilities

__all__ = ["LocalRateLimiter"]


class LocalRateLimiter(RateLimiter):
    """The generic cell rate algorithm, in process memory.

    GCRA keeps one number per key, the theoretical arrival time (TAT) of the next
    start, and spaces starts ``period / count`` apart. A burst allowance was left out
    on purpose: with one, a burst followed by the steady rate puts more than
    ``count`` starts in some windows of ``period`` seconds.

    It lives in one process's memory, so each process (each worker) keeps the limit on
    its own: ``capabilities.shared`` is False. A shared one comes from an adapter
    (``app.rate_limiter``, Redis).
    """

    capabilities = RateLimiterCapabilities(shared=False)

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._tat: dict[str, float] = {}

    async def reserve(self, key: str, limit: RateLimit) -> float:
        now = self.clock.monotonic()
        start = max(self._tat.get(key, now), now)
        self._tat[key] = start + limit.interval
        return start - now
