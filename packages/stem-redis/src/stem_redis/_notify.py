"""Wake-ups over Redis pub/sub: one subscriber connection per client, many channels.

Scripts ``PUBLISH`` on a queue's wake channel when messages become ready, and on a
task's channel when its status changes. A waiter never relies on catching the message
in flight: each channel counts the messages it got, so a caller notes the count
before it reads, and a wait returns at once if the count moved since (see
:meth:`Hub.wait`). When the subscriber connection drops, every count moves (waiters
read again) and the channels are subscribed again once it is back, so a wake-up lost
in an outage costs at most one read, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stem import Clock

from ._errors import translate
from ._url import RedisOptions

__all__ = ["Channel", "Hub"]

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


class Hub:
    """The subscriber connection of one client, shared by every waiter of its stores."""

    def __init__(self, redis: Redis, options: RedisOptions) -> None:
        self._redis = redis
        self._options = options
        self._pubsub: PubSub | None = None
        self._channels: dict[bytes, Channel] = {}
        self._reader: asyncio.Task[None] | None = None
        self._outage = False

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
                if self._pubsub is None:
                    self._pubsub = self._redis.pubsub()
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
            # Sent before any later SUBSCRIBE of the same name (nothing yields before
            # the write), so the server's subscriptions end up as ours.
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(*gone)

    @staticmethod
    def marks(channels: Sequence[Channel]) -> tuple[int, ...]:
        return tuple(c.count for c in channels)

    async def wait(
        self, channels: Sequence[Channel], marks: Sequence[int], clock: Clock, timeout: float
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
            if kind == "message":
                found.bump()
            elif kind == "subscribe":
                if found.confirmed.is_set():
                    found.bump()  # subscribed again after a reconnect
                else:
                    found.confirmed.set()

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
