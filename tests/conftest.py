"""Fixtures shared by the workspace's tests: a Redis server for the tests marked ``redis``.

``redis_server_url`` is ``STEM_TEST_REDIS_URL`` when set, else a ``redis-server`` that
``tools/redis_server.py`` starts on a free loopback port for the session (one per
pytest-xdist worker; it installs Debian's package when missing and running as root).
Where no server can be had the tests skip, saying how to get one, or fail when
``STEM_TEST_REQUIRE_ALL=1`` (CI).

``redis_url`` gives each test a key prefix of its own (``?prefix=...``), so tests share
a server, in parallel too, without seeing each other's keys.

``redis_cluster_url`` does the same on a Redis Cluster of three primaries:
``STEM_TEST_REDIS_CLUSTER_URL`` (``redis+cluster://host:port,...``) when set, else three
``redis-server`` nodes started and joined for the session (one cluster per xdist worker).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stem_adapter_tests import skip_or_fail

TOOLS = Path(__file__).resolve().parent.parent / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import redis_server  # noqa: E402  (tools/ is put on the path just above)

REDIS_URL_ENV = "STEM_TEST_REDIS_URL"
REDIS_CLUSTER_URL_ENV = "STEM_TEST_REDIS_CLUSTER_URL"


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """The URL of a Redis server for this session (see the module docstring)."""
    given = os.environ.get(REDIS_URL_ENV, "").strip()
    if given:
        yield given
        return
    try:
        server = redis_server.start()
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no Redis server: {exc}")
    with server:
        yield server.url


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """``redis_server_url`` with a key prefix of this test's own."""
    url, prefix = _with_own_prefix(redis_server_url)
    yield url
    if os.environ.get(REDIS_URL_ENV, "").strip():
        _delete_keys(redis_server_url, prefix)  # a server we did not start: leave it clean


@pytest.fixture(scope="session")
def redis_cluster_server_url() -> Iterator[str]:
    """The ``redis+cluster://`` URL of a Redis Cluster for this session (see the module docstring)."""
    given = os.environ.get(REDIS_CLUSTER_URL_ENV, "").strip()
    if given:
        yield given
        return
    try:
        cluster = redis_server.start_cluster(3)
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no Redis Cluster: {exc}")
    with cluster:
        yield cluster.url


@pytest.fixture
def redis_cluster_url(redis_cluster_server_url: str) -> Iterator[str]:
    """``redis_cluster_server_url`` with a key prefix of this test's own."""
    url, prefix = _with_own_prefix(redis_cluster_server_url)
    yield url
    if os.environ.get(REDIS_CLUSTER_URL_ENV, "").strip():
        from redis.cluster import ClusterNode, RedisCluster

        from stem_redis import parse_url

        options = parse_url(redis_cluster_server_url)
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in options.nodes],
            username=options.username,
            password=options.password,
            ssl=options.tls,
        )
        try:
            for pattern in (f"{prefix}:*", f"{{{prefix}:*"):
                for key in list(client.scan_iter(match=pattern, count=1000)):
                    client.unlink(key)
        finally:
            client.close()


def _with_own_prefix(url: str) -> tuple[str, str]:
    """``url`` with a key prefix no other test uses, and that prefix."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}prefix={prefix}", prefix


def _delete_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url.partition("?")[0])
    try:
        for pattern in (f"{prefix}:*", f"{{{prefix}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                client.unlink(*keys[start : start + 500])
    finally:
        client.close()
