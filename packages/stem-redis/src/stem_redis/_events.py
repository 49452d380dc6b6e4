"""The Redis event bus: ``PUBLISH`` on a channel per topic, ``PSUBSCRIBE`` per subscription.

An event on topic ``T`` is published on the channel ``{P:events}:T`` (``P`` the key
prefix). Each subscription has a pub/sub connection of its own, subscribed with
``PSUBSCRIBE`` to the channels that start with its pattern's plain prefix; the pattern
itself is matched in this process (:class:`~stem.contracts.TopicPattern`), so it means
the same as on the other adapters. One connection per subscription keeps the rules
simple: the server sends each publish to it once, in the order it received them, and a
subscriber that stops reading holds up only its own connection (Redis drops that
connection once its output buffer passes ``client-output-buffer-limit pubsub``; the
subscription then logs the loss and subscribes again).

On a Redis Cluster, plain ``PUBLISH`` reaches the subscribers of every node; Stem's
publishers and subscribers all use the node that owns the slot of ``{P:events}``, so one
publisher's events keep their order without crossing the cluster bus.

Pub/sub keeps nothing: a subscriber whose connection is down misses what is published
meanwhile (logged once per outage). The workflow store keeps what must last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisClusterException, RedisError

from stem import AdapterError, Clock, SystemClock
from stem.contracts import EventBus, EventSubscription, TopicPattern, decode_event, encode_event

from ._client import RedisClient, RedisStore
from ._errors import translate
from ._url import RedisOptions

__all__ = ["RedisEventBus"]

log = logging.getLogger("stem.events")

_GLOB_SPECIAL = frozenset("*?[]\\")


def _glob_escape(text: str) -> str:
    """``text`` as a Redis glob that matches it alone."""
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


class RedisEventBus(RedisStore, EventBus):
    """Live events through Redis pub/sub (see the module docstring for the channels).

    Args:
        url: a ``redis://`` or ``redis+cluster://`` URL (or its parsed options); its
            ``prefix`` is the namespace.
        clock: kept for symmetry with the other stores (a bus reads no time).
        share_connection: False to publish through a client of its own instead of the
            pool of every store of this server in this event loop (each subscription has
            its own connection either way).
    """

    def __init__(
        self,
        url: str | RedisOptions = "redis://localhost:6379/0",
        *,
        clock: Clock | None = None,
        share_connection: bool = True,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        options = self._open(
            url, clock=clock, server_clock=False, share_connection=share_connection
        )
        self.tag = f"{{{options.prefix}:events}}"
        self.channel_prefix = f"{self.tag}:"
        self._subscriptions: dict[_Subscription, None] = {}

    async def publish(self, topic: str, payload: Any = None) -> None:
        body = encode_event(topic, payload)  # refuses a bad payload before anything is sent
        channel = self.channel_prefix + topic
        client = self._client()
        cluster = client.cluster
        if cluster is None:
            await client.command("PUBLISH", channel, body)
            return

        def run() -> Awaitable[Any]:
            node = cluster.get_node_from_key(self.tag)  # the map as it is at each try
            return cluster.execute_command("PUBLISH", channel, body, target_nodes=node)

        await client._once_more(run)

    async def open_subscription(self, pattern: str) -> EventSubscription:
        subscription = _Subscription(self, TopicPattern(pattern))
        await subscription.connect()
        self._subscriptions[subscription] = None
        return subscription

    def _forget(self, subscription: _Subscription) -> None:
        self._subscriptions.pop(subscription, None)

    async def aclose(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.aclose()
        await super().aclose()


class _Subscription(EventSubscription):
    """One pub/sub connection, ``PSUBSCRIBE``d to the channels its pattern may match."""

    def __init__(self, bus: RedisEventBus, pattern: TopicPattern) -> None:
        self.pattern = pattern.pattern
        self._matcher = pattern
        self._bus = bus
        self._prefix = bus.channel_prefix.encode()
        self._redis_pattern = _glob_escape(bus.channel_prefix + pattern.literal_prefix) + (
            "" if pattern.exact else "*"
        )
        self._redis: Redis | None = None
        self._pubsub: PubSub | None = None
        self._reading: asyncio.Future[tuple[str, Any] | None] | None = None
        self._closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed = False
        self._outage = False

    @property
    def _options(self) -> RedisOptions:
        return self._bus.options

    async def connect(self) -> None:
        """Open the connection and subscribe; returns once the server confirmed it."""
        client = self._bus._client()
        limit = self._options.connect_timeout + self._options.socket_timeout
        try:
            host, port = await self._node(client)
            redis = client._node_client(host, port)
            pubsub = redis.pubsub()
            self._redis, self._pubsub = redis, pubsub
            async with asyncio.timeout(limit):
                await pubsub.psubscribe(self._redis_pattern)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message["type"] == "psubscribe":
                        return
        except BaseException as exc:
            await self._disconnect()
            if isinstance(exc, RedisError):
                raise translate(exc, self._options) from exc
            if isinstance(exc, TimeoutError):
                raise AdapterError(
                    f"the Redis server at {self._options.masked_url} did not confirm a "
                    f"subscription within {limit:g} s"
                ) from exc
            raise

    async def _node(self, client: RedisClient) -> tuple[str, int]:
        """The server to subscribe on: on a cluster, the node of the bus's slot."""
        cluster = client.cluster
        if cluster is None:
            return self._options.host, self._options.port
        try:
            await client._map_cluster()
            node = cluster.get_node_from_key(self._bus.tag)
            if node is None:  # pragma: no cover - it raises for a slot nobody serves
                raise RedisClusterException(f"no node serves the slot of {self._bus.tag!r}")
        except (RedisError, RedisClusterException) as exc:
            raise translate(exc, self._options) from exc
        return node.host, int(node.port)

    async def _disconnect(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        redis, self._redis = self._redis, None
        if pubsub is not None:
            close: Callable[[], Awaitable[None]] = pubsub.aclose
            with contextlib.suppress(Exception):
                await close()
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()
                await redis.connection_pool.disconnect()

    async def __anext__(self) -> tuple[str, Any]:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._reading is None:
                # Kept across a cancelled __anext__: a read cut short in the middle of a
                # reply would leave the connection unusable.
                self._reading = asyncio.ensure_future(self._read())
            reading = self._reading
            waits: set[asyncio.Future[Any]] = {reading, self._closing}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if self._closed or not reading.done():
                raise StopAsyncIteration  # closed meanwhile
            self._reading = None
            event = reading.result()
            if event is not None:
                return event

    async def _read(self) -> tuple[str, Any] | None:
        """The next event for this subscription, or None for a message that is not one;
        reconnects (and logs) when the connection breaks."""
        backoff = 0.05
        while True:
            pubsub = self._pubsub
            if pubsub is None:
                try:
                    await self._reconnect()
                except Exception as exc:
                    self._lost(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                if self._outage:
                    self._outage = False
                    log.warning(
                        "an event subscription to %r at %s is back; events published while "
                        "it was away were missed",
                        self.pattern,
                        self._options.masked_url,
                    )
                continue
            try:
                message: dict[str, Any] | None = await pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(exc)
                await self._disconnect()
                continue
            if message is None or message["type"] != "pmessage":
                continue
            return self._event(message["channel"], message["data"])

    async def _reconnect(self) -> None:
        client = self._bus._client()
        if client.cluster is not None and self._outage:
            # The node may have failed over: learn the slots again before choosing one.
            with contextlib.suppress(Exception):
                await client.cluster.nodes_manager.initialize()
        await self.connect()

    def _lost(self, exc: BaseException) -> None:
        if self._outage or self._closed:
            return
        self._outage = True
        shown = translate(exc, self._options) if isinstance(exc, RedisError) else exc
        log.warning(
            "lost an event subscription's connection to Redis at %s (%s); subscribing again "
            "(events published meanwhile are missed)",
            self._options.masked_url,
            shown,
        )

    def _event(self, channel: bytes, data: bytes) -> tuple[str, Any] | None:
        try:
            topic = channel[len(self._prefix) :].decode()
            if not self._matcher.matches(topic):
                return None
            return topic, decode_event(data)
        except (UnicodeDecodeError, msgspec.DecodeError) as exc:
            log.warning(
                "skipped a message on %r at %s: not a Stem event (%s)",
                channel,
                self._options.masked_url,
                exc,
            )
            return None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bus._forget(self)
        if not self._closing.done():
            self._closing.set_result(None)
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading
        await self._disconnect()
