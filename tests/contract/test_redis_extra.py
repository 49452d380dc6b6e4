"""What the Redis adapter promises beyond the contract suites: bad stream entries, clear
errors that keep the password secret, one round trip per publish and settle, one hash tag
per queue, namespaces, and a worker round trip through ``Stem.from_url``."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import redis_server
from redis.crc import key_slot

from stem import AdapterError, FakeClock, Stem, TaskState
from stem.contracts import Message, TaskStatus, WorkerHeartbeat
from stem_adapter_tests import skip_or_fail
from stem_redis import RedisBroker, RedisResultBackend, RedisRevokeStore, parse_url

pytestmark = pytest.mark.redis

HOLD = 30.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def broker(redis_url: str, clock: FakeClock) -> AsyncIterator[RedisBroker]:
    subject = RedisBroker(redis_url, clock=clock)
    yield subject
    await subject.aclose()


@pytest.fixture
async def backend(redis_url: str, clock: FakeClock) -> AsyncIterator[RedisResultBackend]:
    subject = RedisResultBackend(redis_url, clock=clock)
    yield subject
    await subject.aclose()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client, for writing and reading keys by hand."""
    client = redis.Redis.from_url(redis_url.partition("?")[0])
    yield client
    client.close()


def message(queue: str, label: str, **fields: Any) -> Message:
    return Message(id=f"{label}-{uuid.uuid4().hex[:8]}", queue=queue, body=label.encode(), **fields)


def stream(broker: RedisBroker, queue: str, lane: int = 0) -> str:
    return f"{{{broker.options.prefix}:{queue}}}:stream:{lane}"


# -- entries that are not Stem messages -----------------------------------------------------


async def test_hand_written_entries_are_dead_lettered_as_malformed_on_first_delivery(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    queue = "mixed"
    before = message(queue, "before")
    after = message(queue, "after")
    await broker.publish(before)
    # Given entries another program added by hand, between two Stem messages
    key = stream(broker, queue)
    raw.xadd(key, {"colour": "blue"})  # neither id nor body
    raw.xadd(key, {"id": b"\xff\xfe\x80", "body": b"\x00junk"})  # an id that is not UTF-8
    raw.xadd(key, {"id": "late", "body": "x", "eta": "tomorrow"})  # an eta that is no number
    raw.xadd(key, {"junk": b"\xde\xad" * 500_000})  # a megabyte of binary junk, no id or body
    await broker.publish(after)
    # When the queue is read
    got = await broker.reserve([queue], 10, HOLD)
    # Then the Stem messages come out whole, in order, and the others are dead letters
    assert [d.message for d in got] == [before, after]
    letters = await broker.list_dead_letters(queue)
    assert [d.reason for d in letters] == ["malformed"] * 4
    assert all(d.deliveries == 1 for d in letters)
    assert letters[0].message.id.startswith("stream-entry-")
    assert "colour" in letters[0].message.body.decode() and "no id field" in (
        letters[0].error or ""
    )
    assert letters[1].message.body == b"\x00junk"
    assert "not UTF-8" in (letters[1].error or "")
    assert "'tomorrow'" in (letters[2].error or "")
    assert len(letters[3].message.body) > 1_000_000
    stats = await broker.queue_stats(queue)
    assert (stats.pending, stats.inflight, stats.dead) == (0, 2, 4)
    # And the good deliveries settle as usual
    assert await broker.ack_many(got) == 2
    assert raw.xpending(key, "stem")["pending"] == 0


async def test_a_stream_written_before_any_stem_publish_is_read(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    # No consumer group yet: the first reserve makes it, from the start of the stream
    raw.xadd(stream(broker, "handmade", 3), {"id": "m1", "body": b"hi"})
    [d] = await broker.reserve(["handmade"], 10, HOLD)
    assert (d.message.id, d.message.body, d.message.priority) == ("m1", b"hi", 3)


async def test_an_entry_deleted_under_its_lease_is_forgotten(
    broker: RedisBroker, raw: redis.Redis, clock: FakeClock
) -> None:
    await broker.publish(message("q", "doomed"))
    [d] = await broker.reserve(["q"], 1, 1.0)
    entry_id = d.receipt.split("/")[1]
    raw.xdel(stream(broker, "q"), entry_id)  # by hand, while it is leased
    clock.advance(2)
    assert await broker.reserve(["q"], 10, HOLD) == []
    stats = await broker.queue_stats("q")
    assert (stats.pending, stats.delayed, stats.inflight) == (0, 0, 0)


# -- leases ---------------------------------------------------------------------------------


async def test_takeover_and_extend_keep_the_same_stream_entry(
    broker: RedisBroker, raw: redis.Redis, clock: FakeClock
) -> None:
    await broker.publish(message("q", "kept"))
    [first] = await broker.reserve(["q"], 1, 1.0)
    assert await broker.extend_lease(first, 5.0)
    clock.advance(6)
    [second] = await broker.reserve(["q"], 1, HOLD)
    # The message was taken over (XCLAIM), not copied: same entry, one entry in the stream
    assert first.receipt.split("/")[1] == second.receipt.split("/")[1]
    assert second.deliveries == 2
    assert raw.xlen(stream(broker, "q")) == 1
    pending = raw.xpending(stream(broker, "q"), "stem")
    assert pending["pending"] == 1


async def test_a_delayed_message_due_before_a_later_publish_goes_out_first(
    broker: RedisBroker, clock: FakeClock
) -> None:
    delayed = message("q", "delayed", eta=clock.now() + 1.0)
    await broker.publish(delayed)
    clock.advance(2)  # due now, but no reserve has run since
    fresh = message("q", "fresh")
    await broker.publish(fresh)
    got = await broker.reserve(["q"], 10, HOLD)
    assert [d.message.id for d in got] == [delayed.id, fresh.id]


# -- the stream's length ------------------------------------------------------------------


async def test_acked_entries_are_trimmed_and_unacknowledged_ones_never(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    key = stream(broker, "q")
    await broker.publish_many([message("q", f"m{i}") for i in range(300)])
    # Given the oldest delivery still pending and the next ones acked
    first, *rest = await broker.reserve(["q"], 200, HOLD)
    assert await broker.ack_many(rest) == 199
    # Then nothing at or after the pending entry is trimmed, nor anything not yet read
    oldest = first.receipt.split("/")[1]
    assert raw.xrange(key, oldest, oldest)
    assert raw.xlen(key) == 300
    # When it is acked too, the acked entries are trimmed, the 100 unread ones kept
    assert await broker.ack(first)
    assert raw.xlen(key) <= 200
    assert (await broker.queue_stats("q")).pending == 100
    assert len(await broker.reserve(["q"], 500, HOLD)) == 100


async def test_a_long_pending_delivery_holds_back_at_most_ten_thousand_acked_entries(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    key = stream(broker, "q")
    count = 12_000
    await broker.publish_many([message("q", f"m{i}") for i in range(count)])
    first, *rest = await broker.reserve(["q"], count, HOLD)
    for start in range(0, len(rest), 1000):
        await broker.ack_many(rest[start : start + 1000])
    # The slow delivery keeps its entry; past 10,000 acked entries behind it, later
    # acks delete their entries at once instead of waiting for the trim
    assert raw.xpending(key, "stem")["pending"] == 1
    assert raw.xlen(key) <= 10_000 + 1_000 + 1
    assert await broker.ack(first)


# -- round trips ----------------------------------------------------------------------------


class Counter:
    """Counts the commands a client sends (each is one round trip, pipelines aside)."""

    def __init__(self, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[str] = []
        client = store._client()
        real = client._execute

        async def counting(*args: Any, **options: Any) -> Any:
            self.commands.append(str(args[0]))
            return await real(*args, **options)

        monkeypatch.setattr(client, "_execute", counting)


async def test_enqueue_with_statuses_is_one_round_trip(
    broker: RedisBroker, backend: RedisResultBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def batch() -> tuple[list[Message], list[tuple[TaskStatus, float | None]]]:
        sent = [message("q", f"m{i}") for i in range(20)]
        return sent, [(TaskStatus(id=m.id, state=TaskState.QUEUED), None) for m in sent]

    await broker.enqueue(*batch(), backend)  # loads the script
    counter = Counter(broker, monkeypatch)
    sent, statuses = batch()
    assert await broker.enqueue(sent, statuses, backend) == [None] * 20
    assert counter.commands == ["EVALSHA"]
    assert (await backend.get_status(sent[-1].id)) is not None


async def test_settle_is_one_round_trip_results_first(
    broker: RedisBroker, backend: RedisResultBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await broker.publish_many([message("q", f"m{i}") for i in range(10)])
    deliveries = await broker.reserve(["q"], 10, HOLD)
    statuses = [(TaskStatus(id=d.message.id, state=TaskState.SUCCEEDED), 60.0) for d in deliveries]
    await broker.settle(deliveries[:1], statuses[:1], backend)  # loads the script
    counter = Counter(broker, monkeypatch)
    await broker.settle(deliveries[1:], statuses[1:], backend)
    assert counter.commands == ["EVALSHA"]
    assert (await broker.queue_stats("q")).inflight == 0
    for d in deliveries:
        stored = await backend.get_status(d.message.id)
        assert stored is not None and stored.state is TaskState.SUCCEEDED


async def test_a_lost_script_cache_is_loaded_again(broker: RedisBroker, raw: redis.Redis) -> None:
    await broker.publish(message("q", "one"))
    raw.script_flush()  # as after a server restart
    await broker.publish(message("q", "two"))
    assert len(await broker.reserve(["q"], 10, HOLD)) == 2


async def test_a_call_sent_again_after_a_lost_reply_acts_once(
    broker: RedisBroker, backend: RedisResultBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the client's one retry sends when a reply was lost: the same call, same token
    import stem_redis._backend
    import stem_redis._broker

    monkeypatch.setattr(stem_redis._broker, "call_token", lambda: "same-call")
    m = message("q", "once")
    await broker.publish(m)
    await broker.publish(m)
    assert (await broker.queue_stats("q")).pending == 1
    await backend.init_group("g", 1)
    monkeypatch.setattr(stem_redis._backend, "call_token", lambda: "claim-1")
    assert await backend.claim_chord("g", "w1") is True
    assert await backend.claim_chord("g", "w1") is True  # the same call again
    monkeypatch.setattr(stem_redis._backend, "call_token", lambda: "claim-2")
    assert await backend.claim_chord("g", "w1") is False  # a later call, even by the winner
    assert await backend.claim_chord("g", "w2") is False


async def test_a_server_restart_fails_no_call_made_after_it() -> None:
    try:
        server = redis_server.start()
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no redis-server: {exc}")
    try:
        broker = RedisBroker(server.url)
        try:
            # Given idle pooled connections, made before the server restarted
            await asyncio.gather(*(broker.queue_stats("q") for _ in range(8)))
            await asyncio.to_thread(server.restart)
            # Then every call made after it succeeds (dead connections are replaced)
            for i in range(8):
                await asyncio.gather(*(broker.publish(message("q", f"m{i}-{j}")) for j in range(4)))
            assert (await broker.queue_stats("q")).pending == 32
        finally:
            await broker.aclose()
    finally:
        server.stop()


async def test_a_wait_that_failed_in_an_outage_works_when_the_server_is_back(
    clock: FakeClock,
) -> None:
    try:
        server = redis_server.start()
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no redis-server: {exc}")
    broker = RedisBroker(f"{server.url}?connect_timeout=1&socket_timeout=1", clock=clock)
    try:
        assert await broker.reserve(["q"], 1, HOLD) == []
        server.kill()
        with pytest.raises(AdapterError):
            await broker.wait_for_messages(["q"], 5.0)
        await asyncio.to_thread(server.restart)
        # The first wait subscribes and returns at once (read again); the next one waits
        # and is woken by a publish
        await broker.wait_for_messages(["q"], 5.0)
        assert await broker.reserve(["q"], 1, HOLD) == []
        waiting = asyncio.ensure_future(broker.wait_for_messages(["q"], 5.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await broker.publish(message("q", "wake"))
        await asyncio.wait_for(waiting, 5)
    finally:
        await broker.aclose()
        server.stop()


async def test_a_subscription_whose_subscribe_failed_is_tried_again(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = broker._client().hub
    hub._pubsub = broker._client().redis.pubsub()
    real = hub._pubsub.subscribe

    async def broken(*names: Any) -> None:
        raise redis.exceptions.ConnectionError("the connection broke")

    monkeypatch.setattr(hub._pubsub, "subscribe", broken)
    with pytest.raises(AdapterError):
        await broker.wait_for_messages(["q"], 5.0)
    monkeypatch.setattr(hub._pubsub, "subscribe", real)
    # The channel was forgotten: this wait subscribes again (and returns, to read first)
    await asyncio.wait_for(broker.wait_for_messages(["q"], 5.0), 2)
    assert hub.channel(broker._base("q") + b":wake") is not None


# -- keys -----------------------------------------------------------------------------------


async def test_every_key_of_a_queue_carries_its_hash_tag(
    broker: RedisBroker, raw: redis.Redis, clock: FakeClock
) -> None:
    queue = "tagged"
    await broker.publish_many(
        [message(queue, "a", priority=9), message(queue, "b", eta=clock.now() + 60)]
    )
    await broker.publish(message(queue, "c"))
    first, second = await broker.reserve([queue], 2, HOLD)
    assert await broker.nack(first, delay=5)
    assert await broker.dead_letter(second, "test")
    keys = [k.decode() for k in raw.scan_iter(match=f"*{broker.options.prefix}:{queue}*")]
    tag = f"{{{broker.options.prefix}:{queue}}}"
    assert len(keys) >= 7  # two streams, leases, retry, delayed, seq, dead letters, index
    assert all(k.startswith(tag) for k in keys), keys
    assert len({key_slot(k.encode()) for k in keys}) == 1


async def test_prefixes_isolate_two_apps_on_one_server(
    redis_server_url: str, clock: FakeClock
) -> None:
    a = RedisBroker(f"{redis_server_url}?prefix=app-a-{uuid.uuid4().hex[:6]}", clock=clock)
    b = RedisBroker(f"{redis_server_url}?prefix=app-b-{uuid.uuid4().hex[:6]}", clock=clock)
    try:
        await a.publish(message("default", "for-a"))
        assert await b.reserve(["default"], 10, HOLD) == []
        assert (await b.queue_stats("default")).pending == 0
        assert len(await a.reserve(["default"], 10, HOLD)) == 1
    finally:
        await a.aclose()
        await b.aclose()


# -- sizes ---------------------------------------------------------------------------------


async def test_thousands_of_revocations_and_heartbeats_are_listed(
    redis_url: str, raw: redis.Redis, clock: FakeClock, backend: RedisResultBackend
) -> None:
    # More than Lua's unpack() takes at once (about 8,000 values): written by hand, fast
    prefix = parse_url(redis_url).prefix
    count = 9_000
    revokes = f"{{{prefix}:revokes}}"
    beats = f"{{{prefix}:heartbeats}}"
    with raw.pipeline(transaction=False) as pipe:
        for i in range(count):
            pipe.hset(revokes, f"t{i}", f'{{"task_id":"t{i}"}}')
            pipe.zadd(f"{revokes}:seq", {f"t{i}": i + 1})
            pipe.hset(
                beats,
                f"w{i}",
                msgspec.json.encode(
                    WorkerHeartbeat(worker_id=f"w{i}", host="h", pid=1, queues=[], concurrency=1)
                ),
            )
            pipe.zadd(f"{beats}:ends", {f"w{i}": clock.now() + 60})
        pipe.execute()
    store = RedisRevokeStore(redis_url, clock=clock)
    try:
        listed = await store.list()
        assert [e.seq for e in listed] == list(range(1, count + 1))
        assert len(await store.list(since=count - 5)) == 5
    finally:
        await store.aclose()
    assert len(await backend.list_heartbeats()) == count


# -- errors ---------------------------------------------------------------------------------


async def test_a_refused_connection_is_a_clear_error_without_the_password() -> None:
    url = f"redis://app:hunter2@127.0.0.1:{redis_server.free_port()}/0?connect_timeout=2"
    broker = RedisBroker(url)
    started = time.monotonic()
    try:
        with pytest.raises(AdapterError) as info:
            await broker.publish(message("q", "nowhere"))
    finally:
        await broker.aclose()
    text = str(info.value)
    assert "cannot reach the Redis server at redis://app:***@127.0.0.1" in text
    assert "hunter2" not in text and "hunter2" not in repr(info.value.__cause__)
    assert time.monotonic() - started < 2.0  # refused at once, no retries behind our back


async def test_an_unknown_host_is_a_clear_error() -> None:
    broker = RedisBroker("redis://:hunter2@no-such-host.invalid:6379/0?connect_timeout=2")
    try:
        with pytest.raises(AdapterError, match="cannot reach the Redis server") as info:
            await broker.queue_stats("q")
    finally:
        await broker.aclose()
    assert "hunter2" not in str(info.value)


async def test_a_wrong_password_is_a_clear_error_without_the_password(
    redis_server_url: str, raw: redis.Redis
) -> None:
    user = f"stem-test-{uuid.uuid4().hex[:8]}"
    try:
        raw.acl_setuser(
            user, enabled=True, passwords=["+right-pass"], keys=["*"], commands=["+@all"]
        )
    except redis.ResponseError as exc:  # a server we may not change (STEM_TEST_REDIS_URL)
        pytest.skip(f"cannot create an ACL user on the test server: {exc}")
    options = parse_url(redis_server_url)
    url = f"redis://{user}:hunter2@{options.host}:{options.port}/0"
    backend = RedisResultBackend(url)
    try:
        with pytest.raises(AdapterError, match="refused to authenticate") as info:
            await backend.get_status("t1")
        text = str(info.value)
        assert f"redis://{user}:***@" in text
        assert "hunter2" not in text and "hunter2" not in repr(backend)
        # The right password works, through the same kind of URL
        good = RedisResultBackend(f"redis://{user}:right-pass@{options.host}:{options.port}/0")
        try:
            assert await good.get_status("t1") is None
        finally:
            await good.aclose()
    finally:
        await backend.aclose()
        raw.acl_deluser(user)


# -- TLS ------------------------------------------------------------------------------------


def make_certificates(directory: Path) -> redis_server.TlsFiles:
    try:
        return redis_server.make_certificates(directory)
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(str(exc))


async def test_rediss_with_the_ca_from_the_url(tmp_path: Path, clock: FakeClock) -> None:
    tls = make_certificates(tmp_path)
    try:
        server = redis_server.start(tls=tls)
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no redis-server with TLS: {exc}")
    try:
        url = f"{server.url}?ssl_ca_certs={tls.ca}"
        broker = RedisBroker(url, clock=clock)
        backend = RedisResultBackend(url, clock=clock)
        try:
            m = message("q", "secure")
            await broker.enqueue(
                [m], [(TaskStatus(id=m.id, state=TaskState.QUEUED), None)], backend
            )
            [d] = await broker.reserve(["q"], 1, HOLD)
            assert d.message == m
            assert (await backend.get_status(m.id)) is not None
        finally:
            await broker.aclose()
            await backend.aclose()
        # Without the CA, the server's certificate does not verify: a clear error
        untrusted = RedisBroker(f"{server.url}?connect_timeout=2")
        try:
            with pytest.raises(AdapterError, match="cannot reach the Redis server at rediss://"):
                await untrusted.queue_stats("q")
        finally:
            await untrusted.aclose()
    finally:
        server.stop()


# -- the whole app ----------------------------------------------------------------------------


async def test_a_worker_round_trip_through_from_url(redis_url: str) -> None:
    app = Stem.from_url(redis_url)

    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    try:
        async with app.worker(concurrency=4):
            refs = [await add.enqueue(i, i) for i in range(20)]
            results = await asyncio.gather(*(app.wait_for_task(r, timeout=10) for r in refs))
        assert [r.value for r in results] == [2 * i for i in range(20)]
        assert all(r.state is TaskState.SUCCEEDED for r in results)
        stats = await app.broker.queue_stats("default")
        assert (stats.pending, stats.inflight, stats.dead) == (0, 0, 0)
    finally:
        await app.aclose()
