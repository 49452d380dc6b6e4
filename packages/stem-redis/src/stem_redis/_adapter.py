"""The ``redis://`` and ``rediss://`` adapter, registered in the ``stem.adapters`` entry-point group."""

from __future__ import annotations

from stem import Clock
from stem.contracts import Adapter

from ._backend import RedisResultBackend
from ._broker import RedisBroker
from ._control import RedisControlChannel
from ._events import RedisEventBus
from ._ratelimit import RedisRateLimiter
from ._schedule import RedisScheduleStore
from ._stores import RedisLockStore, RedisRevokeStore
from ._url import parse_url
from ._workflow import RedisWorkflowStore

__all__ = ["RedisAdapter"]


class RedisAdapter(Adapter):
    """Builds Redis brokers and stores from ``redis://`` and ``rediss://`` URLs.

    Stores built from URLs naming the same server with the same connection settings
    share one connection pool per event loop (the stores of one app, typically).

    Built without a clock (``Stem.from_url`` in production), the stores judge leases,
    locks and expiries by the Redis server's clock (``server_clock``); built with one
    (a ``FakeClock`` in tests), by that clock. See docs/adapters/redis.md, "Clocks".

    Raises (from every method):
        ConfigurationError: the URL is not a usable Redis URL (its password masked).
    """

    distribution = "stem-redis"

    def broker(self, url: str, *, clock: Clock | None = None) -> RedisBroker:
        return RedisBroker(parse_url(url), clock=clock)

    def result_backend(self, url: str, *, clock: Clock | None = None) -> RedisResultBackend:
        return RedisResultBackend(parse_url(url), clock=clock)

    def lock_store(self, url: str, *, clock: Clock | None = None) -> RedisLockStore:
        return RedisLockStore(parse_url(url), clock=clock)

    def revoke_store(self, url: str, *, clock: Clock | None = None) -> RedisRevokeStore:
        return RedisRevokeStore(parse_url(url), clock=clock)

    def schedule_store(self, url: str, *, clock: Clock | None = None) -> RedisScheduleStore:
        return RedisScheduleStore(parse_url(url), clock=clock)

    def rate_limiter(self, url: str, *, clock: Clock | None = None) -> RedisRateLimiter:
        """Shared by every worker on the server: ``rate_limit`` holds across a fleet."""
        return RedisRateLimiter(parse_url(url), clock=clock)

    def control_channel(self, url: str, *, clock: Clock | None = None) -> RedisControlChannel:
        return RedisControlChannel(parse_url(url), clock=clock)

    def workflow_store(self, url: str, *, clock: Clock | None = None) -> RedisWorkflowStore:
        """Every workflow key under one hash tag: on a cluster, on one node."""
        return RedisWorkflowStore(parse_url(url), clock=clock)

    def event_bus(self, url: str, *, clock: Clock | None = None) -> RedisEventBus:
        """Pub/sub under the URL's prefix; on a cluster, on the node of one slot."""
        return RedisEventBus(parse_url(url), clock=clock)
