"""tools/redis_server.py: the helper that starts the tests' and benchmarks' Redis servers."""

from __future__ import annotations

import shutil
import socket

import pytest
import redis_server  # tools/ is on sys.path (tests/conftest.py)

from stem_adapter_tests import skip_or_fail

pytestmark = pytest.mark.redis


def ping(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return bool(client.ping())
    finally:
        client.close()


@pytest.fixture
def binary() -> str:
    try:
        return redis_server.find_binary()
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no redis-server: {exc}")


def test_start_answers_ping_and_stop_cleans_up(binary: str) -> None:
    with redis_server.start() as server:
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert ping(server.url)
        directory = server.directory
        assert directory.is_dir()
    assert not server.running
    assert not directory.exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), 0.5):
        pass


def test_appendonly_data_survives_a_restart(binary: str) -> None:
    import redis

    with redis_server.start(appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            client.set("kept", "yes")
        finally:
            client.close()
        server.restart()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.get("kept") == b"yes"
        finally:
            client.close()


def test_no_persistence_by_default(binary: str) -> None:
    import redis

    with redis_server.start() as server:
        client = redis.Redis.from_url(server.url)
        try:
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert client.config_get("save") == {"save": ""}
        finally:
            client.close()


def test_a_missing_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(redis_server.os, "geteuid", lambda: 1000)  # not root: no install
    with pytest.raises(redis_server.RedisServerUnavailable, match="apt-get install redis-server"):
        redis_server.find_binary()


def test_a_server_that_cannot_start_quotes_its_log(binary: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(redis_server.RedisServerUnavailable, match=str(port)):
            redis_server.start(port)
