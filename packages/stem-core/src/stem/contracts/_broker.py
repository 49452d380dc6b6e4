"""The Broker contract: moving task messages between producers and workers."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence

from .._clock import Clock, SystemClock
from .._messages import DeadLetter, Delivery, Message, QueueStats, TaskStatus
from ._backend import ResultBackend

__all__ = ["Broker", "BrokerCapabilities"]


class BrokerCapabilities:
    """What a broker can do; contract tests for a missing capability are skipped, with a reason.

    Attributes:
        priority: honours ``Message.priority`` (0-9, higher first) across a queue.
        delayed: holds messages with an ``eta`` until it is due.
        shared: several processes can use the same broker (not true of ``memory://``).
        notify: consumers are woken by new messages instead of polling.
    """

    priority: bool = True
    delayed: bool = True
    shared: bool = True
    notify: bool = False

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
        self, queue: str, message_ids: Sequence[str] | None = None, *, delay: float | None = None
    ) -> int:
        """Put dead letters (all, or those named) back on their queue; returns how many."""

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

    async def aclose(self) -> None:
        """Release connections; the broker is not used after this."""
