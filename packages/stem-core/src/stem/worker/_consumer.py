"""The reserve loop: a worker reads deliveries from the broker while its handlers run,
as many as there is room for, and hands them to its slots."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .._errors import StoreLostError
from ._job import Job
from ._wait import first

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["Consumer"]

READING = "reading from the broker"


class Consumer:
    """Reserves messages for a worker: a read overlaps with the handlers still running,
    and waits for room when the slots and the settle batch hold enough."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._room = asyncio.Event()
        self.waiting_for_room = False  # run() waits on _room (see note_room)

    async def run(self) -> None:
        worker = self.worker
        slots, outage = worker._slots, worker._outage
        backoff = 0.1
        while not worker._stopping.is_set():
            wanted = self.to_reserve()
            if wanted <= 0:
                self._room.clear()
                self.waiting_for_room = True
                try:
                    await self._room.wait()
                finally:
                    self.waiting_for_room = False
                continue
            try:
                # While this read is out, the messages it asks for count as held: no
                # other read is made, so prefetch=0 never takes more than the free slots.
                batch = await worker.broker.reserve(worker.read_queues, wanted, worker.lease)
                worker.last_consumed_at = worker.app.clock.now()
                if not batch:
                    await self._wait_for_messages()
            except StoreLostError as exc:
                worker._give_up(exc)
                return
            except Exception as exc:
                # A broker outage must not end the loop: log (once per outage), back off,
                # read again. Health checks see the silence in last_consumed_at.
                outage.failed(READING, exc, retried=True)
                await first(worker.app.clock.sleep(backoff), worker._stopping.wait())
                backoff = min(backoff * 2, 5.0)
                continue
            if outage.since is not None:
                outage.recovered(READING)  # the read and the wait both worked
            backoff = 0.1
            if not batch:
                continue
            if worker._stopping.is_set():  # stopped while reading: give the batch back
                for delivery in batch:
                    await worker.broker.nack(delivery, requeue=True)
                break
            jobs, leases, ready = worker.jobs, worker._leases, slots.ready
            for delivery in batch:
                job = Job(
                    worker, delivery, worker.lease, lease_expires_at=delivery.lease_expires_at
                )
                jobs.add(job)
                leases.schedule(job)
                ready.append(job)
            slots.wake()

    def to_reserve(self) -> int:
        """How many messages to reserve now; 0 while the worker should wait for room.

        A slot is free when no job runs in it and no reserved message waits for it
        (so a finished handler whose result is being written frees its slot). The
        worker reserves when half of ``concurrency + prefetch`` is free, or at once
        when a slot is free and no message waits: the read overlaps with the handlers
        still running, and a free slot never idles while messages are ready. Results
        waiting to be written count too, beyond ``concurrency + prefetch`` of them, so
        a slow result store slows the reading down instead of piling up work.
        """
        worker, slots = self.worker, self.worker._slots
        capacity = worker.concurrency + worker.prefetch
        ready = len(slots.ready)
        free = capacity - slots.busy - ready
        settling = len(worker.jobs) - slots.busy - ready
        if settling > capacity:
            free -= settling - capacity
        if free <= 0 or (ready and free < max(1, capacity // 2)):
            return 0
        return free

    def note_room(self) -> None:
        """Wake the consumer if it waits for room and there is enough now."""
        if self.waiting_for_room and self.to_reserve() > 0:
            self.waiting_for_room = False
            self._room.set()

    def wake(self) -> None:
        """Wake the consumer whatever the room, to see that the worker stops."""
        self._room.set()

    async def _wait_for_messages(self) -> None:
        """Wait until a message may be ready: woken by the broker, by the next due time, or by stop."""
        worker = self.worker
        timeout = worker.broker.poll_interval
        due = await worker.broker.next_due(worker.read_queues)
        if due is not None:
            timeout = max(0.0, min(timeout, due - worker.app.clock.now()))
        await first(
            worker.broker.wait_for_messages(worker.read_queues, timeout), worker._stopping.wait()
        )
