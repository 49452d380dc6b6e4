"""The EventBus contract suite."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import pytest

from stem import Clock, ConfigurationError, SerializationError
from stem.contracts import EventBus, EventSubscription

from ._support import ContractSuite, unique

__all__ = ["EventBusContract"]

#: Real seconds between probes while waiting for an iterator to start listening.
PROBE_EVERY = 0.02


class Reader:
    """Reads one subscription in the background: what it got, in order."""

    def __init__(self, subscription: EventSubscription, name: str = "") -> None:
        self.name = name or subscription.pattern
        self.got: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(subscription))

    async def _run(self, events: Any) -> None:
        async for event in events:
            self.got.append(event)
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.got]

    async def until(self, topic: str, limit: float) -> None:
        """Return once an event on ``topic`` came; fail after ``limit`` real seconds."""
        try:
            async with asyncio.timeout(limit):
                while topic not in self.topics():
                    if self.task.done():
                        self.task.result()  # raises what the reader raised
                        pytest.fail(f"the subscription to {self.name!r} ended early")
                    waiter = asyncio.ensure_future(self._changed.wait())
                    try:
                        await asyncio.wait({waiter, self.task}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
        except TimeoutError:
            pytest.fail(
                f"the subscription to {self.name!r} got no event on {topic!r} within "
                f"{limit} s (it got {self.topics()})"
            )

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class EventBusContract(ContractSuite):
    """The behaviour every :class:`stem.contracts.EventBus` must have.

    Subclass it as ``Test<YourEventBus>`` and define two fixtures: ``events``, the bus
    under test, and ``foreign_events``, a bus of another namespace on the same server or
    file, which must see nothing of the first. Override ``other_events`` to open a second
    connection in the same namespace, as another process would (by default, the same
    object).

    The rules (see the :class:`~stem.contracts.EventBus` docstring):

    * a publish reaches every subscription open at that moment whose pattern matches,
      once, through any connection of the namespace; never one opened after it;
    * from one publisher, in the order published;
    * patterns are globs matched against the whole topic;
    * payloads are JSON data, each subscriber gets its own copy, and one JSON cannot
      carry is refused at publish with ``SerializationError``, nothing sent;
    * a subscriber that does not read, or stops, delays neither the publisher nor the
      other subscribers; closing a subscription ends its iteration.

    Topics start with a name of the test's own, so a server shared by all tests needs
    no cleaning between them.
    """

    subject_fixture = "events"

    @pytest.fixture
    def events(self, clock: Clock) -> EventBus:
        """The event bus under test; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define an `events` fixture that builds the EventBus"
        )

    @pytest.fixture
    def other_events(self, events: EventBus) -> EventBus:
        """A second connection in the same namespace (by default the same object)."""
        return events

    @pytest.fixture
    def foreign_events(self, clock: Clock) -> EventBus:
        """A bus of another namespace on the same server; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `foreign_events` fixture: a bus of another "
            "namespace (another key prefix, another namespace option) on the same server"
        )

    @pytest.fixture
    async def readers(self) -> Any:
        """Starts background readers; each is stopped before the buses close."""
        started: list[Reader] = []
        stack = contextlib.AsyncExitStack()

        async def read(bus: EventBus, pattern: str) -> Reader:
            subscription = await stack.enter_async_context(bus.subscription(pattern))
            reader = Reader(subscription)
            started.append(reader)
            return reader

        yield read
        for reader in started:
            await reader.stop()
        await stack.aclose()

    # -- delivery -----------------------------------------------------------------------

    async def test_every_live_subscription_gets_each_event_once_with_its_payload(
        self, events: EventBus, other_events: EventBus, readers: Any
    ) -> None:
        ns = unique("t")
        subscribers = [
            await readers(events, f"{ns}.*"),
            await readers(events, f"{ns}.*"),  # two on one connection: each its own copy
            await readers(other_events, f"{ns}.*"),
        ]
        payload = {"order": 42, "ключ": ["δ", 2.5, None, True, {"nested": [1, 2]}], "n": -(2**53)}
        await events.publish(f"{ns}.created", payload)
        await events.publish(f"{ns}.empty")  # no payload: None
        await events.publish(f"{ns}.tuple", (1, "two"))  # what JSON gives back: a list
        await events.publish(f"{ns}.end", "end")
        expected = [
            (f"{ns}.created", payload),
            (f"{ns}.empty", None),
            (f"{ns}.tuple", [1, "two"]),
            (f"{ns}.end", "end"),
        ]
        for reader in subscribers:
            await reader.until(f"{ns}.end", self.wait_limit)
            assert reader.got == expected, reader.name
        # Each subscriber has a copy of its own: changing one changes no other
        subscribers[0].got[0][1]["order"] = 0
        assert subscribers[1].got[0][1]["order"] == 42

    async def test_a_subscription_gets_nothing_published_before_it_opened(
        self, events: EventBus, other_events: EventBus, readers: Any
    ) -> None:
        ns = unique("t")
        await events.publish(f"{ns}.early", 1)
        await other_events.publish(f"{ns}.early", 2)
        late = await readers(other_events, f"{ns}.*")
        await events.publish(f"{ns}.end")
        await late.until(f"{ns}.end", self.wait_limit)
        assert late.topics() == [f"{ns}.end"]

    async def test_events_cross_between_connections_both_ways(
        self, events: EventBus, other_events: EventBus, readers: Any
    ) -> None:
        ns = unique("t")
        here, there = await readers(events, f"{ns}.*"), await readers(other_events, f"{ns}.*")
        await other_events.publish(f"{ns}.from-other", {"by": "other"})
        await events.publish(f"{ns}.from-first", {"by": "first"})
        await other_events.publish(f"{ns}.end-a")
        await events.publish(f"{ns}.end-b")
        for reader in (here, there):
            await reader.until(f"{ns}.end-a", self.wait_limit)
            await reader.until(f"{ns}.end-b", self.wait_limit)
            got = reader.topics()
            # Each publisher's events in its own order; the two may interleave
            assert [t for t in got if t in (f"{ns}.from-other", f"{ns}.end-a")] == [
                f"{ns}.from-other",
                f"{ns}.end-a",
            ]
            assert [t for t in got if t in (f"{ns}.from-first", f"{ns}.end-b")] == [
                f"{ns}.from-first",
                f"{ns}.end-b",
            ]
            assert len(got) == 4

    async def test_patterns_are_globs_matched_against_the_whole_topic(
        self, events: EventBus, other_events: EventBus, readers: Any
    ) -> None:
        ns = unique("t")
        topics = [
            f"{ns}.orders.created",
            f"{ns}.orders.created.late",
            f"{ns}.refunds.created",
            f"{ns}.xorders.created",
            f"{ns}.a.x",
            f"{ns}.c.x",
            f"{ns}.lit*",
            f"{ns}.litX",
            f"{ns}.orders",
        ]
        expected = {
            f"{ns}.*": topics,
            f"{ns}.orders.*": [f"{ns}.orders.created", f"{ns}.orders.created.late"],
            f"{ns}.*.created": [
                f"{ns}.orders.created",
                f"{ns}.refunds.created",
                f"{ns}.xorders.created",
            ],
            f"{ns}.orders.created": [f"{ns}.orders.created"],
            f"{ns}.?orders.created": [f"{ns}.xorders.created"],
            f"{ns}.[ab].x": [f"{ns}.a.x"],
            f"{ns}.[^ab].x": [f"{ns}.c.x"],
            f"{ns}.[a-c].x": [f"{ns}.a.x", f"{ns}.c.x"],
            f"{ns}.lit\\*": [f"{ns}.lit*"],
            f"{ns}.orders": [f"{ns}.orders"],
        }
        subscribed = {pattern: await readers(other_events, pattern) for pattern in expected}
        for topic in topics:
            await events.publish(topic, topic)
        for pattern, want in expected.items():
            reader = subscribed[pattern]
            await reader.until(want[-1], self.wait_limit)
            assert reader.got == [(t, t) for t in want], pattern
        # ...and nothing else came meanwhile: the catch-all saw the last event after all
        for pattern, want in expected.items():
            assert subscribed[pattern].topics() == want, pattern

    async def test_one_publishers_events_arrive_in_the_order_published(
        self, events: EventBus, other_events: EventBus, readers: Any
    ) -> None:
        ns = unique("t")
        reader = await readers(other_events, f"{ns}.*")
        topics = [f"{ns}.{'ab'[i % 2]}.{i}" for i in range(200)]
        for i, topic in enumerate(topics):
            await events.publish(topic, {"i": i})
        await reader.until(topics[-1], self.wait_limit)
        assert reader.got == [(topic, {"i": i}) for i, topic in enumerate(topics)]

    async def test_subscribe_iterates_events_once_it_has_started(self, events: EventBus) -> None:
        ns = unique("t")
        iterator = events.subscribe(f"{ns}.*")
        first = asyncio.ensure_future(anext(iterator))
        try:
            # It subscribes when iteration begins: probe until it hears one
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.wait_limit
            while not first.done():
                if loop.time() > deadline:
                    pytest.fail(f"subscribe() heard no probe within {self.wait_limit} s")
                await events.publish(f"{ns}.probe")
                await asyncio.wait({first}, timeout=PROBE_EVERY)
            assert first.result() == (f"{ns}.probe", None)
            await events.publish(f"{ns}.after", [1])
            while True:
                topic, payload = await asyncio.wait_for(anext(iterator), self.wait_limit)
                if topic != f"{ns}.probe":  # probes still on their way
                    break
            assert (topic, payload) == (f"{ns}.after", [1])
        finally:
            first.cancel()
            await iterator.aclose()  # type: ignore[attr-defined]

    # -- bad input ----------------------------------------------------------------------

    async def test_a_payload_json_cannot_carry_is_refused_and_nothing_is_sent(
        self, events: EventBus, readers: Any
    ) -> None:
        ns = unique("t")
        reader = await readers(events, f"{ns}.*")
        for bad in (object(), {"when": {1, 2, object()}}, math.nan, [math.inf], {"x": object()}):
            with pytest.raises(SerializationError, match=rf"{ns}\.bad"):
                await events.publish(f"{ns}.bad", bad)
        for topic in ("", None, 42):
            with pytest.raises(ConfigurationError, match="topic"):
                await events.publish(topic, 1)  # type: ignore[arg-type]
        await events.publish(f"{ns}.end")
        await reader.until(f"{ns}.end", self.wait_limit)
        assert reader.topics() == [f"{ns}.end"]

    async def test_a_malformed_pattern_is_refused(self, events: EventBus) -> None:
        for bad in ("", "orders.[", "orders.[]", "orders.\\"):
            with pytest.raises(ConfigurationError, match="pattern"):
                await events.open_subscription(bad)

    # -- isolation and slow subscribers ---------------------------------------------------

    async def test_nothing_crosses_namespaces(
        self, events: EventBus, foreign_events: EventBus, readers: Any
    ) -> None:
        ns = unique("t")
        mine, theirs = await readers(events, f"{ns}.*"), await readers(foreign_events, f"{ns}.*")
        await events.publish(f"{ns}.mine", "mine")
        await foreign_events.publish(f"{ns}.theirs", "theirs")
        await events.publish(f"{ns}.end")
        await foreign_events.publish(f"{ns}.end")
        await mine.until(f"{ns}.end", self.wait_limit)
        await theirs.until(f"{ns}.end", self.wait_limit)
        assert mine.got == [(f"{ns}.mine", "mine"), (f"{ns}.end", None)]
        assert theirs.got == [(f"{ns}.theirs", "theirs"), (f"{ns}.end", None)]

    async def test_a_subscriber_that_does_not_read_or_stops_delays_nobody(
        self, events: EventBus, other_events: EventBus, readers: Any
    ) -> None:
        ns = unique("t")
        idle = await other_events.open_subscription(f"{ns}.*")  # never read
        stopping = await other_events.open_subscription(f"{ns}.*")
        reading = asyncio.ensure_future(anext(stopping))
        await asyncio.sleep(0)
        # Closed while a read waits: the read ends, and nothing more is delivered to it
        await stopping.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reading, self.wait_limit)
        with pytest.raises(StopAsyncIteration):
            await anext(stopping)
        active = await readers(events, f"{ns}.*")
        try:
            topics = [f"{ns}.{i}" for i in range(100)]
            async with asyncio.timeout(self.wait_limit):  # the publisher never waits for them
                for topic in topics:
                    await events.publish(topic, {"pad": "x" * 200})
            await active.until(topics[-1], self.wait_limit)
            assert active.topics() == topics
        finally:
            await idle.aclose()
        await idle.aclose()  # idempotent
        await stopping.aclose()

    async def test_closing_the_bus_ends_its_subscriptions(self, events: EventBus) -> None:
        ns = unique("t")
        subscription = await events.open_subscription(f"{ns}.*")
        reading = asyncio.ensure_future(anext(subscription))
        await asyncio.sleep(0)
        await events.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reading, self.wait_limit)
        await subscription.aclose()
