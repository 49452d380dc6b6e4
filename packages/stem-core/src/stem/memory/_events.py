"""The in-memory event bus, the reference :class:`~stem.contracts.EventBus`."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any

from .._clock import Clock, SystemClock
from ..contracts import EventBus, EventSubscription, TopicPattern, decode_event, encode_event

__all__ = ["MemoryEventBus"]

log = logging.getLogger("stem.events")

#: Events a subscription holds that its reader has not taken yet; past it, the oldest go.
BACKLOG = 10_000


class _Subscription(EventSubscription):
    """Events waiting for one subscriber, delivered into its own event loop."""

    def __init__(self, bus: MemoryEventBus, pattern: TopicPattern, backlog: int) -> None:
        self.pattern = pattern.pattern
        self.matcher = pattern
        self.loop = asyncio.get_running_loop()
        self._bus = bus
        self._backlog = backlog
        self._events: collections.deque[tuple[str, bytes]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._dropped = 0

    def deliver(self, topic: str, body: bytes) -> None:
        """Keep one event (in the subscription's loop)."""
        if self._closed:
            return
        if len(self._events) >= self._backlog:
            self._events.popleft()
            self._dropped += 1
            if self._dropped == 1:
                log.warning(
                    "a subscriber to %r fell %d events behind: the oldest are dropped "
                    "until it catches up (read faster, or close subscriptions not read)",
                    self.pattern,
                    self._backlog,
                )
        elif self._dropped and not self._events:
            self._dropped = 0
        self._events.append((topic, body))
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __anext__(self) -> tuple[str, Any]:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._events:
                topic, body = self._events.popleft()
                return topic, decode_event(body)
            waiter = self._waiter = self.loop.create_future()
            await waiter

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._events.clear()
        self._bus._forget(self)
        if self.loop is _running_loop():
            self._wake()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._wake)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class MemoryEventBus(EventBus):
    """Live events in process memory, the reference :class:`~stem.contracts.EventBus`.

    Its subscribers are those of this object (``memory://NAME`` URLs of one process
    share it); a bus of its own is a namespace of its own. Subscriptions may live in
    several event loops (a program's and Stem's synchronous portal's): each gets its
    events in its own loop, in the order published.

    Args:
        clock: kept for symmetry with the other stores (a bus reads no time).
        backlog: events a subscription keeps while its reader is busy; past it, the
            oldest are dropped (with a warning logged), so a reader that stopped reading
            costs bounded memory and delays nobody.
    """

    def __init__(self, *, clock: Clock | None = None, backlog: int = BACKLOG) -> None:
        if backlog < 1:
            raise ValueError(f"backlog must be 1 or more, not {backlog!r}")
        self.clock: Clock = clock or SystemClock()
        self.backlog = backlog
        self._lock = threading.Lock()
        self._subscriptions: dict[_Subscription, None] = {}  # in the order they opened
        self._snapshot: tuple[_Subscription, ...] = ()

    async def publish(self, topic: str, payload: Any = None) -> None:
        body = encode_event(topic, payload)  # refuses a bad payload before anything is sent
        running = _running_loop()
        for subscription in self._snapshot:
            if not subscription.matcher.matches(topic):
                continue
            if subscription.loop is running:
                subscription.deliver(topic, body)
            elif not subscription.loop.is_closed():
                try:
                    # FIFO per loop: one publisher's events stay in order.
                    subscription.loop.call_soon_threadsafe(subscription.deliver, topic, body)
                except RuntimeError:  # its loop closed meanwhile
                    pass

    async def open_subscription(self, pattern: str) -> EventSubscription:
        subscription = _Subscription(self, TopicPattern(pattern), self.backlog)
        with self._lock:
            self._subscriptions[subscription] = None
            self._snapshot = tuple(self._subscriptions)
        return subscription

    def _forget(self, subscription: _Subscription) -> None:
        with self._lock:
            if self._subscriptions.pop(subscription, 0) is None:
                self._snapshot = tuple(self._subscriptions)

    async def aclose(self) -> None:
        for subscription in self._snapshot:
            subscription.close()
