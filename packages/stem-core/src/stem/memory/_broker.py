"""The in-memory broker: the reference implementation of the Broker contract."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from msgspec.structs import replace

from .._clock import Clock
from .._messages import DeadLetter, Delivery, Message, QueueStats, Subscription
from .._notify import Notifier
from ..contracts import Broker, BrokerCapabilities

__all__ = ["MemoryBroker"]


@dataclass(eq=False)
class _Entry:
    message: Message
    seq: int
    due: float
    deliveries: int = 0
    receipt: str | None = None
    lease_until: float = 0.0


@dataclass
class _Queue:
    ready: list[tuple[int, float, int, _Entry]] = field(
        default_factory=list
    )  # (-priority, due, seq)
    delayed: list[tuple[float, int, _Entry]] = field(default_factory=list)  # (due, seq)
    leased: dict[str, _Entry] = field(default_factory=dict)  # by receipt
    dead: list[DeadLetter] = field(default_factory=list)


class MemoryBroker(Broker):
    """Messages in process memory: fast, exact, and gone when the process ends.

    Ready messages sit in a heap ordered by priority, due time and publish order;
    delayed ones in a heap by due time; leased ones by entry, so settling is O(1)
    and a lease that ran out is reclaimed on the next read.
    """

    capabilities = BrokerCapabilities(shared=False, notify=True, broadcast=True)

    def __init__(self, *, clock: Clock | None = None, poll_interval: float = 1.0) -> None:
        super().__init__(clock=clock, poll_interval=poll_interval)
        self._queues: dict[str, _Queue] = {}
        # Broadcast queue -> subscriber -> when the subscription ends.
        self._subscriptions: dict[str, dict[str, float]] = {}
        self._seq = itertools.count()
        self._notifier = Notifier()

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue()
        return queue

    def _place(self, queue: _Queue, entry: _Entry, now: float) -> None:
        if entry.due > now:
            heapq.heappush(queue.delayed, (entry.due, entry.seq, entry))
        else:
            heapq.heappush(queue.ready, (-entry.message.priority, entry.due, entry.seq, entry))

    async def publish_many(self, messages: Sequence[Message]) -> None:
        now = self.clock.now()
        for message in messages:
            seq = next(self._seq)
            due = message.eta if message.eta is not None else now
            self._place(self._queue(message.queue), _Entry(message, seq, due), now)
        self._notifier.notify()

    def _refresh(self, queue: _Queue, now: float) -> None:
        while queue.delayed and queue.delayed[0][0] <= now:
            _, _, entry = heapq.heappop(queue.delayed)
            heapq.heappush(queue.ready, (-entry.message.priority, entry.due, entry.seq, entry))
        expired = [(r, e) for r, e in queue.leased.items() if e.lease_until <= now]
        for receipt, entry in expired:
            del queue.leased[receipt]
            entry.receipt = None
            heapq.heappush(queue.ready, (-entry.message.priority, entry.due, entry.seq, entry))

    async def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        now = self.clock.now()
        out: list[Delivery] = []
        for name in queues:
            queue = self._queues.get(name)
            if queue is None:
                continue
            self._refresh(queue, now)
            while queue.ready and len(out) < limit:
                _, _, _, entry = heapq.heappop(queue.ready)
                entry.deliveries += 1
                entry.receipt = f"{entry.seq}:{entry.deliveries}"
                entry.lease_until = now + lease
                queue.leased[entry.receipt] = entry
                out.append(
                    Delivery(
                        message=entry.message,
                        receipt=entry.receipt,
                        deliveries=entry.deliveries,
                        lease_expires_at=entry.lease_until,
                    )
                )
            if len(out) >= limit:
                break
        return out

    async def wait_for_messages(self, queues: Sequence[str], timeout: float) -> None:
        await self._notifier.wait(self.clock, timeout)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        times = []
        for name in queues:
            queue = self._queues.get(name)
            if queue is None:
                continue
            if queue.delayed:
                times.append(queue.delayed[0][0])
            times.extend(e.lease_until for e in queue.leased.values())
        return min(times, default=None)

    def _current(self, delivery: Delivery) -> _Entry | None:
        """The leased entry if ``delivery`` is its current hand-out (any other receipt: None)."""
        queue = self._queues.get(delivery.message.queue)
        return None if queue is None else queue.leased.get(delivery.receipt)

    def _take(self, delivery: Delivery) -> _Entry | None:
        """Remove and return the leased entry if ``delivery`` is its current hand-out."""
        entry = self._current(delivery)
        if entry is None:
            return None
        del self._queues[delivery.message.queue].leased[delivery.receipt]
        entry.receipt = None
        return entry

    async def ack_many(self, deliveries: Sequence[Delivery]) -> int:
        return sum(1 for d in deliveries if self._take(d) is not None)

    async def nack(
        self, delivery: Delivery, *, requeue: bool = True, delay: float | None = None
    ) -> bool:
        entry = self._take(delivery)
        if entry is None:
            return False
        if requeue:
            now = self.clock.now()
            if delay:
                entry.due = now + delay
            self._place(self._queue(delivery.message.queue), entry, now)
            self._notifier.notify()
        return True

    async def extend_lease(self, delivery: Delivery, seconds: float) -> bool:
        entry = self._current(delivery)
        if entry is None:
            return False
        entry.lease_until = self.clock.now() + seconds
        return True

    async def dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        *,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        entry = self._take(delivery)
        if entry is None:
            return False
        self._queue(delivery.message.queue).dead.append(
            DeadLetter(
                message=entry.message,
                reason=reason,
                error=error,
                traceback=traceback,
                deliveries=entry.deliveries,
                dead_at=self.clock.now(),
            )
        )
        return True

    async def list_dead_letters(
        self, queue: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        dead = self._queues[queue].dead if queue in self._queues else []
        return dead[offset : offset + limit]

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        dead = self._queues[queue].dead if queue in self._queues else []
        return next((d for d in dead if d.message.id == message_id), None)

    def _select_dead(self, queue: str, message_ids: Sequence[str] | None) -> list[DeadLetter]:
        q = self._queues.get(queue)
        if q is None:
            return []
        wanted = None if message_ids is None else set(message_ids)
        chosen = [d for d in q.dead if wanted is None or d.message.id in wanted]
        q.dead = [d for d in q.dead if not (wanted is None or d.message.id in wanted)]
        return chosen

    async def replay_dead_letters(
        self,
        queue: str,
        message_ids: Sequence[str] | None = None,
        *,
        delay: float | None = None,
        bodies: Mapping[str, bytes] | None = None,
    ) -> int:
        chosen = self._select_dead(queue, message_ids)
        eta = self.clock.now() + delay if delay else None
        bodies = bodies or {}
        # Published anew: a new entry, so its delivery count starts again at zero.
        await self.publish_many(
            [
                replace(d.message, eta=eta, body=bodies.get(d.message.id, d.message.body))
                for d in chosen
            ]
        )
        return len(chosen)

    async def purge_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        return len(self._select_dead(queue, message_ids))

    async def queue_stats(self, queue: str) -> QueueStats:
        q = self._queues.get(queue)
        if q is None:
            return QueueStats(queue=queue)
        now = self.clock.now()
        expired = sum(1 for e in q.leased.values() if e.lease_until <= now)
        due = sum(1 for d, _, _ in q.delayed if d <= now)
        return QueueStats(
            queue=queue,
            pending=len(q.ready) + due + expired,
            delayed=len(q.delayed) - due,
            inflight=len(q.leased) - expired,
            dead=len(q.dead),
        )

    async def purge(self, queue: str) -> int:
        q = self._queues.get(queue)
        if q is None:
            return 0
        self._refresh(q, self.clock.now())  # a lease that ran out makes its message pending
        count = len(q.ready) + len(q.delayed)
        q.ready.clear()
        q.delayed.clear()
        return count

    async def subscribe(self, queue: str, subscriber: str, ttl: float) -> None:
        self._subscriptions.setdefault(queue, {})[subscriber] = self.clock.now() + ttl

    async def subscriptions(self, queue: str) -> list[Subscription]:
        now = self.clock.now()
        ends = self._subscriptions.get(queue, {})
        return [Subscription(subscriber=s, expires_in=ends[s] - now) for s in sorted(ends)]

    async def unsubscribe(
        self, queue: str, subscriber: str, *, ended_for: float | None = None
    ) -> bool:
        ends = self._subscriptions.get(queue, {})
        end = ends.get(subscriber)
        if end is None or (ended_for is not None and end > self.clock.now() - ended_for):
            return False
        del ends[subscriber]
        return True
