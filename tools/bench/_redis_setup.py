"""The one ``redis-server`` every system of a run shares, and what it reports about itself.

The server comes from ``tools/redis_server.py`` (the project's helper that the tests use
too: a free loopback port, no persistence, Debian's package installed when missing and
running as root), or is one the user names with ``--redis-url``. Either way the header
prints the version and the persistence settings the server reports.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from _measure import BenchError

TOOLS = Path(__file__).resolve().parent.parent

__all__ = ["Server", "base_url", "flush", "server_settings", "start_server"]


class Server(Protocol):
    url: str

    def stop(self) -> None: ...


@dataclass
class _External:
    """A server the user started: used as it is, never stopped."""

    url: str

    def stop(self) -> None:
        pass


def start_server(url: str | None) -> Server:
    """The user's server at ``url``, or a new one on a free loopback port."""
    if url:
        return _External(url.rstrip("/"))
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    import redis_server

    try:
        server: Server = redis_server.start(appendonly=False)  # no persistence at all
    except redis_server.RedisServerUnavailable as exc:
        raise BenchError(f"no Redis server: {exc}") from exc
    return server


def base_url(server: Server) -> str:
    """The server's URL without a database number (the benchmark appends /0 and /1)."""
    url = server.url.rstrip("/")
    head, _, tail = url.rpartition("/")
    return head if tail.isdigit() and head.count("/") >= 2 else url


def server_settings(url: str) -> dict[str, str]:
    """Version and persistence, as the server reports them."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
        config = client.config_get("save") | client.config_get("appendonly")
        config |= client.config_get("appendfsync")
    except redis.RedisError as exc:
        raise BenchError(f"cannot talk to the Redis server at {url}: {exc}") from exc
    finally:
        client.close()
    return {
        "version": str(info.get("redis_version", "?")),
        "save": str(config.get("save", "?")),
        "appendonly": str(config.get("appendonly", "?")),
        "appendfsync": str(config.get("appendfsync", "?")),
    }


def flush(url: str) -> None:
    """Empty the database ``url`` names (each system starts on empty databases)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
