"""Stem on Redis Cluster (``redis+cluster://``): every contract suite on three primaries
joined by the ``redis_cluster_server_url`` fixture (the broker suite's queues on every
node in turn), where each queue's keys and the statuses live, the order of the two
round trips of enqueue and settle, reserves across nodes, sharded wake-ups, a worker
round trip through ``Stem.from_url`` with queues on two nodes, and the errors of a URL
that names the wrong kind of server."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
import redis
import redis_server
from _redis_suites import (
    RedisBrokerSuite,
    RedisControlChannelSuite,
    RedisEventBusSuite,
    RedisLockStoreSuite,
    RedisRateLimiterOnTheServerClockSuite,
    RedisRateLimiterSuite,
    RedisResultBackendSuite,
    RedisRevokeStoreSuite,
    RedisScheduleStoreOnTheServerClockSuite,
    RedisScheduleStoreSuite,
    RedisWorkflowStoreOnTheServerClockSuite,
    RedisWorkflowStoreSuite,
)
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from stem import AdapterError, ConfigurationError, FakeClock, Stem, TaskState
from stem.contracts import Message, StepCheckpoint, TaskStatus, WorkflowRun
from stem_adapter_tests._support import WAIT_LIMIT
from stem_redis import (
    RedisBroker,
    RedisEventBus,
    RedisResultBackend,
    RedisWorkflowStore,
    parse_url,
)
from stem_redis._backend import STATUS_TAGS, status_tags
from stem_redis._client import RedisClient

pytestmark = pytest.mark.redis

HOLD = 30.0


class ClusterMap:
    """Which node owns which slots, as the cluster itself says (``CLUSTER SLOTS``)."""

    def __init__(self, url: str) -> None:
        options = parse_url(url)
        self.clients: dict[str, redis.Redis] = {}
        for host, port in options.nodes:
            self.clients[f"{host}:{port}"] = self._connect(options, host, port)
        first = next(iter(self.clients.values()))
        self.ranges: list[tuple[int, int, str]] = []
        for start, end, primary, *_ in first.execute_command("CLUSTER SLOTS"):
            node = f"{primary[0].decode()}:{primary[1]}"
            self.ranges.append((int(start), int(end), node))
            if node not in self.clients:
                self.clients[node] = self._connect(options, primary[0].decode(), int(primary[1]))
        self.nodes = sorted({node for _, _, node in self.ranges})

    @staticmethod
    def _connect(options: Any, host: str, port: int) -> redis.Redis:
        return redis.Redis(
            host=host, port=port, username=options.username, password=options.password
        )

    def server_slot(self, key: str) -> int:
        """The slot of ``key``, asked of the server (``CLUSTER KEYSLOT``)."""
        client = self.clients[self.nodes[0]]
        return int(client.execute_command("CLUSTER", "KEYSLOT", key))

    def owner(self, slot: int) -> str:
        return next(node for start, end, node in self.ranges if start <= slot <= end)

    def node_of(self, key: str) -> str:
        return self.owner(key_slot(key.encode()))

    def queue_on(self, prefix: str, node: str, label: str = "queue") -> str:
        """A new queue name whose keys (hash tag ``{prefix:name}``) live on ``node``."""
        while True:
            name = f"{label}-{uuid.uuid4().hex[:12]}"
            if self.node_of(f"{{{prefix}:{name}}}") == node:
                return name

    def keys_on(self, node: str, pattern: str) -> list[str]:
        """The keys matching ``pattern`` that ``node`` itself holds."""
        return [k.decode() for k in self.clients[node].scan_iter(match=pattern, count=1000)]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


@pytest.fixture(scope="session")
def cluster_map(redis_cluster_server_url: str) -> Iterator[ClusterMap]:
    found = ClusterMap(redis_cluster_server_url)
    yield found
    found.close()


def prefix_of(url: str) -> str:
    return parse_url(url).prefix


#: Turns the queue fixture's node, so the suites' queues land on every node in turn.
_turn = itertools.count()


def message(queue: str, label: str, **fields: Any) -> Message:
    return Message(id=f"{label}-{uuid.uuid4().hex[:8]}", queue=queue, body=label.encode(), **fields)


# -- every contract suite, on the cluster -----------------------------------------------------


class _OnTheCluster:
    """The suites' stores on the cluster: ``redis_url`` names it, with this test's prefix."""

    @pytest.fixture
    def redis_url(self, redis_cluster_url: str) -> str:
        return redis_cluster_url


class TestRedisClusterBroker(_OnTheCluster, RedisBrokerSuite):
    @pytest.fixture
    def queue(self, cluster_map: ClusterMap, redis_cluster_url: str) -> str:
        """A queue of this test's own, on the next node in turn (the suites' other queues
        have random names, which spread over the nodes by themselves)."""
        node = cluster_map.nodes[next(_turn) % len(cluster_map.nodes)]
        return cluster_map.queue_on(prefix_of(redis_cluster_url), node)


class TestRedisClusterResultBackend(_OnTheCluster, RedisResultBackendSuite):
    pass


class TestRedisClusterLockStore(_OnTheCluster, RedisLockStoreSuite):
    pass


class TestRedisClusterRevokeStore(_OnTheCluster, RedisRevokeStoreSuite):
    pass


class TestRedisClusterScheduleStore(_OnTheCluster, RedisScheduleStoreSuite):
    pass


class TestRedisClusterScheduleStoreOnTheServerClock(
    _OnTheCluster, RedisScheduleStoreOnTheServerClockSuite
):
    pass


class TestRedisClusterWorkflowStore(_OnTheCluster, RedisWorkflowStoreSuite):
    pass


class TestRedisClusterWorkflowStoreOnTheServerClock(
    _OnTheCluster, RedisWorkflowStoreOnTheServerClockSuite
):
    pass


class TestRedisClusterRateLimiter(_OnTheCluster, RedisRateLimiterSuite):
    pass


class TestRedisClusterRateLimiterOnTheServerClock(
    _OnTheCluster, RedisRateLimiterOnTheServerClockSuite
):
    pass


class TestRedisClusterControlChannel(_OnTheCluster, RedisControlChannelSuite):
    pass


class TestRedisClusterEventBus(_OnTheCluster, RedisEventBusSuite):
    pass


# -- where things live ------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def broker(redis_cluster_url: str, clock: FakeClock) -> AsyncIterator[RedisBroker]:
    subject = RedisBroker(redis_cluster_url, clock=clock)
    yield subject
    await subject.aclose()


@pytest.fixture
async def backend(redis_cluster_url: str, clock: FakeClock) -> AsyncIterator[RedisResultBackend]:
    subject = RedisResultBackend(redis_cluster_url, clock=clock)
    yield subject
    await subject.aclose()


def test_the_cluster_has_three_nodes_and_the_queue_fixture_uses_them_all(
    cluster_map: ClusterMap,
) -> None:
    assert len(cluster_map.nodes) == 3
    prefix = "stem"
    names = [cluster_map.queue_on(prefix, node) for node in cluster_map.nodes]
    # The server agrees with the client on every queue's slot, and they are on three nodes
    slots = [cluster_map.server_slot(f"{{{prefix}:{name}}}:stream:0") for name in names]
    assert slots == [key_slot(f"{{{prefix}:{name}}}".encode()) for name in names]
    assert {cluster_map.owner(slot) for slot in slots} == set(cluster_map.nodes)


async def test_two_queues_keys_are_each_on_one_node_and_the_nodes_differ(
    broker: RedisBroker, clock: FakeClock, cluster_map: ClusterMap
) -> None:
    prefix = broker.options.prefix
    first_node, second_node = cluster_map.nodes[:2]
    queues = {
        cluster_map.queue_on(prefix, first_node, "left"): first_node,
        cluster_map.queue_on(prefix, second_node, "right"): second_node,
    }
    for queue in queues:
        # Given every kind of key a queue has: streams of two lanes, a delayed message,
        # a lease, a given-back delivery and a dead letter
        await broker.publish_many(
            [message(queue, "a", priority=9), message(queue, "b", eta=clock.now() + 60)]
        )
        await broker.publish(message(queue, "c"))
        first, second = await broker.reserve([queue], 2, HOLD)
        assert await broker.nack(first, delay=5)
        assert await broker.dead_letter(second, "test")
    for queue, node in queues.items():
        tag = f"{{{prefix}:{queue}}}"
        # Then every key of the queue is on its node, in the slot of its hash tag...
        here = cluster_map.keys_on(node, f"{tag}*")
        assert len(here) >= 7, here  # two streams, leases, retry, delayed, seq, dead letters
        assert {cluster_map.server_slot(k) for k in here} == {key_slot(tag.encode())}
        # ...and on no other node
        for other in cluster_map.nodes:
            if other != node:
                assert cluster_map.keys_on(other, f"{tag}*") == []


async def test_every_workflow_key_is_in_the_one_slot_of_the_prefixs_wf_tag(
    redis_cluster_url: str, clock: FakeClock, cluster_map: ClusterMap
) -> None:
    store = RedisWorkflowStore(redis_cluster_url, clock=clock)
    prefix = store.options.prefix
    try:
        # Given every kind of key workflows have: runs with ids that hash anywhere, a
        # parent, checkpoints, a watcher, an event kept for a run, and a wake time
        for i in range(6):
            run = WorkflowRun(
                id=f"run-{i}-{uuid.uuid4().hex[:6]}",
                workflow=f"wf-{i % 2}",
                parent_id="parent" if i else None,
                created_at=clock.now(),
                wake_at=clock.now() + 60,
            )
            await store.create_run(run)
            claimed = await store.claim_run(run.id, "w1", HOLD)
            assert claimed is not None
            await store.save_step(
                run.id, claimed.fence, StepCheckpoint(run_id=run.id, position=0, name="a")
            )
            assert await store.send_event(run.id, f"kept-{i}", {"n": i})
            await store.suspend(run.id, claimed.fence, wake_at=None, topic=f"t-{i % 3}")
        tag = f"{{{prefix}:wf}}"
        found = {node: cluster_map.keys_on(node, f"*{prefix}*") for node in cluster_map.nodes}
        [(node, keys)] = [(node, keys) for node, keys in found.items() if keys]
        # Then they are all on one node, in the slot of the tag
        assert node == cluster_map.node_of(tag)
        assert len(keys) >= 20, keys
        assert all(key.startswith(tag) for key in keys), keys
        assert {cluster_map.server_slot(key) for key in keys} == {key_slot(tag.encode())}
    finally:
        await store.aclose()


async def test_statuses_spread_over_every_node_in_shares_of_their_slots(
    broker: RedisBroker, backend: RedisResultBackend, cluster_map: ClusterMap
) -> None:
    prefix = broker.options.prefix
    tags = status_tags(prefix)
    assert len(set(tags)) == STATUS_TAGS
    # The tags' slots are evenly spaced: each node gets the share its slots give it
    per_node = Counter(cluster_map.node_of(tag) for tag in tags)
    for node in cluster_map.nodes:
        ranges = [(s, e) for s, e, n in cluster_map.ranges if n == node]
        share = sum(e - s + 1 for s, e in ranges) / REDIS_CLUSTER_HASH_SLOTS
        assert abs(per_node[node] - STATUS_TAGS * share) <= len(ranges) + 0.5, per_node
    # And the statuses of an enqueue land on every node, each in its tag's slot
    queue = cluster_map.queue_on(prefix, cluster_map.nodes[0])
    sent = [message(queue, f"m{i}") for i in range(60)]
    await broker.enqueue(
        sent, [(TaskStatus(id=m.id, state=TaskState.QUEUED), None) for m in sent], backend
    )
    holders = {
        node: cluster_map.keys_on(node, f"{{{prefix}:status:*}}:task:*")
        for node in cluster_map.nodes
    }
    assert sum(len(keys) for keys in holders.values()) == 60
    assert all(holders.values()), {n: len(k) for n, k in holders.items()}
    found = await backend.get_statuses([m.id for m in sent])
    assert sorted(found) == sorted(m.id for m in sent)


async def test_events_are_published_and_subscribed_on_the_node_of_the_events_tag(
    redis_cluster_url: str, cluster_map: ClusterMap
) -> None:
    bus = RedisEventBus(redis_cluster_url)
    node = cluster_map.node_of(f"{{{prefix_of(redis_cluster_url)}:events}}")
    try:
        async with bus.subscription("orders.*") as events:
            # Subscribed on that node only...
            for other in cluster_map.nodes:
                numpat = cluster_map.clients[other].execute_command("PUBSUB", "NUMPAT")
                assert (numpat >= 1) if other == node else (numpat == 0), other
            # ...and a publish from another client reaches it there
            other_bus = RedisEventBus(redis_cluster_url, share_connection=False)
            try:
                await other_bus.publish("orders.created", {"n": 1})
            finally:
                await other_bus.aclose()
            assert await asyncio.wait_for(anext(events), WAIT_LIMIT) == (
                "orders.created",
                {"n": 1},
            )
    finally:
        await bus.aclose()


# -- the two round trips of enqueue and settle --------------------------------------------------


class ScriptLog:
    """The scripts a client runs, in the order they start."""

    def __init__(self, client: RedisClient, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        real = client.script

        async def logged(name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
            self.names.append(name)
            return await real(name, keys, args)

        monkeypatch.setattr(client, "script", logged)


async def test_enqueue_stores_every_status_before_any_message_and_settle_every_result_before_any_ack(
    broker: RedisBroker,
    backend: RedisResultBackend,
    cluster_map: ClusterMap,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = broker.options.prefix
    queues = [cluster_map.queue_on(prefix, node) for node in cluster_map.nodes]
    sent = [message(queues[i % 3], f"m{i}") for i in range(30)]
    log = ScriptLog(broker._client(), monkeypatch)
    await broker.enqueue(
        sent, [(TaskStatus(id=m.id, state=TaskState.QUEUED), None) for m in sent], backend
    )
    # One script per status tag, all before one publish per queue (each on its node)
    first_publish = log.names.index("publish")
    assert set(log.names[:first_publish]) == {"statuses"}
    assert log.names[first_publish:] == ["publish"] * 3
    deliveries = await broker.reserve(queues, 30, HOLD)
    assert sorted(d.message.id for d in deliveries) == sorted(m.id for m in sent)
    log.names.clear()
    done = [(TaskStatus(id=d.message.id, state=TaskState.SUCCEEDED), 60.0) for d in deliveries]
    await broker.settle(deliveries, done, backend)
    first_ack = log.names.index("ack")
    assert set(log.names[:first_ack]) == {"statuses"}
    assert log.names[first_ack:] == ["ack"] * 3
    for queue in queues:
        assert (await broker.queue_stats(queue)).inflight == 0
    stored = await backend.get_statuses([m.id for m in sent])
    assert {s.state for s in stored.values()} == {TaskState.SUCCEEDED}


async def test_a_reserve_reads_queues_on_several_nodes_in_the_order_given(
    broker: RedisBroker, cluster_map: ClusterMap
) -> None:
    prefix = broker.options.prefix
    a, b, c = (cluster_map.queue_on(prefix, node) for node in cluster_map.nodes)
    # Given messages in three queues on three nodes, the last-named published first
    late = [message(c, "c") for _ in range(2)]
    middle = [message(b, "b") for _ in range(2)]
    early = [message(a, "a") for _ in range(2)]
    for batch in (late, middle, early):
        await broker.publish_many(batch)
    # When a read's limit reaches into the second queue only
    got = await broker.reserve([a, b, c], 3, HOLD)
    # Then the first is drained, then the second is read, and the third is left alone
    assert [d.message.id for d in got] == [early[0].id, early[1].id, middle[0].id]
    assert (await broker.queue_stats(c)).pending == 2
    rest = await broker.reserve([a, b, c], 10, HOLD)
    assert [d.message.id for d in rest] == [middle[1].id, late[0].id, late[1].id]


# -- wake-ups -----------------------------------------------------------------------------------


async def test_wake_ups_are_sharded_on_the_queue_node_and_wake_a_waiting_consumer(
    broker: RedisBroker, redis_cluster_url: str, cluster_map: ClusterMap
) -> None:
    prefix = broker.options.prefix
    node = cluster_map.nodes[1]
    queue = cluster_map.queue_on(prefix, node)
    wake = f"{{{prefix}:{queue}}}:wake"
    # The first wait subscribes, and returns at once (a publish just before it went unheard)
    await broker.wait_for_messages([queue], 3600.0)
    # On the node of the queue's slot, with SSUBSCRIBE
    numsub = cluster_map.clients[node].execute_command("PUBSUB", "SHARDNUMSUB", wake)
    assert numsub[1] == 1
    assert cluster_map.clients[node].execute_command("PUBSUB", "NUMSUB", wake)[1] == 0
    assert await broker.reserve([queue], 1, HOLD) == []  # an empty read: the next wait sleeps
    waiting = asyncio.ensure_future(broker.wait_for_messages([queue], 3600.0))
    try:
        await asyncio.wait({waiting}, timeout=0.05)
        assert not waiting.done()
        # And a publish from another process wakes it, with no clock moving
        other = RedisBroker(redis_cluster_url, share_connection=False)
        try:
            await other.publish(message(queue, "wake"))
        finally:
            await other.aclose()
        await asyncio.wait_for(waiting, WAIT_LIMIT)
    finally:
        waiting.cancel()


@pytest.mark.parametrize("mode", ["single server", "cluster"])
async def test_concurrent_first_subscriptions_are_all_confirmed(
    mode: str, request: pytest.FixtureRequest
) -> None:
    # Before the hub sent its (un)subscribe commands one at a time, the first commands
    # of several waiters at once each took a connection of their own, the reader heard
    # only one of them, and the other waiters failed after connect + socket timeout.
    url = request.getfixturevalue("redis_url" if mode == "single server" else "redis_cluster_url")
    client = RedisClient(parse_url(url))
    try:
        names = [f"{{{prefix_of(url)}:q{i}}}:wake".encode() for i in range(20)]
        subscribed = await asyncio.wait_for(
            asyncio.gather(*(client.hub.subscribe([n], sticky=False) for n in names)),
            WAIT_LIMIT,
        )
        assert all(client.hub.channel(n) is not None for n in names)
        for channels, _ in subscribed:
            await client.hub.release(channels)
    finally:
        await client.aclose()


async def test_concurrent_first_calls_of_a_new_cluster_client_all_succeed(
    redis_cluster_url: str, cluster_map: ClusterMap
) -> None:
    # redis-py 8.1 lets concurrent first commands each map the cluster, and one of them
    # then found its connection closed under it; the client maps it once, first.
    prefix = prefix_of(redis_cluster_url)
    queues = [cluster_map.queue_on(prefix, node) for node in cluster_map.nodes for _ in range(6)]
    for _ in range(3):
        for client in cluster_map.clients.values():
            client.script_flush()  # every call also meets NOSCRIPT, as after a restart
        broker = RedisBroker(redis_cluster_url)
        try:
            await asyncio.gather(*(broker.publish(message(q, "first")) for q in queues))
        finally:
            await broker.aclose()


async def test_more_calls_at_once_than_the_pool_holds_wait_for_a_connection(
    redis_cluster_url: str, cluster_map: ClusterMap
) -> None:
    # A cluster node's pool raises when full instead of waiting: the client bounds the
    # calls in flight to pool_size, so the rest wait their turn.
    broker = RedisBroker(f"{redis_cluster_url}&pool_size=2")
    try:
        queue = cluster_map.queue_on(broker.options.prefix, cluster_map.nodes[0])
        await asyncio.gather(*(broker.publish(message(queue, f"m{i}")) for i in range(50)))
        assert (await broker.queue_stats(queue)).pending == 50
    finally:
        await broker.aclose()


# -- the whole app ------------------------------------------------------------------------------


async def test_a_worker_round_trip_through_from_url_with_queues_on_two_nodes(
    redis_cluster_url: str, cluster_map: ClusterMap
) -> None:
    app = Stem.from_url(redis_cluster_url)
    prefix = prefix_of(redis_cluster_url)
    adds, muls = (cluster_map.queue_on(prefix, node) for node in cluster_map.nodes[:2])

    @app.task(name="add", queue=adds)
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="mul", queue=muls)
    async def mul(a: int, b: int) -> int:
        return a * b

    try:
        async with app.worker(queues=[adds, muls], concurrency=4):
            refs = [await add.enqueue(i, i) for i in range(10)]
            refs += [await mul.enqueue(i, i) for i in range(10)]
            results = await asyncio.gather(*(app.wait_for_task(r, timeout=10) for r in refs))
        assert [r.value for r in results] == [2 * i for i in range(10)] + [i * i for i in range(10)]
        assert all(r.state is TaskState.SUCCEEDED for r in results)
        for queue in (adds, muls):
            stats = await app.broker.queue_stats(queue)
            assert (stats.pending, stats.inflight, stats.dead) == (0, 0, 0)
    finally:
        await app.aclose()


# -- URLs and the wrong kind of server -------------------------------------------------------


def test_a_database_other_than_0_is_refused_saying_why() -> None:
    for url in ("redis+cluster://127.0.0.1:7000/3", "rediss+cluster://a:1,b:2/1?prefix=x"):
        with pytest.raises(ConfigurationError, match="database 0 only"):
            parse_url(url)
        with pytest.raises(ConfigurationError, match="database 0 only"):
            Stem.from_url(url)
    assert parse_url("redis+cluster://a:1,b:2/0").nodes == (("a", 1), ("b", 2))
    assert parse_url("redis+cluster://a,[::1]:7001").nodes == (("a", 6379), ("::1", 7001))
    assert parse_url("rediss+cluster://h:1/").tls


async def test_a_cluster_url_naming_a_single_server_says_so(redis_server_url: str) -> None:
    host_port = redis_server_url.partition("://")[2].partition("/")[0]
    broker = RedisBroker(f"redis+cluster://{host_port}/")
    try:
        with pytest.raises(AdapterError, match="not a Redis Cluster node"):
            await broker.publish(message("q", "x"))
    finally:
        await broker.aclose()


async def test_a_plain_url_naming_a_cluster_node_says_to_use_redis_cluster(
    cluster_map: ClusterMap,
) -> None:
    first, other = cluster_map.nodes[0], cluster_map.nodes[1]
    broker = RedisBroker(f"redis://{first}/0")
    try:
        with pytest.raises(AdapterError, match=r"use redis\+cluster://"):
            await broker.publish(message(cluster_map.queue_on("stem", other), "x"))
    finally:
        await broker.aclose()


async def test_an_unreachable_cluster_is_a_clear_error_without_the_password() -> None:
    ports = [redis_server.free_port() for _ in range(2)]
    url = (
        f"redis+cluster://user:s3cret@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/?connect_timeout=1"
    )
    broker = RedisBroker(url)
    try:
        with pytest.raises(AdapterError, match="cannot reach") as caught:
            await broker.publish(message("q", "x"))
        assert "s3cret" not in str(caught.value)
        assert "user:***@" in str(caught.value)
    finally:
        await broker.aclose()
