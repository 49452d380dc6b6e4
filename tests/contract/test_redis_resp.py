"""The RESP client of the single-server path (stem_redis._resp): it answers what redis-py
answers, keeps pipelined replies in order, raises redis-py's exceptions (so the adapter's
errors read the same), and survives a server that dies, stops or speaks TLS."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis_server
from redis.asyncio import Redis
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from stem import AdapterError, ConfigurationError
from stem_adapter_tests import skip_or_fail
from stem_redis import RedisResultBackend, parse_url
from stem_redis._client import CLIENT_ENVIRONMENT, RedisClient
from stem_redis._resp import CONNECTIONS, RespClient, pack

pytestmark = pytest.mark.redis


@pytest.fixture
def key(redis_url: str) -> str:
    """A key under this test's own prefix."""
    return f"{parse_url(redis_url).prefix}:{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    subject = RedisClient(parse_url(redis_url))
    assert subject.resp is not None  # the default on one server
    yield subject
    await subject.aclose()


@pytest.fixture
async def reference(redis_url: str) -> AsyncIterator[Redis]:
    """redis-py's asyncio client, as RedisClient configures it: what replies must equal."""
    options = parse_url(redis_url)
    subject = Redis(host=options.host, port=options.port, db=options.db)
    yield subject
    await subject.aclose()


@pytest.fixture
def server() -> Iterator[redis_server.RedisServer]:
    """A server of this test's own, to kill, stop or restart."""
    try:
        started = redis_server.start()
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no redis-server: {exc}")
    try:
        yield started
    finally:
        _signal(started, signal.SIGCONT)
        started.stop()


def _signal(server: redis_server.RedisServer, sig: signal.Signals) -> None:
    process = server._process
    if process is not None and process.poll() is None:
        os.kill(process.pid, sig)


def _sent(resp: RespClient, *args: Any) -> asyncio.Future[Any]:
    """A call written now on the client's first connection (open): its reply's future."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    resp._open[0].send(pack(args), future)
    return future


# -- replies ------------------------------------------------------------------------------


def _calls(key: str) -> list[tuple[Any, ...]]:
    """Commands answering with every kind of RESP2 reply, and some redis-py reshapes."""
    return [
        ("SET", key, "v\x00\xff é"),  # status (redis-py: True)
        ("GET", key),  # bulk string, binary safe
        ("GET", f"{key}:none"),  # null bulk string
        ("INCRBY", f"{key}:n", 41),  # integer
        ("INCRBYFLOAT", f"{key}:f", 0.5),  # bulk (redis-py: float)
        ("RPUSH", f"{key}:l", "a", b"b", 3, 4.25),
        ("LRANGE", f"{key}:l", 0, -1),  # array
        ("LRANGE", f"{key}:none", 0, -1),  # empty array
        ("HSET", f"{key}:h", "f1", "1", "f2", "2"),
        ("HGETALL", f"{key}:h"),
        ("SADD", f"{key}:s", "x", "y"),
        ("SMEMBERS", f"{key}:s"),  # redis-py: a set
        ("ZADD", f"{key}:z", 1.5, "a", 2, "b"),
        ("ZREVRANGE", f"{key}:z", 0, -1, "WITHSCORES"),
        ("XADD", f"{key}:x", "1-1", "m", "body"),
        ("XRANGE", f"{key}:x", "-", "+"),  # redis-py: (id, {field: value}) pairs
        ("XREVRANGE", f"{key}:x", "+", "-", "COUNT", 1),
        ("EXISTS", key, f"{key}:none"),
        ("PING",),  # redis-py: True
        ("ECHO", b"\r\n$-1\r\n"),  # bytes that look like RESP
        ("EVAL", "return {1, 'two', {3, {'four'}}, false, 5.9}", 0),  # nested, nil, 5
        ("EVAL", "return redis.status_reply('FINE')", 0),
        ("EVAL", "return {1, redis.error_reply('INNER bad')}", 0),  # an error inside
        ("EVAL", "return nil", 0),
        ("EVAL", "return {}", 0),
        ("SCRIPT", "LOAD", "return 1"),
        ("SCRIPT LOAD", "return 2"),  # redis-py splits it and decodes the reply
        ("TIME",),  # redis-py: (seconds, microseconds)
        ("DEL", key, f"{key}:n", f"{key}:f", f"{key}:l", f"{key}:h", f"{key}:s"),
        ("DEL", f"{key}:z", f"{key}:x"),
    ]


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (errors: same class and text)."""
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


async def test_every_reply_equals_redis_pys(
    client: RedisClient, reference: Redis, key: str
) -> None:
    # The same calls on keys of their own (they change what they touch)
    for call, twin in zip(_calls(f"{key}:a"), _calls(f"{key}:b"), strict=True):
        ours = await client.command(*call)
        theirs = await reference.execute_command(*twin)
        if call[0] == "TIME":
            assert type(ours) is type(theirs) and len(ours) == 2, call
            continue
        assert _same(ours, theirs), (call, ours, theirs)


async def test_a_batch_equals_redis_pys_pipeline(
    client: RedisClient, reference: Redis, key: str
) -> None:
    ours = await client.commands([c for c in _calls(f"{key}:a") if c[0] != "TIME"])
    async with reference.pipeline(transaction=False) as pipe:
        for call in [c for c in _calls(f"{key}:b") if c[0] != "TIME"]:
            pipe.execute_command(*call)
        theirs = await pipe.execute()
    assert _same(ours, theirs)


async def test_an_error_reply_is_redis_pys_exception(client: RedisClient, key: str) -> None:
    assert client.resp is not None
    with pytest.raises(NoScriptError):  # what script() loads the script again on
        await client.resp.execute("EVALSHA", "0" * 40, 0)
    await client.command("LPUSH", key, "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await client.resp.execute("GET", key)
    with pytest.raises(AdapterError, match="holds data Stem did not write"):
        await client.command("GET", key)  # translated as before
    # In a batch, the first error is raised once every reply came; the batch ran
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await client.resp.execute_many([("SET", f"{key}:b", 1), ("GET", key), ("INCR", f"{key}:b")])
    assert await client.command("GET", f"{key}:b") == b"2"
    # A script the server lost is loaded again (NOSCRIPT means nothing ran)
    await client.command("SCRIPT", "FLUSH")
    assert await client.script("lock_owner", [key + ":lock"], [""]) is None


async def test_a_bool_argument_is_refused_as_redis_py_refuses_it(client: RedisClient) -> None:
    assert client.resp is not None
    with pytest.raises(redis.exceptions.DataError):
        await client.resp.execute("SET", "k", True)  # type: ignore[arg-type]


# -- pipelining ----------------------------------------------------------------------------


async def test_concurrent_calls_are_pipelined_and_keep_their_order(
    client: RedisClient, key: str
) -> None:
    assert client.resp is not None
    echoes = [client.command("ECHO", f"call-{i}" * (i % 7)) for i in range(500)]
    counts = [client.command("INCR", key) for _ in range(500)]
    batches = [client.commands([("ECHO", f"b{i}"), ("ECHO", f"c{i}")]) for i in range(100)]
    results = await asyncio.gather(*echoes, *counts, *batches)
    assert results[:500] == [f"call-{i}".encode() * (i % 7) for i in range(500)]
    assert sorted(results[500:1000]) == list(range(1, 501))
    assert results[1000:] == [[f"b{i}".encode(), f"c{i}".encode()] for i in range(100)]
    assert 1 <= len(client.resp._open) <= CONNECTIONS  # a few sockets, not one per call


async def test_pool_size_one_keeps_one_connection(redis_url: str) -> None:
    client = RedisClient(parse_url(f"{redis_url}&pool_size=1"))
    assert client.resp is not None
    try:
        replies = await asyncio.gather(*(client.command("ECHO", str(i)) for i in range(200)))
        assert replies == [str(i).encode() for i in range(200)]
        assert len(client.resp._open) == 1
    finally:
        await client.aclose()


async def test_a_cancelled_call_leaves_the_next_replies_in_order(
    client: RedisClient, reference: Redis, key: str
) -> None:
    assert client.resp is not None
    await client.command("PING")
    # A call whose reply is still to come when its caller gives up (BLPOP blocks on
    # the server), with calls sent behind it on the same connection
    blocked = _sent(client.resp, "BLPOP", f"{key}:empty", 30)
    behind = _sent(client.resp, "ECHO", "behind")
    blocked.cancel()
    await reference.rpush(f"{key}:empty", "x")  # answers the BLPOP
    assert await behind == b"behind"  # the BLPOP's reply went to nobody, not to this call
    assert await client.command("ECHO", "next") == b"next"
    with pytest.raises(asyncio.CancelledError):
        await blocked


# -- connections ---------------------------------------------------------------------------


async def test_a_refused_connection_raises_what_redis_py_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"redis://app:hunter2@127.0.0.1:{redis_server.free_port()}/0?connect_timeout=2"
    resp = RespClient(parse_url(url))
    with pytest.raises(RedisConnectionError, match=r"connecting to 127\.0\.0\.1") as raw:
        await resp.execute("PING")
    await resp.aclose()
    texts = {}
    for chosen in ("resp", "redis-py"):
        monkeypatch.setenv(CLIENT_ENVIRONMENT, chosen)
        backend = RedisResultBackend(url)
        try:
            with pytest.raises(AdapterError) as info:
                await backend.get_status("t1")
        finally:
            await backend.aclose()
        texts[chosen] = str(info.value)
    assert "hunter2" not in texts["resp"] and "hunter2" not in str(raw.value)
    assert texts["resp"].startswith("cannot reach the Redis server at redis://app:***@127.0.0.1")
    assert texts["resp"] == texts["redis-py"]  # word for word as before


async def test_a_wrong_password_raises_what_redis_py_raises(
    redis_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = parse_url(redis_server_url)
    raw = redis.Redis(host=options.host, port=options.port)
    user = f"stem-resp-{uuid.uuid4().hex[:8]}"
    try:
        raw.acl_setuser(user, enabled=True, passwords=["+right"], keys=["*"], commands=["+@all"])
    except redis.ResponseError as exc:  # a server we may not change (STEM_TEST_REDIS_URL)
        raw.close()
        pytest.skip(f"cannot create an ACL user on the test server: {exc}")
    try:
        where = f"{options.host}:{options.port}/{options.db}"
        wrong = RespClient(parse_url(f"redis://{user}:hunter2@{where}"))
        with pytest.raises(AuthenticationError):
            await wrong.execute("PING")
        await wrong.aclose()
        texts = {}
        for chosen in ("resp", "redis-py"):
            monkeypatch.setenv(CLIENT_ENVIRONMENT, chosen)
            backend = RedisResultBackend(f"redis://{user}:hunter2@{where}")
            try:
                with pytest.raises(AdapterError) as info:
                    await backend.get_status("t1")
            finally:
                await backend.aclose()
            texts[chosen] = str(info.value)
        assert texts["resp"] == texts["redis-py"]
        assert "refused to authenticate" in texts["resp"] and "hunter2" not in texts["resp"]
        right = RespClient(parse_url(f"redis://{user}:right@{where}"))
        try:
            assert await right.execute("ACL", "WHOAMI") == user.encode()
            assert await right.execute("CLIENT", "GETNAME") == b"stem"
        finally:
            await right.aclose()
    finally:
        raw.acl_deluser(user)
        raw.close()


async def test_the_database_of_the_url_is_selected(redis_server_url: str) -> None:
    options = parse_url(redis_server_url)
    resp = RespClient(parse_url(f"redis://{options.host}:{options.port}/3"))
    try:
        info = await resp.execute("CLIENT", "INFO")
        assert b" db=3 " in info and b" name=stem " in info
    finally:
        await resp.aclose()


async def test_a_server_killed_mid_call_fails_the_pending_calls_and_the_next_reconnects(
    server: redis_server.RedisServer,
) -> None:
    resp = RespClient(parse_url(server.url))
    try:
        assert await resp.execute("PING") == b"PONG"
        # Calls waiting for their replies (the server is stopped, so none comes)
        _signal(server, signal.SIGSTOP)
        calls = [_sent(resp, "INCR", "n") for _ in range(5)]
        await asyncio.to_thread(server.kill)
        for call in calls:
            with pytest.raises(RedisConnectionError):
                await call
        # While it is down, a call fails at once (refused), nothing waits for a timeout
        with pytest.raises(RedisConnectionError, match="connecting to"):
            await resp.execute("PING")
        # Back up: the next call connects again
        await asyncio.to_thread(server.restart)
        assert await resp.execute("PING") == b"PONG"
        assert await resp.execute("INCR", "n") == 1  # nothing was sent again behind our back
    finally:
        await resp.aclose()


async def test_a_stopped_server_times_out_after_socket_timeout(
    server: redis_server.RedisServer,
) -> None:
    client = RedisClient(parse_url(f"{server.url}?socket_timeout=0.5&connect_timeout=5"))
    assert client.resp is not None
    try:
        assert await client.command("PING") is True
        _signal(server, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="Timeout reading from"):
            await client.resp.execute("PING")
        waited = time.monotonic() - started
        assert 0.45 <= waited < 5.0
        with pytest.raises(AdapterError, match=r"did not answer within 0.5 s"):
            await client.command("GET", "k")
        _signal(server, signal.SIGCONT)
        assert await client.command("PING") is True  # on a new connection
        assert await client.command("CLIENT", "GETNAME") == b"stem"
    finally:
        _signal(server, signal.SIGCONT)
        await client.aclose()


async def test_a_closed_client_refuses_calls(client: RedisClient) -> None:
    assert client.resp is not None
    await client.command("PING")
    await client.resp.aclose()
    with pytest.raises(RedisConnectionError, match="closed"):
        await client.resp.execute("PING")


# -- TLS ----------------------------------------------------------------------------------


async def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    try:
        tls = redis_server.make_certificates(tmp_path, auth_clients=True)
        server = redis_server.start(tls=tls)
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no redis-server with TLS: {exc}")
    try:
        files = f"ssl_certfile={tmp_path / 'client.pem'}&ssl_keyfile={tmp_path / 'client.key'}"
        good = RespClient(parse_url(f"{server.url}?ssl_ca_certs={tls.ca}&{files}"))
        try:
            assert await good.execute("ECHO", b"x" * 100_000) == b"x" * 100_000
            assert await asyncio.gather(*(good.execute("INCR", "n") for _ in range(50))) == list(
                range(1, 51)
            )
        finally:
            await good.aclose()
        # The server's certificate does not verify without the CA
        untrusted = RespClient(parse_url(f"{server.url}?{files}&connect_timeout=2"))
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.execute("PING")
        await untrusted.aclose()
        # Not verified at all when asked so (the server still wants a client certificate)
        lax = RespClient(parse_url(f"{server.url}?ssl_cert_reqs=none&{files}"))
        try:
            assert await lax.execute("PING") == b"PONG"
        finally:
            await lax.aclose()
    finally:
        server.stop()


async def test_a_missing_certificate_file_fails_the_call_as_with_redis_py(
    tmp_path: Path, redis_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = parse_url(redis_server_url)
    url = f"rediss://{options.host}:{options.port}/0?ssl_ca_certs={tmp_path / 'none.pem'}"
    texts = {}
    for chosen in ("resp", "redis-py"):
        monkeypatch.setenv(CLIENT_ENVIRONMENT, chosen)
        backend = RedisResultBackend(url)  # no I/O, no file read yet
        try:
            with pytest.raises(AdapterError) as info:
                await backend.get_status("t1")
        finally:
            await backend.aclose()
        texts[chosen] = str(info.value)
    assert texts["resp"] == texts["redis-py"]
    assert "cannot reach the Redis server" in texts["resp"] and "No such file" in texts["resp"]


# -- the switch ----------------------------------------------------------------------------


async def test_the_environment_can_choose_redis_py(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLIENT_ENVIRONMENT, "redis-py")
    client = RedisClient(parse_url(redis_url))
    try:
        assert client.resp is None
        assert await client.command("PING") is True
    finally:
        await client.aclose()
    monkeypatch.setenv(CLIENT_ENVIRONMENT, "fast")
    with pytest.raises(ConfigurationError, match="STEM_REDIS_CLIENT='fast'"):
        RedisClient(parse_url(redis_url))
