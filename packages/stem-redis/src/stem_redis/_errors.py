"""redis-py's errors, translated at the boundary into Stem's own, naming the server."""

from __future__ import annotations

from redis import exceptions as rx

from stem import AdapterError

from ._url import RedisOptions

__all__ = ["translate"]


def translate(exc: Exception, options: RedisOptions) -> AdapterError:
    """An AdapterError naming the server (password masked) and what to do.

    The caller raises it ``from exc``.
    """
    where = options.masked_url
    text = _scrub(str(exc), options)
    if isinstance(exc, rx.AuthenticationError) or _says(
        text, "WRONGPASS", "NOAUTH", "invalid password"
    ):
        return AdapterError(
            f"the Redis server at {where} refused to authenticate: check the user and password "
            f"in the URL (redis://user:password@host:port/db) ({text})"
        )
    if isinstance(exc, rx.NoPermissionError) or _says(text, "NOPERM"):
        return AdapterError(
            f"the Redis user of {where} lacks a permission Stem needs ({text}); Stem runs Lua "
            "scripts (EVALSHA) and stream, sorted set, hash and pub/sub commands on its keys"
        )
    if isinstance(exc, rx.BusyLoadingError):
        return AdapterError(
            f"the Redis server at {where} is loading its data set after a restart; try again "
            "in a moment"
        )
    if isinstance(exc, rx.TimeoutError):
        return AdapterError(
            f"the Redis server at {where} did not answer within {options.socket_timeout:g} s "
            f"({text}): is it overloaded or unreachable? Raise ?socket_timeout=SECONDS in the "
            "URL if slow replies are expected"
        )
    if _says(text, "Cluster mode is not enabled", "cluster support disabled"):
        return AdapterError(
            f"the Redis server at {where} is not a Redis Cluster node: use redis:// (or "
            "rediss://) for a single server, redis+cluster:// for the nodes of a cluster"
        )
    if not options.cluster and isinstance(exc, rx.AskError):  # MOVED or ASK: a cluster node
        return AdapterError(
            f"the Redis server at {where} is a node of a Redis Cluster ({text}): use "
            "redis+cluster://host:port[,host:port...] (rediss+cluster:// for TLS) instead"
        )
    if isinstance(exc, rx.ConnectionError) or _says(text, "Redis Cluster cannot be connected"):
        return AdapterError(
            f"cannot reach the Redis server at {where} ({text}): check that it is running and "
            "that host, port and TLS (rediss://) are right"
        )
    if isinstance(exc, rx.OutOfMemoryError) or _says(text, "OOM "):
        return AdapterError(
            f"the Redis server at {where} is out of memory (maxmemory): {text}. Raise "
            "maxmemory, and set maxmemory-policy noeviction so queued tasks are never evicted"
        )
    if isinstance(exc, rx.ReadOnlyError):
        return AdapterError(
            f"the Redis server at {where} is a read-only replica: point the URL at the primary"
        )
    if _says(text, "WRONGTYPE"):
        return AdapterError(
            f"a key under Stem's prefix {options.prefix!r} at {where} holds data Stem did not "
            f"write ({text}): give this app a prefix of its own (?prefix=NAME in the URL)"
        )
    return AdapterError(f"Redis error at {where}: {text}")


def _says(text: str, *words: str) -> bool:
    return any(word in text for word in words)


def _scrub(text: str, options: RedisOptions) -> str:
    """A driver message without the password, should one ever quote it."""
    if options.password:
        text = text.replace(options.password, "***")
    return text
