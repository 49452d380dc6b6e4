"""The RateLimiter contract: when may the next start of a rate-limited task happen."""

from __future__ import annotations

import abc

from .._options import RateLimit

__all__ = ["RateLimiter", "RateLimiterCapabilities"]


class RateLimiterCapabilities:
    """What a rate limiter can do; contract tests for a missing capability are skipped, with a reason.

    Attributes:
        shared: limiters built on the same store (in other processes, on other machines)
            share one limit per key. A per-process limiter declares ``shared=False``.
    """

    shared: bool = True

    def __init__(self, **flags: bool) -> None:
        for name, value in flags.items():
            if not hasattr(RateLimiterCapabilities, name):
                raise TypeError(f"unknown rate limiter capability {name!r}")
            setattr(self, name, value)


class RateLimiter(abc.ABC):
    """Hands out start times so a task keeps to its :class:`RateLimit`.

    ``reserve`` always books a start: it returns how many seconds from now that start
    is. The caller starts the task then (by waiting, or by re-publishing it with an
    eta), so tasks over the limit are delayed, never dropped. A limiter shared by all
    workers (Redis, Postgres) makes the limit global; a local one makes it per process
    and says so in :attr:`capabilities`.
    """

    capabilities = RateLimiterCapabilities()

    @abc.abstractmethod
    async def reserve(self, key: str, limit: RateLimit) -> float:
        """Book the next start for ``key``; returns the delay in seconds (0 = now)."""

    async def aclose(self) -> None:
        """Release connections."""
