"""The Broker contract suite."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings

from stem import Clock
from stem.contracts import (
    Broker,
    Delivery,
    LockStore,
    Message,
    QueueStats,
    ResultBackend,
    TaskState,
    TaskStatus,
    UniqueClaim,
)
from stem.memory import MemoryLockStore, MemoryResultBackend

from ._broker_model import run_broker_model
from ._support import ContractSuite, requires, unique

__all__ = ["BrokerContract"]

#: A lease meant to run out during the test (short, so a real clock waits little).
LEASE = 0.5
#: A lease that must not run out during the test.
HOLD = 30.0
#: Enough time for a LEASE (or a delay of LEASE) to pass, with a margin so no test sits
#: on the boundary, where adapters may fairly differ (``<`` versus ``<=``).
PAST = 0.6


def message(
    queue: str,
    label: str = "m",
    *,
    body: bytes | None = None,
    priority: int = 0,
    eta: float | None = None,
) -> Message:
    """A message with a unique id (its body is the id unless given)."""
    message_id = unique(label)
    return Message(
        id=message_id,
        queue=queue,
        body=message_id.encode() if body is None else body,
        priority=priority,
        eta=eta,
    )


def ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.message.id for d in deliveries]


class BrokerContract(ContractSuite):
    """The behaviour every :class:`stem.contracts.Broker` must have.

    Subclass it as ``Test<YourBroker>`` and define a ``broker`` fixture that builds
    the broker on the ``clock`` fixture (and closes it afterwards). Override
    ``other_broker`` to open a second connection to the same store when the broker
    is shared between processes; override ``clock`` to return ``stem.SystemClock()``
    when the broker's server keeps its own time. Tests for capabilities the broker
    declares it lacks (``Broker.capabilities``) are skipped with the reason.
    """

    subject_fixture = "broker"

    #: Hypothesis settings of the model-based test; lower ``max_examples`` for slow brokers.
    model_settings: ClassVar[settings] = settings(
        max_examples=50,
        stateful_step_count=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )

    @pytest.fixture
    def broker(self, clock: Clock) -> Broker:
        """The broker under test, built on ``clock``; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `broker` fixture that builds the Broker under test"
        )

    @pytest.fixture
    def other_broker(self, broker: Broker) -> Broker:
        """A second handle on the same store (by default the same object)."""
        return broker

    @pytest.fixture
    def queue(self) -> str:
        """A queue name of this test's own."""
        return unique("queue")

    @pytest.fixture
    def companion_backend(self, broker: Broker, clock: Clock) -> ResultBackend:
        """The result backend an app pairs with this broker (override to share its store,
        so that :meth:`Broker.enqueue` and :meth:`Broker.settle` take their one-write path)."""
        return MemoryResultBackend(clock=clock)

    @pytest.fixture
    def companion_locks(self, broker: Broker, clock: Clock) -> LockStore:
        """The lock store an app pairs with this broker (override to share its store)."""
        return MemoryLockStore(clock=clock)

    async def stats(self, broker: Broker, queue: str) -> tuple[int, int, int, int]:
        """(pending, delayed, inflight, dead) of ``queue``."""
        s = await broker.queue_stats(queue)
        return s.pending, s.delayed, s.inflight, s.dead

    # -- publish and reserve --------------------------------------------------------------

    async def test_publish_then_reserve_leases_the_message(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        # Given a published message
        m = message(queue)
        await broker.publish(m)
        # When it is reserved
        [d] = await broker.reserve([queue], 10, HOLD)
        # Then it comes back whole, as the first delivery, leased from now
        assert d.message == m
        assert d.deliveries == 1
        assert d.receipt
        assert d.lease_expires_at == self.near(clock, clock.now() + HOLD)
        # And it is invisible to other reads while leased
        assert await broker.reserve([queue], 10, HOLD) == []

    async def test_ack_removes_the_message(self, broker: Broker, queue: str) -> None:
        await broker.publish(message(queue))
        [d] = await broker.reserve([queue], 1, HOLD)
        assert await broker.ack(d) is True
        assert await self.stats(broker, queue) == (0, 0, 0, 0)
        assert await broker.reserve([queue], 10, HOLD) == []

    async def test_publish_many_keeps_publish_order(self, broker: Broker, queue: str) -> None:
        batch = [message(queue, f"m{i}") for i in range(5)]
        await broker.publish_many(batch)
        assert await broker.pending_count(queue) == 5
        assert ids(await broker.reserve([queue], 10, HOLD)) == [m.id for m in batch]

    async def test_publish_many_of_nothing_is_harmless(self, broker: Broker, queue: str) -> None:
        await broker.publish_many([])
        assert await self.stats(broker, queue) == (0, 0, 0, 0)

    async def test_reserve_returns_at_once_when_nothing_is_ready(
        self, broker: Broker, queue: str
    ) -> None:
        # A reserve that waited for messages would hang on a FakeClock: bound it.
        assert await asyncio.wait_for(broker.reserve([queue], 10, HOLD), self.wait_limit) == []
        assert await asyncio.wait_for(broker.reserve([], 10, HOLD), self.wait_limit) == []

    async def test_reserve_respects_limit(self, broker: Broker, queue: str) -> None:
        await broker.publish_many([message(queue) for _ in range(5)])
        sizes = [len(await broker.reserve([queue], 2, HOLD)) for _ in range(4)]
        assert sizes == [2, 2, 1, 0]

    async def test_queues_are_read_in_the_order_given(self, broker: Broker) -> None:
        first, second = unique("first"), unique("second")
        # Given messages in both queues, the later-named queue published to first
        late = [message(second) for _ in range(2)]
        early = [message(first) for _ in range(2)]
        await broker.publish_many(late)
        await broker.publish_many(early)
        # When reading both, with a limit that reaches into the second queue
        got = await broker.reserve([first, second], 3, HOLD)
        # Then the first queue is drained before the second is read
        assert ids(got) == [early[0].id, early[1].id, late[0].id]

    async def test_bodies_are_opaque_bytes(self, broker: Broker, queue: str) -> None:
        bodies = [b"\xff\xfe\x00\x80 not utf-8", b"", bytes(range(256))]
        sent = [message(queue, body=b) for b in bodies]
        await broker.publish_many(sent)
        got = await broker.reserve([queue], 10, HOLD)
        assert [d.message for d in got] == sent

    async def test_duplicate_message_ids_are_both_delivered(
        self, broker: Broker, queue: str
    ) -> None:
        # A retry is published under its task id before the failed delivery is acked.
        first = Message(id="same-id", queue=queue, body=b"one")
        second = Message(id="same-id", queue=queue, body=b"two")
        await broker.publish_many([first, second])
        got = await broker.reserve([queue], 10, HOLD)
        assert [d.message.body for d in got] == [b"one", b"two"]
        assert got[0].receipt != got[1].receipt
        assert await broker.ack(got[0]) is True
        assert await broker.ack(got[1]) is True
        assert await self.stats(broker, queue) == (0, 0, 0, 0)

    # -- settling -------------------------------------------------------------------------

    async def test_double_ack_returns_false(self, broker: Broker, queue: str) -> None:
        await broker.publish(message(queue))
        [d] = await broker.reserve([queue], 1, HOLD)
        assert await broker.ack(d) is True
        assert await broker.ack(d) is False

    async def test_settle_stores_statuses_then_acks(self, broker: Broker, queue: str) -> None:
        # The worker's settlement; an adapter may override it to use one transaction.
        backend = MemoryResultBackend()
        await broker.publish_many([message(queue, body=b"one"), message(queue, body=b"two")])
        deliveries = await broker.reserve([queue], 2, HOLD)
        statuses = [
            (TaskStatus(id=d.message.id, state=TaskState.SUCCEEDED), None) for d in deliveries
        ]
        await broker.settle(deliveries, statuses, backend)
        stats = await broker.queue_stats(queue)
        assert (stats.pending, stats.inflight) == (0, 0)
        for delivery in deliveries:
            stored = await backend.get_status(delivery.message.id)
            assert stored is not None and stored.state is TaskState.SUCCEEDED

    # -- enqueue: messages with their statuses and unique claims ------------------------

    async def test_enqueue_stores_queued_statuses_with_the_messages(
        self, broker: Broker, queue: str, companion_backend: ResultBackend
    ) -> None:
        sent = [message(queue), message(queue)]
        statuses = [(TaskStatus(id=m.id, state=TaskState.QUEUED, queue=queue), None) for m in sent]
        assert await broker.enqueue(sent, statuses, companion_backend) == [None, None]
        for m in sent:
            stored = await companion_backend.get_status(m.id)
            assert stored is not None and stored.state is TaskState.QUEUED
        assert sorted(ids(await broker.reserve([queue], 10, HOLD))) == sorted(m.id for m in sent)

    async def test_enqueue_a_held_claim_is_a_duplicate_and_not_published(
        self,
        broker: Broker,
        queue: str,
        companion_backend: ResultBackend,
        companion_locks: LockStore,
    ) -> None:
        claim = UniqueClaim(key=unique("claim"), ttl=HOLD)
        first, second = message(queue), message(queue)

        async def enqueue(m: Message) -> list[str | None]:
            status = (TaskStatus(id=m.id, state=TaskState.QUEUED), None)
            return await broker.enqueue(
                [m], [status], companion_backend, claims=[claim], locks=companion_locks
            )

        assert await enqueue(first) == [None]
        assert await companion_locks.owner_of(claim.key) == first.id
        # The second holds no claim: it is neither published nor given a status
        assert await enqueue(second) == [first.id]
        assert await companion_backend.get_status(second.id) is None
        assert ids(await broker.reserve([queue], 10, HOLD)) == [first.id]

    async def test_enqueue_one_batch_with_one_claim_twice_publishes_the_first(
        self,
        broker: Broker,
        queue: str,
        companion_backend: ResultBackend,
        companion_locks: LockStore,
    ) -> None:
        claim = UniqueClaim(key=unique("claim"), ttl=HOLD)
        first, second = message(queue), message(queue)
        statuses = [(TaskStatus(id=m.id, state=TaskState.QUEUED), None) for m in (first, second)]
        got = await broker.enqueue(
            [first, second],
            statuses,
            companion_backend,
            claims=[claim, claim],
            locks=companion_locks,
        )
        assert got == [None, first.id]
        assert ids(await broker.reserve([queue], 10, HOLD)) == [first.id]

    async def test_enqueue_takes_over_a_claim_whose_task_does_not_exist(
        self,
        broker: Broker,
        queue: str,
        companion_backend: ResultBackend,
        companion_locks: LockStore,
    ) -> None:
        # Given a claim left by a producer that died before it published
        claim = UniqueClaim(key=unique("claim"), ttl=HOLD)
        assert await companion_locks.acquire(claim.key, "never-published", HOLD)
        # When a new task makes the same claim
        m = message(queue)
        status = (TaskStatus(id=m.id, state=TaskState.QUEUED), None)
        got = await broker.enqueue(
            [m], [status], companion_backend, claims=[claim], locks=companion_locks
        )
        # Then the dead claim is not honoured: the new task is published and holds it
        assert got == [None]
        assert await companion_locks.owner_of(claim.key) == m.id
        assert ids(await broker.reserve([queue], 10, HOLD)) == [m.id]

    async def test_ack_many_counts_only_current_deliveries(
        self, broker: Broker, queue: str
    ) -> None:
        await broker.publish_many([message(queue), message(queue)])
        d1, d2 = await broker.reserve([queue], 2, HOLD)
        # d1 appears twice: only its first ack counts
        assert await broker.ack_many([d1, d2, d1]) == 2
        assert await broker.ack_many([d1, d2]) == 0
        assert await self.stats(broker, queue) == (0, 0, 0, 0)

    async def test_settling_a_fabricated_delivery_returns_false(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        # Given a leased message
        m = message(queue)
        await broker.publish(m)
        [real] = await broker.reserve([queue], 1, HOLD)
        # When a delivery the broker never handed out is settled
        fake = Delivery(
            message=m,
            receipt="fabricated-receipt",
            deliveries=1,
            lease_expires_at=clock.now() + HOLD,
        )
        # Then every call says no and changes nothing
        assert await broker.ack(fake) is False
        assert await broker.nack(fake) is False
        assert await broker.extend_lease(fake, HOLD) is False
        assert await broker.dead_letter(fake, "fabricated") is False
        assert await self.stats(broker, queue) == (0, 0, 1, 0)
        assert await broker.ack(real) is True

    async def test_nack_with_requeue_redelivers(self, broker: Broker, queue: str) -> None:
        m = message(queue)
        await broker.publish(m)
        [first] = await broker.reserve([queue], 1, HOLD)
        assert await broker.nack(first) is True
        assert await self.stats(broker, queue) == (1, 0, 0, 0)
        [second] = await broker.reserve([queue], 1, HOLD)
        assert second.message == m
        assert second.deliveries == 2
        assert second.receipt != first.receipt
        # The first delivery is settled for good
        assert await broker.ack(first) is False
        assert await broker.ack(second) is True

    async def test_nack_without_requeue_drops(self, broker: Broker, queue: str) -> None:
        await broker.publish(message(queue))
        [d] = await broker.reserve([queue], 1, HOLD)
        assert await broker.nack(d, requeue=False) is True
        assert await self.stats(broker, queue) == (0, 0, 0, 0)
        assert await broker.reserve([queue], 10, HOLD) == []

    @requires("delayed")
    async def test_nack_with_delay_hides_until_due(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        m = message(queue)
        await broker.publish(m)
        [first] = await broker.reserve([queue], 1, HOLD)
        # When nacked with a delay
        assert await broker.nack(first, delay=LEASE) is True
        # Then it is delayed, not ready
        assert await broker.reserve([queue], 10, HOLD) == []
        assert await self.stats(broker, queue) == (0, 1, 0, 0)
        # Until the delay has passed
        await self.advance(clock, PAST)
        assert await self.stats(broker, queue) == (1, 0, 0, 0)
        [second] = await broker.reserve([queue], 10, HOLD)
        assert second.message.id == m.id
        assert second.deliveries == 2

    # -- leases ---------------------------------------------------------------------------

    async def test_expired_lease_is_redelivered(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        m = message(queue)
        await broker.publish(m)
        [first] = await broker.reserve([queue], 1, LEASE)
        # Before the lease ends, the message stays with its holder
        await self.advance(clock, LEASE / 2)
        assert await broker.reserve([queue], 10, HOLD) == []
        # After it ends, the message is ready again and goes out with a new receipt
        await self.advance(clock, PAST)
        assert await self.stats(broker, queue) == (1, 0, 0, 0)
        [second] = await broker.reserve([queue], 10, HOLD)
        assert second.message == m
        assert second.deliveries == 2
        assert second.receipt != first.receipt
        assert await broker.ack(second) is True

    async def test_extend_lease_postpones_redelivery(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        await broker.publish(message(queue))
        [d] = await broker.reserve([queue], 1, LEASE)
        await self.advance(clock, 0.3)
        # When the holder extends its lease to 1 s from now (0.3 + 1.0 = 1.3)
        assert await broker.extend_lease(d, 1.0) is True
        # Then the original end (0.5) passes without a redelivery
        await self.advance(clock, 0.4)
        assert await broker.reserve([queue], 10, HOLD) == []
        assert await self.stats(broker, queue) == (0, 0, 1, 0)
        # And the extended end (1.3) brings it back
        await self.advance(clock, 0.8)
        [again] = await broker.reserve([queue], 10, HOLD)
        assert again.deliveries == 2

    async def test_stale_delivery_cannot_settle_or_disturb_the_new_holder(
        self, broker: Broker, other_broker: Broker, clock: Clock, queue: str
    ) -> None:
        # Given a delivery whose lease ran out and whose message went to another consumer
        await broker.publish(message(queue))
        [stale] = await broker.reserve([queue], 1, LEASE)
        await self.advance(clock, PAST)
        [current] = await other_broker.reserve([queue], 1, HOLD)
        assert current.receipt != stale.receipt
        # When the first consumer settles its stale delivery, every call fails
        assert await broker.extend_lease(stale, HOLD) is False
        assert await broker.ack(stale) is False
        assert await broker.nack(stale) is False
        assert await broker.nack(stale, requeue=False) is False
        assert await broker.dead_letter(stale, "stale") is False
        # Then the new holder keeps the message: not requeued, dropped or dead-lettered
        assert await self.stats(broker, queue) == (0, 0, 1, 0)
        assert await broker.reserve([queue], 10, HOLD) == []
        assert await other_broker.extend_lease(current, HOLD) is True
        assert await other_broker.ack(current) is True

    # -- delays and priorities ------------------------------------------------------------

    @requires("delayed")
    async def test_delayed_message_is_invisible_until_its_eta(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        m = message(queue, eta=clock.now() + LEASE)
        await broker.publish(m)
        assert await broker.reserve([queue], 10, HOLD) == []
        assert await self.stats(broker, queue) == (0, 1, 0, 0)
        await self.advance(clock, PAST)
        assert await self.stats(broker, queue) == (1, 0, 0, 0)
        [d] = await broker.reserve([queue], 10, HOLD)
        assert d.message == m

    async def test_eta_in_the_past_is_ready_at_once(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        m = message(queue, eta=clock.now() - 60)
        await broker.publish(m)
        assert ids(await broker.reserve([queue], 10, HOLD)) == [m.id]

    @requires("delayed")
    async def test_due_time_orders_messages_of_one_priority(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        # Given a message due later published before one due sooner
        later = message(queue, "later", eta=clock.now() + 0.4)
        sooner = message(queue, "sooner", eta=clock.now() + 0.2)
        await broker.publish_many([later, sooner])
        await self.advance(clock, PAST)
        # Then they go out in order of due time, not of publishing
        assert ids(await broker.reserve([queue], 10, HOLD)) == [sooner.id, later.id]

    @requires("priority")
    async def test_higher_priority_first_and_fifo_within_a_priority(
        self, broker: Broker, queue: str
    ) -> None:
        sent = [
            message(queue, "p0a", priority=0),
            message(queue, "p5a", priority=5),
            message(queue, "p9", priority=9),
            message(queue, "p5b", priority=5),
            message(queue, "p0b", priority=0),
        ]
        for m in sent:  # one at a time, so publish order is unambiguous
            await broker.publish(m)
        got = await broker.reserve([queue], 10, HOLD)
        assert ids(got) == [sent[2].id, sent[1].id, sent[3].id, sent[0].id, sent[4].id]

    @requires("priority")
    async def test_priority_applies_across_a_limited_read(self, broker: Broker, queue: str) -> None:
        await broker.publish_many([message(queue, priority=1) for _ in range(3)])
        urgent = message(queue, "urgent", priority=9)
        await broker.publish(urgent)
        assert ids(await broker.reserve([queue], 1, HOLD)) == [urgent.id]

    @requires("priority", "delayed")
    async def test_delayed_high_priority_message_waits_for_its_eta(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        urgent_later = message(queue, "urgent", priority=9, eta=clock.now() + LEASE)
        plain_now = message(queue, "plain", priority=0)
        await broker.publish_many([urgent_later, plain_now])
        assert ids(await broker.reserve([queue], 10, HOLD)) == [plain_now.id]
        await self.advance(clock, PAST)
        assert ids(await broker.reserve([queue], 10, HOLD)) == [urgent_later.id]

    # -- inspection and purging ------------------------------------------------------------

    async def test_queue_stats_count_each_state(self, broker: Broker, queue: str) -> None:
        # Given 4 ready messages, 2 of them then reserved and 1 of those dead-lettered
        await broker.publish_many([message(queue) for _ in range(4)])
        d1, _ = await broker.reserve([queue], 2, HOLD)
        assert await broker.dead_letter(d1, "test") is True
        stats = await broker.queue_stats(queue)
        assert stats == QueueStats(queue=queue, pending=2, delayed=0, inflight=1, dead=1)
        assert await broker.pending_count(queue) == 2
        assert await broker.inflight_count(queue) == 1

    @requires("delayed")
    async def test_queue_stats_count_delayed_messages(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        await broker.publish_many(
            [
                message(queue),
                message(queue, eta=clock.now() + HOLD),
                message(queue, eta=clock.now() + HOLD),
            ]
        )
        assert await self.stats(broker, queue) == (1, 2, 0, 0)

    async def test_stats_of_an_unknown_queue_are_zero(self, broker: Broker, queue: str) -> None:
        assert await broker.queue_stats(queue) == QueueStats(queue=queue)
        assert await broker.pending_count(queue) == 0
        assert await broker.inflight_count(queue) == 0

    async def test_purge_counts_ready_messages_and_spares_inflight_ones(
        self, broker: Broker, queue: str
    ) -> None:
        await broker.publish_many([message(queue) for _ in range(3)])
        [held] = await broker.reserve([queue], 1, HOLD)
        assert await broker.purge(queue) == 2
        assert await self.stats(broker, queue) == (0, 0, 1, 0)
        assert await broker.reserve([queue], 10, HOLD) == []
        assert await broker.ack(held) is True
        assert await broker.purge(queue) == 0

    @requires("delayed")
    async def test_purge_removes_delayed_messages(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        await broker.publish_many([message(queue), message(queue, eta=clock.now() + LEASE)])
        assert await broker.purge(queue) == 2
        await self.advance(clock, PAST)
        assert await broker.reserve([queue], 10, HOLD) == []

    async def test_purge_removes_messages_whose_lease_ran_out(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        # Given a message whose lease ended: queue_stats counts it as pending (ready)
        await broker.publish(message(queue))
        await broker.reserve([queue], 1, LEASE)
        await self.advance(clock, PAST)
        assert await self.stats(broker, queue) == (1, 0, 0, 0)
        # When the queue is purged, it goes with the other ready messages
        assert await broker.purge(queue) == 1
        assert await broker.reserve([queue], 10, HOLD) == []
        assert await self.stats(broker, queue) == (0, 0, 0, 0)

    async def test_purge_of_an_unknown_queue_is_zero(self, broker: Broker, queue: str) -> None:
        assert await broker.purge(queue) == 0

    # -- dead letters -----------------------------------------------------------------------

    async def test_dead_letter_keeps_reason_error_traceback_and_deliveries(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        # Given a message delivered twice
        m = message(queue)
        await broker.publish(m)
        [first] = await broker.reserve([queue], 1, HOLD)
        await broker.nack(first)
        [second] = await broker.reserve([queue], 1, HOLD)
        # When it is dead-lettered
        ok = await broker.dead_letter(
            second, "failed", error="ValueError: bad", traceback="Trace..."
        )
        assert ok is True
        # Then it is kept, with why, and no longer queued
        dead = await broker.get_dead_letter(queue, m.id)
        assert dead is not None
        assert dead.message == m
        assert (dead.reason, dead.error, dead.traceback) == (
            "failed",
            "ValueError: bad",
            "Trace...",
        )
        assert dead.deliveries == 2
        assert dead.dead_at == self.near(clock, clock.now())
        assert await self.stats(broker, queue) == (0, 0, 0, 1)
        assert await broker.reserve([queue], 10, HOLD) == []
        # And the delivery is settled: a second dead_letter or an ack does nothing
        assert await broker.dead_letter(second, "again") is False
        assert await broker.ack(second) is False

    async def test_dead_letter_without_error_details(self, broker: Broker, queue: str) -> None:
        m = message(queue)
        await broker.publish(m)
        [d] = await broker.reserve([queue], 1, HOLD)
        assert await broker.dead_letter(d, "malformed") is True
        dead = await broker.get_dead_letter(queue, m.id)
        assert dead is not None
        assert (dead.reason, dead.error, dead.traceback, dead.deliveries) == (
            "malformed",
            None,
            None,
            1,
        )

    async def test_list_dead_letters_oldest_first_with_limit_and_offset(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        await broker.publish_many([message(queue, f"m{i}") for i in range(5)])
        got = await broker.reserve([queue], 5, HOLD)
        # Dead-letter them in an order other than publish order, time passing between
        order = [got[3], got[0], got[4], got[1], got[2]]
        for d in order:
            assert await broker.dead_letter(d, "test") is True
            await self.advance(clock, 0.01)
        listed = await broker.list_dead_letters(queue)
        assert [d.message.id for d in listed] == ids(order)
        page = await broker.list_dead_letters(queue, limit=2, offset=1)
        assert [d.message.id for d in page] == ids(order[1:3])
        assert await broker.list_dead_letters(queue, limit=10, offset=5) == []

    async def test_unknown_dead_letters(self, broker: Broker, queue: str) -> None:
        assert await broker.get_dead_letter(queue, "no-such-id") is None
        assert await broker.list_dead_letters(queue) == []
        assert await broker.replay_dead_letters(queue) == 0
        assert await broker.purge_dead_letters(queue) == 0

    async def dead_lettered(self, broker: Broker, queue: str, count: int) -> list[Message]:
        """Publish ``count`` messages and dead-letter them all, in publish order."""
        sent = [message(queue, f"dead{i}") for i in range(count)]
        await broker.publish_many(sent)
        for d in await broker.reserve([queue], count, HOLD):
            assert await broker.dead_letter(d, "test") is True
        return sent

    async def test_replay_all_dead_letters(self, broker: Broker, queue: str) -> None:
        sent = await self.dead_lettered(broker, queue, 3)
        assert await broker.replay_dead_letters(queue) == 3
        assert await self.stats(broker, queue) == (3, 0, 0, 0)
        got = await broker.reserve([queue], 10, HOLD)
        assert sorted(ids(got)) == sorted(m.id for m in sent)
        assert {d.message.body for d in got} == {m.body for m in sent}
        assert await broker.list_dead_letters(queue) == []

    async def test_replay_dead_letters_by_id(self, broker: Broker, queue: str) -> None:
        a, b, c = await self.dead_lettered(broker, queue, 3)
        # Unknown ids are ignored; the count says how many were replayed
        assert await broker.replay_dead_letters(queue, [a.id, c.id, "no-such-id"]) == 2
        assert sorted(ids(await broker.reserve([queue], 10, HOLD))) == sorted([a.id, c.id])
        assert [d.message.id for d in await broker.list_dead_letters(queue)] == [b.id]
        # An empty selection replays nothing (it does not mean "all")
        assert await broker.replay_dead_letters(queue, []) == 0
        assert await self.stats(broker, queue) == (0, 0, 2, 1)

    async def test_replay_is_a_fresh_start_for_the_delivery_count(
        self, broker: Broker, queue: str
    ) -> None:
        # Given a message delivered three times, then dead-lettered
        m = message(queue)
        await broker.publish(m)
        for _ in range(2):
            [d] = await broker.reserve([queue], 1, HOLD)
            assert await broker.nack(d, requeue=True)
        [d] = await broker.reserve([queue], 1, HOLD)
        assert d.deliveries == 3
        assert await broker.dead_letter(d, "poison")
        # When it is replayed, its count starts again (the poison check counts from here)
        assert await broker.replay_dead_letters(queue, [m.id]) == 1
        [again] = await broker.reserve([queue], 1, HOLD)
        assert again.deliveries == 1
        assert again.message.body == m.body

    async def test_replay_can_replace_bodies(self, broker: Broker, queue: str) -> None:
        a, b = await self.dead_lettered(broker, queue, 2)
        assert await broker.replay_dead_letters(queue, bodies={a.id: b"rewritten"}) == 2
        got = {d.message.id: d.message.body for d in await broker.reserve([queue], 10, HOLD)}
        assert got == {a.id: b"rewritten", b.id: b.body}

    @requires("delayed")
    async def test_replay_with_delay_is_invisible_until_due(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        [m] = await self.dead_lettered(broker, queue, 1)
        assert await broker.replay_dead_letters(queue, delay=LEASE) == 1
        assert await broker.reserve([queue], 10, HOLD) == []
        assert await self.stats(broker, queue) == (0, 1, 0, 0)
        await self.advance(clock, PAST)
        assert ids(await broker.reserve([queue], 10, HOLD)) == [m.id]

    async def test_purge_dead_letters_all_and_by_id(self, broker: Broker, queue: str) -> None:
        a, b, c, d = await self.dead_lettered(broker, queue, 4)
        assert await broker.purge_dead_letters(queue, [b.id, "no-such-id"]) == 1
        assert await broker.purge_dead_letters(queue, []) == 0
        remaining = [x.message.id for x in await broker.list_dead_letters(queue)]
        assert remaining == [a.id, c.id, d.id]
        assert await broker.get_dead_letter(queue, b.id) is None
        assert await broker.purge_dead_letters(queue) == 3
        assert await self.stats(broker, queue) == (0, 0, 0, 0)
        # Purged dead letters are gone, not replayed
        assert await broker.replay_dead_letters(queue) == 0

    # -- several consumers ----------------------------------------------------------------

    async def test_two_consumers_never_share_a_live_message(
        self, broker: Broker, other_broker: Broker, queue: str
    ) -> None:
        sent = [message(queue) for _ in range(120)]
        await broker.publish_many(sent)

        async def drain(consumer: Broker) -> list[str]:
            seen: list[str] = []
            while batch := await consumer.reserve([queue], 7, HOLD):
                seen.extend(ids(batch))
                await asyncio.sleep(0)  # let the other consumer in between reads
            return seen

        mine, theirs = await asyncio.gather(drain(broker), drain(other_broker))
        everything = mine + theirs
        assert len(everything) == len(set(everything)), "a message was leased twice at once"
        assert sorted(everything) == sorted(m.id for m in sent)

    @requires("shared")
    async def test_a_second_connection_sees_the_same_store(
        self, broker: Broker, other_broker: Broker, queue: str
    ) -> None:
        assert other_broker is not broker, (
            f"{type(broker).__name__} declares shared=True: override the other_broker "
            "fixture to open a second connection to the same store"
        )
        m = message(queue)
        await broker.publish(m)
        assert await other_broker.pending_count(queue) == 1
        [d] = await other_broker.reserve([queue], 1, HOLD)
        assert d.message == m
        # A delivery may be settled through any connection
        assert await broker.ack(d) is True
        assert await self.stats(other_broker, queue) == (0, 0, 0, 0)

    # -- races, fairness and limits (rules pinned down for networked brokers) --------------

    async def test_a_redelivered_message_goes_before_later_ones_of_its_priority(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        # Given a message whose holder died, and fresh messages published after it
        first = message(queue, "first")
        await broker.publish(first)
        await broker.reserve([queue], 1, LEASE)
        later = [message(queue, "later") for _ in range(3)]
        await broker.publish_many(later)
        await self.advance(clock, PAST)
        # Then it is not starved behind them: it goes out first, as its publish order says
        [again] = await broker.reserve([queue], 1, HOLD)
        assert again.message.id == first.id and again.deliveries == 2
        assert ids(await broker.reserve([queue], 10, HOLD)) == [m.id for m in later]

    async def test_a_queue_named_later_is_served_when_the_earlier_ones_are_empty(
        self, broker: Broker
    ) -> None:
        empty, busy = unique("empty"), unique("busy")
        sent = [message(busy) for _ in range(3)]
        await broker.publish_many(sent)
        assert ids(await broker.reserve([empty, busy], 10, HOLD)) == [m.id for m in sent]

    async def test_hundreds_of_queues_in_one_reserve(self, broker: Broker) -> None:
        names = [unique(f"q{i}") for i in range(300)]
        m = message(names[-1])
        await broker.publish(m)
        assert ids(await broker.reserve(names, 10, HOLD)) == [m.id]

    async def test_a_ten_megabyte_body_round_trips(self, broker: Broker, queue: str) -> None:
        body = bytes(range(256)) * (10 * 1024 * 1024 // 256)
        await broker.publish(message(queue, body=body))
        [d] = await broker.reserve([queue], 1, HOLD)
        assert d.message.body == body
        assert await broker.ack(d) is True

    async def test_concurrent_reads_of_a_due_delayed_message_hand_it_out_once(
        self, broker: Broker, other_broker: Broker, clock: Clock, queue: str
    ) -> None:
        # Both reads find it due and promote it: only one ready copy may come of that
        await broker.publish(message(queue, eta=clock.now() + LEASE))
        await self.advance(clock, PAST)
        reads = await asyncio.gather(
            *(b.reserve([queue], 10, HOLD) for b in (broker, other_broker) * 4)
        )
        assert sum(len(r) for r in reads) == 1
        assert await self.stats(broker, queue) == (0, 0, 1, 0)

    async def test_concurrent_replays_and_purges_act_on_each_dead_letter_once(
        self, broker: Broker, other_broker: Broker, queue: str
    ) -> None:
        await broker.publish_many([message(queue) for _ in range(6)])
        for d in await broker.reserve([queue], 6, HOLD):
            assert await broker.dead_letter(d, "test") is True
        replayed = await asyncio.gather(
            broker.replay_dead_letters(queue), other_broker.replay_dead_letters(queue)
        )
        assert sum(replayed) == 6
        assert await self.stats(broker, queue) == (6, 0, 0, 0)
        for d in await broker.reserve([queue], 6, HOLD):
            assert await broker.dead_letter(d, "test") is True
        purged = await asyncio.gather(
            broker.purge_dead_letters(queue), other_broker.purge_dead_letters(queue)
        )
        assert sum(purged) == 6
        assert await self.stats(broker, queue) == (0, 0, 0, 0)

    async def test_delivery_counts_stay_exact_across_takeovers(
        self, broker: Broker, other_broker: Broker, clock: Clock, queue: str
    ) -> None:
        await broker.publish(message(queue))
        holders = []
        for attempt, consumer in enumerate((broker, other_broker, broker, other_broker), 1):
            [d] = await consumer.reserve([queue], 1, LEASE)
            assert d.deliveries == attempt
            holders.append(d)
            await self.advance(clock, PAST)
        [last] = await broker.reserve([queue], 1, HOLD)
        assert last.deliveries == 5
        # Every earlier holder's ack fails; the current one's succeeds, once (a retried
        # ack whose reply was lost returns False and changes nothing)
        for stale in holders:
            assert await other_broker.ack(stale) is False
        assert await other_broker.ack(last) is True
        assert await broker.ack(last) is False

    async def test_a_publish_completes_while_a_consumer_waits_on_another_queue(
        self, broker: Broker, other_broker: Broker, queue: str
    ) -> None:
        # A consumer blocked on its queue (on this connection or another) must not hold
        # up a publish to another queue: a broker that blocks a shared connection would.
        quiet = unique("quiet")
        waiters = [
            asyncio.ensure_future(b.wait_for_messages([quiet], 3600))
            for b in (broker, other_broker)
        ]
        try:
            await asyncio.sleep(0)
            await asyncio.wait_for(broker.publish(message(queue)), self.wait_limit)
            assert await broker.pending_count(queue) == 1
            assert not any(w.done() and w.exception() for w in waiters)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def test_stats_add_up_under_concurrent_work(
        self, broker: Broker, other_broker: Broker, clock: Clock, queue: str
    ) -> None:
        sent = [message(queue) for _ in range(60)]
        delayed = [message(queue, "later", eta=clock.now() + HOLD) for _ in range(5)]
        acked = 0

        async def work(consumer: Broker, turn: int) -> None:
            nonlocal acked
            while batch := await consumer.reserve([queue], 4, HOLD):
                for i, d in enumerate(batch):
                    if (i + turn) % 3 == 0:
                        assert await consumer.ack(d) is True
                        acked += 1
                    elif (i + turn) % 3 == 1:
                        assert await consumer.dead_letter(d, "test") is True
                    # else: kept in flight
                await asyncio.sleep(0)

        await asyncio.gather(
            broker.publish_many(sent[:30]),
            other_broker.publish_many(sent[30:]),
            broker.publish_many(delayed),
        )
        await asyncio.gather(work(broker, 0), work(other_broker, 1))
        pending, later, inflight, dead = await self.stats(broker, queue)
        assert min(pending, later, inflight, dead) >= 0
        assert (pending, later) == (0, 5)
        assert inflight + dead + acked == 60
        assert await self.stats(other_broker, queue) == (pending, later, inflight, dead)

    # -- consume --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def consuming(
        self,
        broker: Broker,
        queue: str,
        monkeypatch: pytest.MonkeyPatch,
        *,
        prefetch: int = 10,
    ) -> AsyncIterator[tuple[AsyncIterator[list[Delivery]], asyncio.Event]]:
        """A consume stream, and an event set when it starts waiting for messages.

        The event comes from a spy on ``wait_for_messages``, which ``Broker.consume``
        calls between empty reads: the test then knows the consumer is waiting
        without sleeping.
        """
        waiting = asyncio.Event()
        original = broker.wait_for_messages

        async def spy(queues: Sequence[str], timeout: float) -> None:
            waiting.set()
            await original(queues, timeout)

        monkeypatch.setattr(broker, "wait_for_messages", spy)
        stream = broker.consume([queue], prefetch=prefetch, lease=HOLD)
        try:
            yield stream, waiting
        finally:
            # consume() is typed as an AsyncIterator; the base class's is a generator,
            # which must be closed here rather than whenever it is garbage-collected.
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    async def test_consume_yields_batches_of_at_most_prefetch(
        self, broker: Broker, queue: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sent = [message(queue) for _ in range(5)]
        await broker.publish_many(sent)
        received: list[str] = []
        async with self.consuming(broker, queue, monkeypatch, prefetch=2) as (stream, _):
            while len(received) < len(sent):
                batch = await asyncio.wait_for(anext(stream), self.wait_limit)
                assert 1 <= len(batch) <= 2
                received.extend(ids(batch))
        assert sorted(received) == sorted(m.id for m in sent)

    async def test_consume_wakes_up_when_a_message_is_published(
        self, broker: Broker, clock: Clock, queue: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with self.consuming(broker, queue, monkeypatch) as (stream, waiting):
            # Given a consumer waiting on an empty queue
            pending = asyncio.ensure_future(anext(stream))
            await asyncio.wait_for(waiting.wait(), self.wait_limit)
            # When a message is published
            m = message(queue)
            await broker.publish(m)
            # Then the consumer gets it (a polling broker on its next poll)
            nudge = 0.0 if broker.capabilities.notify else broker.poll_interval
            batch = await self.finish(clock, pending, nudge=nudge, what="consume()")
            assert ids(batch) == [m.id]

    @requires("notify")
    async def test_consume_is_woken_without_the_clock_moving(
        self, broker: Broker, clock: Clock, queue: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with self.consuming(broker, queue, monkeypatch) as (stream, waiting):
            pending = asyncio.ensure_future(anext(stream))
            await asyncio.wait_for(waiting.wait(), self.wait_limit)
            m = message(queue)
            await broker.publish(m)
            # No nudge: on a FakeClock, only a notification can wake the consumer
            batch = await self.finish(clock, pending, what="a notified consume()")
            assert ids(batch) == [m.id]

    @requires("delayed")
    async def test_consume_delivers_a_delayed_message_when_due(
        self, broker: Broker, clock: Clock, queue: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        m = message(queue, eta=clock.now() + LEASE)
        await broker.publish(m)
        async with self.consuming(broker, queue, monkeypatch) as (stream, waiting):
            pending = asyncio.ensure_future(anext(stream))
            await asyncio.wait_for(waiting.wait(), self.wait_limit)
            assert not pending.done()
            await self.advance(clock, PAST)
            batch = await self.finish(clock, pending, nudge=broker.poll_interval, what="consume()")
            assert ids(batch) == [m.id]

    # -- broadcast subscriptions --------------------------------------------------------

    @requires("broadcast")
    async def test_a_subscription_lives_for_its_ttl_and_renews(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        await broker.subscribe(queue, "w1", HOLD)
        [sub] = await broker.subscriptions(queue)
        assert sub.subscriber == "w1" and sub.live
        assert sub.expires_in == self.near(clock, HOLD)
        # Renewing moves its end; a short one ends, and is still listed as ended
        await broker.subscribe(queue, "w2", LEASE)
        await broker.subscribe(queue, "w1", HOLD * 2)
        await self.advance(clock, PAST)
        w1, w2 = await broker.subscriptions(queue)
        assert (w1.subscriber, w2.subscriber) == ("w1", "w2")
        assert w1.live and w1.expires_in == self.near(clock, HOLD * 2 - PAST)
        assert not w2.live and w2.expires_in <= 0

    @requires("broadcast")
    async def test_subscriptions_are_per_queue(self, broker: Broker, queue: str) -> None:
        other = unique("other-queue")
        await broker.subscribe(queue, "w1", HOLD)
        await broker.subscribe(other, "w2", HOLD)
        assert [s.subscriber for s in await broker.subscriptions(queue)] == ["w1"]
        assert [s.subscriber for s in await broker.subscriptions(other)] == ["w2"]
        assert await broker.subscriptions(unique("never")) == []

    @requires("broadcast")
    async def test_unsubscribe_removes_once(self, broker: Broker, queue: str) -> None:
        await broker.subscribe(queue, "w1", HOLD)
        assert await broker.unsubscribe(queue, "w1") is True
        assert await broker.unsubscribe(queue, "w1") is False
        assert await broker.subscriptions(queue) == []

    @requires("broadcast")
    async def test_unsubscribe_ended_for_spares_live_and_recent_subscriptions(
        self, broker: Broker, clock: Clock, queue: str
    ) -> None:
        # Given one live subscription and one that ended just now
        await broker.subscribe(queue, "live", HOLD)
        await broker.subscribe(queue, "ended", LEASE)
        await self.advance(clock, PAST)
        # Then neither has been over for a whole HOLD, so neither is removed
        assert await broker.unsubscribe(queue, "live", ended_for=HOLD) is False
        assert await broker.unsubscribe(queue, "ended", ended_for=HOLD) is False
        # But the ended one has been over for a moment
        assert await broker.unsubscribe(queue, "ended", ended_for=PAST - LEASE - 0.05) is True
        assert [s.subscriber for s in await broker.subscriptions(queue)] == ["live"]

    @requires("broadcast", "shared")
    async def test_subscriptions_are_shared_by_every_connection(
        self, broker: Broker, other_broker: Broker, queue: str
    ) -> None:
        await broker.subscribe(queue, "w1", HOLD)
        assert [s.subscriber for s in await other_broker.subscriptions(queue)] == ["w1"]
        assert await other_broker.unsubscribe(queue, "w1") is True
        assert await broker.subscriptions(queue) == []

    # -- the model ------------------------------------------------------------------------

    async def test_behaves_like_the_model(self, broker: Broker, clock: Clock) -> None:
        """Random sequences of operations, checked step by step against a Python model.

        Each example gets a fresh queue on the one broker, so examples do not see each
        other. Hypothesis drives the rules synchronously in a worker thread; each
        rule runs its broker calls on this test's event loop (where the broker's
        connections live) and waits for them. See ``_broker_model``.
        """
        await run_broker_model(broker, clock, self.model_settings)
