"""The Broker contract: moving task messages between producers and workers."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence, Set
from typing import Any

import msgspec

from .._clock import Clock, SystemClock
from .._messages import (
    DeadLetter,
    Delivery,
    Message,
    QueueStats,
    Subscription,
    TaskError,
    TaskState,
    TaskStatus,
    UniqueClaim,
)
from ._backend import ResultBackend
from ._locks import LockStore

__all__ = ["Broker", "BrokerCapabilities", "subscriber_queue"]


class BrokerCapabilities:
    """What a broker can do; contract tests for a missing capability are skipped, with a reason.

    Attributes:
        priority: honours ``Message.priority`` (0-9, higher first) across a queue.
        delayed: holds messages with an ``eta`` until it is due.
        shared: several processes can use the same broker (not true of ``memory://``).
        notify: consumers are woken by new messages instead of polling.
        broadcast: keeps subscriptions for broadcast queues (:meth:`Broker.subscribe`).
    """

    priority: bool = True
    delayed: bool = True
    shared: bool = True
    notify: bool = False
    broadcast: bool = False

    def __init__(self, **flags: bool) -> None:
        for name, value in flags.items():
            if not hasattr(BrokerCapabilities, name):
                raise TypeError(f"unknown broker capability {name!r}")
            setattr(self, name, value)


class Broker(abc.ABC):
    """Stores messages per queue and leases them to consumers.

    Semantics every adapter keeps (the contract suite checks each):

    * A reserved message is leased: invisible to other consumers until its lease
      ends; a message whose lease ended without an ack is handed out again.
    * ``ack``/``nack``/``dead_letter``/``extend_lease`` act only on the current
      delivery of a message (its ``receipt``); on a stale or unknown delivery they
      do nothing and return False, so a double ack is harmless.
    * Ready messages go out highest ``priority`` first, then in order of due time
      (``eta`` or publish time), then publish order.
    * A message with an ``eta`` in the future is not handed out before it.
    * Message ids need not be unique: a retry is published under its task id
      before the failed delivery is acked, so two messages may share an id.
    * Times come from ``self.clock`` (so a FakeClock drives leases and delays),
      unless the adapter declares it cannot follow one.

    Adapters implement the primitives; :meth:`consume` holds the polling policy.
    """

    capabilities = BrokerCapabilities()

    def __init__(self, *, clock: Clock | None = None, poll_interval: float = 0.5) -> None:
        self.clock: Clock = clock or SystemClock()
        self.poll_interval = poll_interval

    # -- publishing -------------------------------------------------------------------

    @abc.abstractmethod
    async def publish_many(self, messages: Sequence[Message]) -> None:
        """Store messages; each becomes visible at its ``eta`` (or at once)."""

    async def publish(self, message: Message) -> None:
        await self.publish_many([message])

    async def enqueue(
        self,
        messages: Sequence[Message],
        statuses: Sequence[tuple[TaskStatus, float | None]],
        backend: ResultBackend,
        *,
        claims: Sequence[UniqueClaim | None] = (),
        locks: LockStore | None = None,
    ) -> list[str | None]:
        """The producer's publish: messages with their ``queued`` statuses and unique claims.

        ``statuses`` and ``claims`` (if given) line up with ``messages``. A message
        whose claim is held by another live task is a duplicate: it is neither
        published nor given a status, and its place in the returned list holds the
        id of the task that holds the claim (None for every message published).

        The promises: claims, statuses and messages are stored together or not at
        all (claims taken by a failed or cancelled call are released); a status is
        stored before its message can be delivered, so it never overwrites what a
        worker writes; a claim whose task has no status (its producer died between
        claim and publish, or its status expired) is not honoured, and is taken over.

        This default does it in several steps, releasing on failure; a claim taken
        a moment before its holder's status is written can be taken over by a
        concurrent producer. Adapters whose broker, backend and locks share one
        store override it to do everything in one transaction (SQLite does).
        """
        if claims and locks is None:
            raise ValueError("claims need the LockStore that holds them")
        existing: list[str | None] = [None] * len(messages)
        taken: list[tuple[str, str]] = []
        try:
            for index, claim in enumerate(claims):
                if claim is None:
                    continue
                assert locks is not None
                owner = messages[index].id
                holder = await claim_unique(
                    locks, backend, claim, owner, alive={o for _, o in taken}
                )
                if holder is None:
                    taken.append((claim.key, owner))
                else:
                    existing[index] = holder
            keep = [i for i, holder in enumerate(existing) if holder is None]
            if statuses:
                await backend.set_statuses([statuses[i] for i in keep])
            try:
                await self.publish_many([messages[i] for i in keep])
            except BaseException as exc:
                if statuses:
                    await _shielded(backend.set_statuses(_unpublished(statuses, keep, exc)))
                raise
        except BaseException:
            if locks is not None:
                for key, owner in taken:
                    await _shielded(locks.release(key, owner))
            raise
        return existing

    # -- consuming ----------------------------------------------------------------------

    @abc.abstractmethod
    async def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        """Lease up to ``limit`` ready messages from ``queues`` for ``lease`` seconds; never waits.

        Queues are read in the order given: earlier queues first.
        """

    async def wait_for_messages(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a message may be ready in ``queues``, or after ``timeout`` seconds.

        The default sleeps; adapters that can be notified override it.
        """
        await self.clock.sleep(timeout)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        """When the next delayed or leased message in ``queues`` becomes ready, if known.

        Lets :meth:`consume` sleep exactly until then; the default knows nothing.
        """
        return None

    async def consume(
        self, queues: Sequence[str], *, prefetch: int = 1, lease: float = 60.0
    ) -> AsyncIterator[list[Delivery]]:
        """Yield batches of deliveries, waiting between empty reads.

        Each batch has at most ``prefetch`` deliveries. The caller controls the pace:
        the next batch is read when it asks for it.
        """
        while True:
            batch = await self.reserve(queues, prefetch, lease)
            if batch:
                yield batch
                continue
            timeout = self.poll_interval
            due = await self.next_due(queues)
            if due is not None:
                timeout = max(0.0, min(timeout, due - self.clock.now()))
            await self.wait_for_messages(queues, timeout)

    # -- settling -----------------------------------------------------------------------

    @abc.abstractmethod
    async def ack_many(self, deliveries: Sequence[Delivery]) -> int:
        """Remove delivered messages for good; returns how many were current deliveries."""

    async def ack(self, delivery: Delivery) -> bool:
        return await self.ack_many([delivery]) == 1

    async def settle(
        self,
        deliveries: Sequence[Delivery],
        statuses: Sequence[tuple[TaskStatus, float | None]],
        backend: ResultBackend,
    ) -> None:
        """The worker's settlement: store ``statuses`` in ``backend``, then ack ``deliveries``.

        The order is the guarantee: a result is stored before its message is
        acknowledged. An adapter whose broker and backend share one database may
        override this to do both in one transaction.
        """
        if statuses:
            await backend.set_statuses(statuses)
        if deliveries:
            await self.ack_many(deliveries)

    @abc.abstractmethod
    async def nack(
        self, delivery: Delivery, *, requeue: bool = True, delay: float | None = None
    ) -> bool:
        """Give a delivery back: requeue it (after ``delay`` seconds) or drop it."""

    @abc.abstractmethod
    async def extend_lease(self, delivery: Delivery, seconds: float) -> bool:
        """Push the lease's end to ``seconds`` from now; False if the lease was lost."""

    @abc.abstractmethod
    async def dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        *,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        """Move a delivered message to its queue's dead letters, with the reason."""

    # -- dead letters -------------------------------------------------------------------

    @abc.abstractmethod
    async def list_dead_letters(
        self, queue: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """Dead letters of ``queue``, oldest first."""

    @abc.abstractmethod
    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        """One dead letter by message id."""

    @abc.abstractmethod
    async def replay_dead_letters(
        self,
        queue: str,
        message_ids: Sequence[str] | None = None,
        *,
        delay: float | None = None,
        bodies: Mapping[str, bytes] | None = None,
    ) -> int:
        """Put dead letters (all, or those named) back on their queue; returns how many.

        A replayed message starts afresh: its delivery count is zero again (the poison
        check counts from there). ``bodies`` replaces the body of the messages it names
        (the app uses it to restart the retry budget kept in the envelope).
        """

    @abc.abstractmethod
    async def purge_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all, or those named); returns how many."""

    # -- inspection ---------------------------------------------------------------------

    @abc.abstractmethod
    async def queue_stats(self, queue: str) -> QueueStats:
        """Counts of ready, delayed, leased and dead messages in ``queue``."""

    async def pending_count(self, queue: str) -> int:
        return (await self.queue_stats(queue)).pending

    async def inflight_count(self, queue: str) -> int:
        return (await self.queue_stats(queue)).inflight

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Delete every ready and delayed message of ``queue``; returns how many."""

    # -- broadcast subscriptions ----------------------------------------------------------
    #
    # A broadcast queue gives every subscriber its own copy of each message. The broker
    # keeps the subscriptions; the app makes the copies, one per live subscriber, on
    # the subscriber's own queue (:func:`subscriber_queue`), where each copy is leased,
    # retried and dead-lettered like any message. Brokers without the ``broadcast``
    # capability raise NotImplementedError.

    async def subscribe(self, queue: str, subscriber: str, ttl: float) -> None:
        """Subscribe ``subscriber`` to broadcast ``queue`` until ``ttl`` seconds from now
        (on this broker's clock); subscribing again renews it."""
        raise NotImplementedError(f"{type(self).__name__} has no broadcast queues")

    async def subscriptions(self, queue: str) -> list[Subscription]:
        """Every subscription of ``queue``, ended ones included, by subscriber name."""
        raise NotImplementedError(f"{type(self).__name__} has no broadcast queues")

    async def unsubscribe(
        self, queue: str, subscriber: str, *, ended_for: float | None = None
    ) -> bool:
        """Remove a subscription; with ``ended_for``, only if it ended at least that many
        seconds ago (so one renewed meanwhile stays). True if it was removed."""
        raise NotImplementedError(f"{type(self).__name__} has no broadcast queues")

    async def aclose(self) -> None:
        """Release connections; the broker is not used after this."""


def subscriber_queue(queue: str, subscriber: str) -> str:
    """The queue holding ``subscriber``'s copies of broadcast ``queue``'s messages.

    Queue names have no whitespace, so the space keeps every pair's name distinct.
    """
    return f"{queue} {subscriber}"


async def claim_unique(
    locks: LockStore,
    backend: ResultBackend,
    claim: UniqueClaim,
    owner: str,
    *,
    alive: Set[str] = frozenset(),
) -> str | None:
    """Take ``claim`` for ``owner``; returns the id of the live task holding it, or None.

    A holder with no stored status is a task that was never published (or whose
    record expired): its claim is released and taken over. ``alive`` names holders
    known to be live without a status yet (earlier messages of the same batch).
    """
    for _ in range(5):
        if await locks.acquire(claim.key, owner, claim.ttl):
            return None
        holder = await locks.owner_of(claim.key)
        if holder is None:
            continue  # expired between the two reads: try again
        if holder in alive or await backend.get_status(holder) is not None:
            return holder
        await locks.release(claim.key, holder)
    # The claim kept changing hands under us: publishing a second copy is better than
    # losing the task.
    return None


def _unpublished(
    statuses: Sequence[tuple[TaskStatus, float | None]], keep: list[int], exc: BaseException
) -> list[tuple[TaskStatus, float | None]]:
    """Statuses that say a publish failed, in place of the ``queued`` ones already stored."""
    error = TaskError(
        type="EnqueueFailed",
        message=f"the message was never published: {type(exc).__name__}: {exc}",
    )
    return [
        (msgspec.structs.replace(statuses[i][0], state=TaskState.FAILED, error=error), None)
        for i in keep
    ]


async def _shielded(awaitable: Any) -> None:
    """Run clean-up to its end even if the caller is being cancelled; never raise."""
    with contextlib.suppress(Exception):
        await asyncio.shield(awaitable)
