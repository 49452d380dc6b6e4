"""Wake-ups over Redis pub/sub: one subscriber connection per client, many channels.

Scripts ``PUBLISH`` on a queue's wake channel when messages become ready, and on a
task's channel when its status changes. A waiter never relies on catching the message
in flight: each channel counts the messages it got, so a caller notes the count
before it reads, and a wait returns at once if the count moved since (see
:meth:`Hub.wait`). When the subscriber connection drops, every count moves (waiters
read again) and the channels are subscribed again once it is back, so a wake-up lost
in an outage costs at most one read, never a hang.

On Redis Cluster, the scripts ``SPUBLISH`` instead (sharded pub/sub: a channel lives on
the slot of its hash tag, so a queue's wake-ups stay on the queue's node instead of being
broadcast to every node), and :class:`ShardedHub` holds one :class:`Hub` per node,
subscribing each channel on the node that owns its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stem import Clock

from ._errors import translate
from ._url import RedisOptions

__all__ = ["Channel", "Hub", "ShardedHub"]

log = logging.getLogger("stem.redis")


class Channel:
    """One subscribed channel: how many messages it got, and who waits for the next."""

    __slots__ = ("confirmed", "count", "name", "refs", "sticky", "waiters")

    def __init__(self, name: bytes, sticky: bool) -> None:
        self.name = name
        self.sticky = sticky
        self.count = 0
        self.refs = 0
        self.confirmed = asyncio.Event()
        self.waiters: set[asyncio.Future[None]] = set()

    def bump(self) -> None:
        self.count += 1
        waiters, self.waiters = self.waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


def _by_slot(names: Sequence[bytes]) -> list[list[bytes]]:
    """``names`` grouped by hash slot: one SSUBSCRIBE may name channels of one slot only."""
    groups: dict[int, list[bytes]] = {}
    for name in names:
        groups.setdefault(key_slot(name), []).append(name)
    return list(groups.values())


class Hub:
    """The subscriber connection of one client, shared by every waiter of its stores.

    With ``sharded``, it is the connection to one Redis Cluster node, and subscribes
    with ``SSUBSCRIBE`` (see :class:`ShardedHub`).
    """

    def __init__(self, redis: Redis, options: RedisOptions, *, sharded: bool = False) -> None:
        self._redis = redis
        self._options = options
        self._sharded = sharded
        self._pubsub: PubSub | None = None
        self._channels: dict[bytes, Channel] = {}
        self._reader: asyncio.Task[None] | None = None
        self._outage = False
        # One (un)subscribe command at a time: redis-py's PubSub takes a connection on
        # its first command, and two first commands at once would each take one, with
        # the reader listening on only one of them. FIFO, so commands go out in call order.
        self._sending = asyncio.Lock()

    def holds(self, name: bytes) -> bool:
        """Whether ``name`` is subscribed (or being subscribed) here."""
        return name in self._channels

    def channel(self, name: bytes) -> Channel | None:
        """The channel if subscribed (and confirmed), else None."""
        found = self._channels.get(name)
        return found if found is not None and found.confirmed.is_set() else None

    async def subscribe(
        self, names: Sequence[bytes], *, sticky: bool
    ) -> tuple[list[Channel], bool]:
        """Subscribe to ``names`` (once each), wait until the server confirmed them.

        Returns the channels and whether any of them is new: a change made before a new
        subscription took effect was not notified, so the caller should read again.
        Sticky channels stay subscribed until :meth:`aclose`; the others until every
        caller has :meth:`release`\\d them.
        """
        new = [name for name in dict.fromkeys(names) if name not in self._channels]
        for name in new:
            self._channels[name] = Channel(name, sticky)
        channels = [self._channels[name] for name in names]
        for channel in channels:
            channel.refs += 1
        try:
            if new:
                async with self._sending:
                    if self._pubsub is None:
                        self._pubsub = self._redis.pubsub()
                    if self._sharded:
                        for group in _by_slot(new):
                            await self._pubsub.ssubscribe(*group)
                    else:
                        await self._pubsub.subscribe(*new)
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.ensure_future(self._read())
            pending = [c.confirmed.wait() for c in channels if not c.confirmed.is_set()]
            if pending:
                limit = self._options.connect_timeout + self._options.socket_timeout
                async with asyncio.timeout(limit):
                    await asyncio.gather(*pending)
        except BaseException as exc:
            # Forget the channels this call added and the server never confirmed (sticky
            # ones included), so the next call subscribes to them afresh.
            for name in new:
                added = self._channels.get(name)
                if added is not None and not added.confirmed.is_set():
                    added.sticky = False
            await self.release(channels)
            if isinstance(exc, RedisError):
                raise translate(exc, self._options) from exc
            if isinstance(exc, TimeoutError):
                late = RedisTimeoutError("the server did not confirm SUBSCRIBE")
                raise translate(late, self._options) from exc
            raise
        return channels, bool(new)

    async def release(self, channels: Sequence[Channel]) -> None:
        """Drop one use of each channel; unsubscribe the non-sticky ones nobody uses."""
        gone: list[bytes] = []
        for channel in channels:
            channel.refs -= 1
            mine = self._channels.get(channel.name) is channel
            if channel.refs <= 0 and not channel.sticky and mine:
                del self._channels[channel.name]
                gone.append(channel.name)
        if gone and self._pubsub is not None:
            # Sent before any later SUBSCRIBE of the same name (the lock is first come,
            # first served), so the server's subscriptions end up as ours.
            async with self._sending:
                pubsub: PubSub | None = self._pubsub  # (closed while the lock was awaited?)
                if pubsub is None:
                    return
                with contextlib.suppress(RedisError, OSError):
                    if self._sharded:
                        for group in _by_slot(gone):
                            await pubsub.sunsubscribe(*group)
                    else:
                        await pubsub.unsubscribe(*gone)

    @staticmethod
    def marks(channels: Sequence[Channel]) -> tuple[int, ...]:
        return tuple(c.count for c in channels)

    @staticmethod
    async def wait(
        channels: Sequence[Channel], marks: Sequence[int], clock: Clock, timeout: float
    ) -> None:
        """Return when any channel got a message since ``marks``, or after ``timeout``."""
        if any(c.count != m for c, m in zip(channels, marks, strict=True)):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for channel in channels:
            channel.waiters.add(fut)
        sleeper = asyncio.ensure_future(clock.sleep(max(0.0, timeout)))
        try:
            await asyncio.wait({fut, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            for channel in channels:
                channel.waiters.discard(fut)
            if not fut.done():
                fut.cancel()

    async def _read(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self._pubsub
            if pubsub is None:
                return
            try:
                message: dict[str, Any] | None = await pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, RuntimeError) as exc:
                if self._sharded:
                    await self._node_lost(exc)
                    return
                if not self._outage:
                    self._outage = True
                    log.warning(
                        "lost the pub/sub connection to Redis at %s (%s); reconnecting",
                        self._options.masked_url,
                        translate(exc, self._options) if isinstance(exc, RedisError) else exc,
                    )
                for channel in list(self._channels.values()):
                    channel.bump()  # whatever was published meanwhile was missed: read again
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if self._outage:
                self._outage = False
                log.warning(
                    "the pub/sub connection to Redis at %s is back", self._options.masked_url
                )
            backoff = 0.05
            if not message:
                continue
            found = self._channels.get(message["channel"])
            if found is None:
                continue
            kind = message["type"]
            if kind in ("message", "smessage"):
                found.bump()
            elif kind in ("subscribe", "ssubscribe"):
                if found.confirmed.is_set():
                    found.bump()  # subscribed again after a reconnect
                else:
                    found.confirmed.set()
            elif kind == "sunsubscribe" and found.confirmed.is_set():
                # Not ours (a release removes the channel before it unsubscribes): the
                # node gave the channel's slot to another node. Forget the channel, so
                # the next subscription goes to the slot's new owner, and wake its waiters.
                del self._channels[found.name]
                pubsub.shard_channels.pop(found.name, None)
                found.bump()

    async def _node_lost(self, exc: Exception) -> None:
        """The connection to a cluster node broke: forget every channel, so the next
        subscriptions go to whichever node owns their slots by then (after a failover,
        another one), and wake every waiter to read again."""
        log.warning(
            "lost the pub/sub connection to a Redis Cluster node of %s (%s); waiters read "
            "again and subscribe anew",
            self._options.masked_url,
            translate(exc, self._options) if isinstance(exc, RedisError) else exc,
        )
        channels, self._channels = self._channels, {}
        pubsub, self._pubsub = self._pubsub, None
        self._reader = None
        for channel in channels.values():
            channel.bump()
        if pubsub is not None:
            close: Callable[[], Awaitable[None]] = pubsub.aclose
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await close()

    async def aclose(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            close: Callable[[], Awaitable[None]] = pubsub.aclose
            with contextlib.suppress(RedisError, OSError):
                await close()
        for channel in self._channels.values():
            channel.bump()
        self._channels.clear()


class ShardedHub:
    """Wake-ups on a Redis Cluster: one :class:`Hub` per node, each channel subscribed
    (``SSUBSCRIBE``) on the node that owns its slot. Same interface as :class:`Hub`.

    Args:
        cluster: the cluster client, whose view of the slots routes each channel.
        options: for error messages and timeouts.
        node_client: a client for one node (host, port), with the URL's credentials.
        mapped: makes sure the cluster client knows the slots (once, before first use).
    """

    marks = staticmethod(Hub.marks)
    wait = staticmethod(Hub.wait)

    def __init__(
        self,
        cluster: RedisCluster,
        options: RedisOptions,
        node_client: Callable[[str, int], Redis],
        mapped: Callable[[], Awaitable[None]],
    ) -> None:
        self._cluster = cluster
        self._options = options
        self._node_client = node_client
        self._mapped = mapped
        self._hubs: dict[str, tuple[Hub, Redis]] = {}

    def _holder(self, name: bytes) -> Hub | None:
        for hub, _ in self._hubs.values():
            if hub.holds(name):
                return hub
        return None

    def _hub_of(self, name: bytes) -> Hub:
        node = self._cluster.get_node_from_key(name.decode())  # our names are UTF-8
        if node is None:  # pragma: no cover - get_node_from_key raises for an uncovered slot
            raise RedisClusterException(f"no node serves the slot of {name!r}")
        found = self._hubs.get(node.name)
        if found is None:
            redis = self._node_client(node.host, int(node.port))
            found = self._hubs[node.name] = (Hub(redis, self._options, sharded=True), redis)
        return found[0]

    def channel(self, name: bytes) -> Channel | None:
        hub = self._holder(name)
        return None if hub is None else hub.channel(name)

    async def subscribe(
        self, names: Sequence[bytes], *, sticky: bool
    ) -> tuple[list[Channel], bool]:
        """As :meth:`Hub.subscribe`, each channel on its slot's node."""
        try:
            await self._mapped()
            groups: dict[Hub, list[bytes]] = {}
            for name in dict.fromkeys(names):
                hub = self._holder(name) or self._hub_of(name)
                groups.setdefault(hub, []).append(name)
        except (RedisError, RedisClusterException) as exc:
            raise translate(exc, self._options) from exc
        results = await asyncio.gather(
            *(hub.subscribe(group, sticky=sticky) for hub, group in groups.items()),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        done = [r for r in results if not isinstance(r, BaseException)]
        if failed:
            for (hub, _), result in zip(groups.items(), results, strict=True):
                if not isinstance(result, BaseException):
                    await hub.release(result[0])
            raise failed[0]
        found = {c.name: c for channels, _ in done for c in channels}
        return [found[name] for name in names], any(new for _, new in done)

    async def release(self, channels: Sequence[Channel]) -> None:
        groups: dict[Hub, list[Channel]] = {}
        for channel in channels:
            hub = self._holder(channel.name)
            if hub is None:  # dropped when its node went away: only the count goes down
                channel.refs -= 1
                continue
            groups.setdefault(hub, []).append(channel)
        for hub, group in groups.items():
            await hub.release(group)

    async def aclose(self) -> None:
        hubs, self._hubs = self._hubs, {}
        for hub, redis in hubs.values():
            await hub.aclose()
            with contextlib.suppress(RedisError, OSError):
                await redis.aclose()
                await redis.connection_pool.disconnect()
