"""A plain-Python model of a broker queue, and a Hypothesis state machine that holds a
broker to it.

How the machine runs against an async broker: Hypothesis's stateful rules are plain
functions, and the broker lives on the test's event loop (its connections belong to
that loop). So the test hands the whole state machine to a worker thread
(``asyncio.to_thread``) and each rule submits its broker calls back to the loop with
``asyncio.run_coroutine_threadsafe`` and waits for the answer. The loop is idle
otherwise (the test is awaiting the thread), so nothing runs concurrently with a rule.

Alternatives rejected: an ``asyncio.Runner`` per example needs a broker that can be
built outside pytest fixtures (every adapter would have to write a second factory),
and a runner cannot be started inside the test's already-running loop.

Each example uses a fresh queue of the one broker, so examples are isolated without
a fresh broker per example.

Where the contract leaves a choice to the adapter, the model accepts either answer:

* settling a delivery whose lease ran out, before the message went out again, may
  succeed or fail;
* messages handed out before (requeued, or whose lease ran out) and replayed dead
  letters have no fixed place among messages of their priority; only messages never
  handed out must come out in order of due time, then publish order;
* a replayed dead letter's delivery count may restart or go on.

On a real clock (``SystemClock``) leases are long and there are no delays or clock
moves, since real time cannot be stepped in lockstep with the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from stem import Clock, FakeClock
from stem.contracts import Broker, Delivery, Message

from ._support import WAIT_LIMIT, unique

__all__ = ["BrokerModel", "run_broker_model"]

T = TypeVar("T")
Call = Callable[[Coroutine[Any, Any, T]], T]

# Durations: every clock move is a whole number of seconds and every lease and delay
# ends on a half second, so "now" never equals a lease end or a due time. At that
# boundary adapters may fairly differ (< or <=); the model should not care.
LEASES = [1.5, 4.5, 60.5]
DELAYS = [0.5, 2.5, 10.5]
MOVES = [1.0, 2.0, 5.0, 30.0]
REAL_TIME_LEASE = 3600.0


@dataclass
class ModelMessage:
    """One live message (ready, delayed or leased) as the model sees it."""

    message: Message
    due: float
    seq: int
    fresh: bool = True  # never handed out: its place in line is fixed
    replayed: bool = False
    deliveries: int | None = 0  # None: unknown (after a replay)
    receipt: str | None = None
    lease_until: float = 0.0

    def is_leased(self, now: float) -> bool:
        return self.receipt is not None and self.lease_until > now

    def is_ready(self, now: float) -> bool:
        return not self.is_leased(now) and self.due <= now


@dataclass
class BrokerModel:
    """What one queue should hold: live messages by id, dead letters in order."""

    live: dict[str, ModelMessage] = field(default_factory=dict)
    dead: dict[str, Message] = field(default_factory=dict)
    seq: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, message: Message, due: float, **state: Any) -> None:
        self.live[message.id] = ModelMessage(message, due, next(self.seq), **state)

    def ready(self, now: float) -> list[ModelMessage]:
        return [m for m in self.live.values() if m.is_ready(now)]

    def counts(self, now: float) -> tuple[int, int, int, int]:
        """(pending, delayed, inflight, dead), as ``queue_stats`` reports them."""
        leased = sum(1 for m in self.live.values() if m.is_leased(now))
        pending = len(self.ready(now))
        delayed = len(self.live) - leased - pending
        return pending, delayed, leased, len(self.dead)

    def expect_settle(self, delivery: Delivery, now: float) -> bool | None:
        """Must settling ``delivery`` succeed (True), fail (False), or may it do either (None)?"""
        m = self.live.get(delivery.message.id)
        if m is None or m.receipt != delivery.receipt:
            return False
        return True if m.lease_until > now else None

    def settled(self, delivery: Delivery, ok: bool) -> ModelMessage | None:
        """Note a settle call's answer; returns the message if the broker accepted it."""
        m = self.live.get(delivery.message.id)
        if m is None or m.receipt != delivery.receipt:
            return None
        if not ok:
            m.receipt = None  # refused once, refused for good
            return None
        return m


def check_reserved(
    model: BrokerModel, got: list[Delivery], limit: int, now: float, *, priority: bool
) -> None:
    """Assert that ``got`` is a batch the contract allows, given the model before the call."""
    ready = model.ready(now)
    assert len(got) == min(limit, len(ready)), (
        f"reserve(limit={limit}) returned {len(got)} messages with {len(ready)} ready"
    )
    got_ids = [d.message.id for d in got]
    assert len(set(got_ids)) == len(got_ids), f"one message twice in a batch: {got_ids}"
    by_id = {m.message.id: m for m in ready}
    for d in got:
        assert d.message.id in by_id, f"handed out {d.message.id}, which is not ready"
        expected = by_id[d.message.id].message
        if by_id[d.message.id].replayed:  # a replay may rewrite the eta
            assert (d.message.id, d.message.body, d.message.priority) == (
                expected.id,
                expected.body,
                expected.priority,
            )
        else:
            assert d.message == expected
    chosen = [by_id[i] for i in got_ids]
    left = [m for m in ready if m.message.id not in set(got_ids)]

    def rank(m: ModelMessage) -> int:
        return m.message.priority if priority else 0

    if priority:
        ranks = [rank(m) for m in chosen]
        assert ranks == sorted(ranks, reverse=True), f"priorities out of order: {ranks}"
        if chosen and left:
            assert max(map(rank, left)) <= min(ranks), "a higher priority message was left behind"
    for level in {rank(m) for m in chosen}:
        fresh_chosen = [(m.due, m.seq) for m in chosen if m.fresh and rank(m) == level]
        fresh_left = [(m.due, m.seq) for m in left if m.fresh and rank(m) == level]
        assert fresh_chosen == sorted(fresh_chosen), "messages of one priority out of order"
        if fresh_chosen and fresh_left:
            assert min(fresh_left) > max(fresh_chosen), "an earlier message was left behind"


def broker_machine(broker: Broker, clock: Clock, call: Call[Any]) -> type[RuleBasedStateMachine]:
    """A state machine class driving ``broker`` through ``call`` (which runs a coroutine)."""
    fake = isinstance(clock, FakeClock)
    caps = broker.capabilities
    priorities = st.integers(0, 9) if caps.priority else st.just(0)
    delays: st.SearchStrategy[float | None] = (
        st.none() | st.sampled_from(DELAYS) if fake and caps.delayed else st.none()
    )
    leases = st.sampled_from(LEASES) if fake else st.just(REAL_TIME_LEASE)
    bodies = st.binary(max_size=16)
    indexes = st.integers(0, 1_000)

    class BrokerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.queue = unique("model")
            self.model = BrokerModel()
            self.held: list[Delivery] = []
            self.receipts: set[str] = set()
            self.ids = itertools.count()

        def new_message(self, priority: int, delay: float | None, body: bytes) -> Message:
            eta = None if delay is None else clock.now() + delay
            return Message(
                id=f"{self.queue}-{next(self.ids)}",
                queue=self.queue,
                body=body,
                priority=priority,
                eta=eta,
            )

        def pick(self, index: int) -> Delivery:
            # Counted from the newest: Hypothesis favours small indexes, and recent
            # deliveries are the ones most likely still current (so settling succeeds).
            return self.held[-1 - index % len(self.held)]

        @initialize(batch=st.lists(st.tuples(priorities, delays, bodies), min_size=1, max_size=6))
        def fill(self, batch: list[tuple[int, float | None, bytes]]) -> None:
            # Start every example with messages, so more of its steps do something.
            self.publish_many(batch)

        @rule(priority=priorities, delay=delays, body=bodies)
        def publish(self, priority: int, delay: float | None, body: bytes) -> None:
            m = self.new_message(priority, delay, body)
            call(broker.publish(m))
            self.model.add(m, clock.now() if m.eta is None else m.eta)

        @rule(batch=st.lists(st.tuples(priorities, delays, bodies), min_size=1, max_size=4))
        def publish_many(self, batch: list[tuple[int, float | None, bytes]]) -> None:
            messages = [self.new_message(*spec) for spec in batch]
            call(broker.publish_many(messages))
            for m in messages:
                self.model.add(m, clock.now() if m.eta is None else m.eta)

        @rule(limit=st.integers(1, 5), lease=leases)
        def reserve(self, limit: int, lease: float) -> None:
            now = clock.now()
            got: list[Delivery] = call(broker.reserve([self.queue], limit, lease))
            check_reserved(self.model, got, limit, now, priority=caps.priority)
            for d in got:
                m = self.model.live[d.message.id]
                if m.deliveries is not None:
                    assert d.deliveries == m.deliveries + 1, "deliveries did not count up by one"
                assert d.deliveries >= 1
                assert d.receipt not in self.receipts, "a receipt was reused"
                if fake:
                    assert abs(d.lease_expires_at - (now + lease)) < 1e-3
                self.receipts.add(d.receipt)
                m.deliveries, m.receipt, m.lease_until, m.fresh = (
                    d.deliveries,
                    d.receipt,
                    now + lease,
                    False,
                )
                self.held.append(d)

        @precondition(lambda self: self.held)
        @rule(index=indexes)
        def ack(self, index: int) -> None:
            d = self.pick(index)
            expected = self.model.expect_settle(d, clock.now())
            ok: bool = call(broker.ack(d))
            if expected is not None:
                assert ok is expected, (
                    f"ack of a {'current' if expected else 'stale'} delivery: {ok}"
                )
            if self.model.settled(d, ok):
                del self.model.live[d.message.id]

        @precondition(lambda self: self.held)
        @rule(index=indexes, requeue=st.booleans(), delay=delays)
        def nack(self, index: int, requeue: bool, delay: float | None) -> None:
            d = self.pick(index)
            now = clock.now()
            expected = self.model.expect_settle(d, now)
            ok: bool = call(broker.nack(d, requeue=requeue, delay=delay))
            if expected is not None:
                assert ok is expected, (
                    f"nack of a {'current' if expected else 'stale'} delivery: {ok}"
                )
            m = self.model.settled(d, ok)
            if m is None:
                return
            if not requeue:
                del self.model.live[d.message.id]
                return
            m.receipt = None
            if delay is not None:
                m.due = now + delay

        @precondition(lambda self: self.held)
        @rule(index=indexes, seconds=leases)
        def extend_lease(self, index: int, seconds: float) -> None:
            d = self.pick(index)
            now = clock.now()
            expected = self.model.expect_settle(d, now)
            ok: bool = call(broker.extend_lease(d, seconds))
            if expected is not None:
                assert ok is expected, (
                    f"extend_lease of a {'current' if expected else 'stale'} delivery"
                )
            m = self.model.settled(d, ok)
            if m is not None:
                m.lease_until = now + seconds

        @precondition(lambda self: self.held)
        @rule(index=indexes)
        def dead_letter(self, index: int) -> None:
            d = self.pick(index)
            expected = self.model.expect_settle(d, clock.now())
            ok: bool = call(broker.dead_letter(d, "model", error="E"))
            if expected is not None:
                assert ok is expected, (
                    f"dead_letter of a {'current' if expected else 'stale'} delivery"
                )
            m = self.model.settled(d, ok)
            if m is None:
                return
            del self.model.live[d.message.id]
            self.model.dead[d.message.id] = m.message
            stored = call(broker.get_dead_letter(self.queue, d.message.id))
            assert stored is not None
            assert (stored.reason, stored.error) == ("model", "E")
            if m.deliveries is not None:
                assert stored.deliveries == m.deliveries

        @precondition(lambda self: self.model.dead)
        @rule(delay=delays, only_first=st.booleans())
        def replay(self, delay: float | None, only_first: bool) -> None:
            now = clock.now()
            chosen = list(self.model.dead)[:1] if only_first else list(self.model.dead)
            selection = chosen if only_first else None
            count: int = call(broker.replay_dead_letters(self.queue, selection, delay=delay))
            assert count == len(chosen)
            for message_id in chosen:
                message = self.model.dead.pop(message_id)
                due = now + (delay or 0.0)
                self.model.add(message, due, fresh=False, replayed=True, deliveries=None)

        if fake:

            @rule(seconds=st.sampled_from(MOVES))
            def advance(self, seconds: float) -> None:
                assert isinstance(clock, FakeClock)

                async def move() -> None:  # on the loop: advance wakes the loop's sleepers
                    clock.advance(seconds)

                call(move())

        @invariant()
        def counts_match(self) -> None:
            stats = call(broker.queue_stats(self.queue))
            expected = self.model.counts(clock.now())
            got = (stats.pending, stats.delayed, stats.inflight, stats.dead)
            assert got == expected, (
                f"queue_stats (pending, delayed, inflight, dead) {got} != {expected}"
            )

        @invariant()
        def dead_letters_match(self) -> None:
            listed = call(broker.list_dead_letters(self.queue, limit=1_000))
            assert sorted(d.message.id for d in listed) == sorted(self.model.dead)

    return BrokerMachine


async def run_broker_model(broker: Broker, clock: Clock, machine_settings: settings) -> None:
    """Run the model-based test against ``broker`` (see the module docstring for how)."""
    loop = asyncio.get_running_loop()

    def call(coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout=WAIT_LIMIT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"a broker call took more than {WAIT_LIMIT} s") from None

    machine = broker_machine(broker, clock, call)
    await asyncio.to_thread(run_state_machine_as_test, machine, settings=machine_settings)
