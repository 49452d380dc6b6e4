"""The EventBus (live events) and ControlChannel (remote control) contracts."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

__all__ = ["ControlChannel", "ControlMessage", "EventBus", "EventSubscription"]


class EventSubscription(abc.ABC):
    """One open subscription to an :class:`EventBus`: ``(topic, payload)`` pairs, live.

    Returned by :meth:`EventBus.open_subscription` (and given by
    :meth:`EventBus.subscription`) once it is live: every matching event published from
    then on reaches it. Iterate it with ``async for``; :meth:`aclose` ends it (an
    iteration in progress then stops), and so does closing its bus. Use it from the
    event loop that opened it.
    """

    #: The glob this subscription matches topics against.
    pattern: str

    def __aiter__(self) -> EventSubscription:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> tuple[str, Any]:
        """The next matching event; waits for one. StopAsyncIteration once closed."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """End the subscription and release what it holds; idempotent."""

    async def __aenter__(self) -> EventSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class EventBus(abc.ABC):
    """Live events for observers: dashboards, ``stem wf`` tools, user code.

    The workflow engine publishes every event it emits or sends (its topic and payload)
    and every run status change it makes (``stem.run.<status>``, payload ``{"run_id",
    "workflow", "status"}``); anyone may publish and subscribe. The rules every adapter
    keeps (``stem_adapter_tests.EventBusContract`` checks them):

    * **Live, not kept.** A publish reaches the subscriptions that are open when it is
      made, in this process and in every other one using the same store and namespace,
      and nothing else: an event published before a subscription opened never reaches
      it, and one that nobody subscribes to is gone. This is pub/sub, not a queue:
      durability is the :class:`WorkflowStore`'s job (the events that resolve waiting
      runs go through ``WorkflowStore.emit`` and ``send_event``, which keep them).
    * **Once each, in order.** Each open subscription whose pattern matches gets each
      event once. Events from one publisher (one bus object, each publish awaited before
      the next) arrive in the order published; events from several publishers
      interleave in no promised order.
    * **Patterns** are globs matched against the whole topic (see
      :class:`~stem.contracts.TopicPattern`): ``orders.*``, ``stem.run.*``, ``*``.
    * **Payloads are JSON data.** A payload is encoded at publish, and one that JSON
      cannot carry raises :class:`stem.SerializationError` there, before anything is
      sent. Each subscriber receives its own decoded copy: what JSON gives back (a
      tuple arrives as a list, a datetime as its ISO string).
    * **Namespaces** (the Redis key prefix, the SQLite ``namespace`` option) keep apart
      the events of apps sharing a server or a file.
    * **A slow subscriber delays nobody**: not the publisher, not other subscribers.
      It may fall behind by a bound the adapter sets (events kept per subscription,
      or seconds of retention), past which it loses the oldest, with a warning logged;
      a subscriber whose connection drops (Redis) loses what is published meanwhile.

    Adapters implement :meth:`publish` and :meth:`open_subscription`; :meth:`subscribe`
    and :meth:`subscription` are built on them.
    """

    @abc.abstractmethod
    async def publish(self, topic: str, payload: Any = None) -> None:
        """Send ``payload`` on ``topic`` to every open subscription that matches.

        Raises:
            SerializationError: the payload cannot be carried as JSON (nothing is sent).
            ConfigurationError: the topic is empty or not a string.
        """

    @abc.abstractmethod
    async def open_subscription(self, pattern: str) -> EventSubscription:
        """Subscribe to the topics ``pattern`` matches; returns once it is live.

        Raises:
            ConfigurationError: the pattern is not a valid glob.
        """

    def subscription(self, pattern: str) -> AbstractAsyncContextManager[EventSubscription]:
        """``async with bus.subscription("orders.*") as events:``, live in the body.

        Anything published once the body runs reaches ``events``, so a test or a tool can
        subscribe, then act, then read what its act caused; the subscription ends with
        the block.
        """
        return _Opened(self, pattern)

    async def subscribe(self, pattern: str) -> AsyncIterator[tuple[str, Any]]:
        """``async for topic, payload in bus.subscribe("orders.*"):`` for ever.

        The subscription opens when iteration begins (the first ``__anext__``): events
        published before that are not seen. Use :meth:`subscription` to know when it is
        live. Closing the iterator (or leaving the loop) ends it.
        """
        opened = await self.open_subscription(pattern)
        try:
            async for event in opened:
                yield event
        finally:
            await opened.aclose()

    async def aclose(self) -> None:
        """End open subscriptions and release connections."""


class _Opened(AbstractAsyncContextManager[EventSubscription]):
    """What :meth:`EventBus.subscription` returns: opens on entry, closes on exit."""

    def __init__(self, bus: EventBus, pattern: str) -> None:
        self._bus, self._pattern = bus, pattern
        self._opened: EventSubscription | None = None

    async def __aenter__(self) -> EventSubscription:
        self._opened = await self._bus.open_subscription(self._pattern)
        return self._opened

    async def __aexit__(self, *exc: object) -> None:
        opened, self._opened = self._opened, None
        if opened is not None:
            await opened.aclose()


class ControlMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A remote-control command or reply; ``destination`` None means every worker."""

    id: str
    command: str
    args: dict[str, Any] = {}
    destination: str | None = None
    reply_to: str | None = None
    sent_at: float = 0.0


class ControlChannel(abc.ABC):
    """Carries remote-control commands to workers and their replies back."""

    @abc.abstractmethod
    async def send(self, message: ControlMessage) -> None: ...

    @abc.abstractmethod
    def listen(self, worker_id: str) -> AsyncIterator[ControlMessage]: ...

    @abc.abstractmethod
    async def reply(self, reply_to: str, message: ControlMessage) -> None: ...

    @abc.abstractmethod
    def replies(self, reply_to: str) -> AsyncIterator[ControlMessage]: ...

    async def aclose(self) -> None:
        """Release connections."""
