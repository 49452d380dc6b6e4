"""Stem on Redis: Redis Streams for the queues, and every store in the same server.

::

    from stem import Stem

    app = Stem.from_url("redis://localhost:6379/0")
    app = Stem.from_url("rediss://:secret@redis.internal:6380/2?prefix=billing&ssl_ca_certs=/etc/ca.pem")

The classes can also be built directly, from a URL::

    broker = RedisBroker("redis://localhost:6379/0", clock=clock)

Every key starts with the URL's ``prefix`` (``stem`` by default), so several apps can
share one server. See ``docs/adapters/redis.md`` for the key layout, memory use and the
persistence settings that keep tasks safe.
"""

from __future__ import annotations

from ._adapter import RedisAdapter
from ._backend import RedisResultBackend
from ._broker import RedisBroker
from ._control import RedisControlChannel
from ._events import RedisEventBus
from ._ratelimit import RedisRateLimiter
from ._schedule import RedisScheduleStore
from ._stores import RedisLockStore, RedisRevokeStore
from ._url import RedisOptions, mask_url, parse_url
from ._workflow import RedisWorkflowStore

__all__ = [
    "RedisAdapter",
    "RedisBroker",
    "RedisControlChannel",
    "RedisEventBus",
    "RedisLockStore",
    "RedisOptions",
    "RedisRateLimiter",
    "RedisResultBackend",
    "RedisRevokeStore",
    "RedisScheduleStore",
    "RedisWorkflowStore",
    "adapter",
    "mask_url",
    "parse_url",
]

#: The adapter the ``stem.adapters`` entry point names for ``redis://`` and ``rediss://``.
adapter = RedisAdapter()
