"""Lease renewal: a worker keeps each reserved message's lease from running out while
its job lasts, and knows when another consumer has taken the message over."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from ._wait import first

if TYPE_CHECKING:
    from ._job import Job
    from ._worker import Worker

__all__ = ["LeaseRenewal"]

log = logging.getLogger("stem.worker")


class LeaseRenewal:
    """Renews every lease of a worker's jobs when a third of it has passed, whatever its
    length, from one loop that sleeps until the next renewal is due."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        # When each job's lease is renewed next, and when the renewal loop wakes next;
        # a job due sooner than that wakes it (see schedule).
        self._renew_at: dict[Job, float] = {}
        self._renewal_due = math.inf
        self._renewal_changed = asyncio.Event()

    def schedule(self, job: Job) -> None:
        """Renew ``job``'s lease when a third of it has passed; wake the loop if that is sooner."""
        at = job.lease_expires_at - job.lease * 2 / 3
        self._renew_at[job] = at
        if at < self._renewal_due:
            self._renewal_changed.set()

    def forget(self, job: Job) -> None:
        """The job is over: its lease is not renewed again."""
        self._renew_at.pop(job, None)

    async def renew(self, job: Job) -> bool:
        """Extend ``job``'s lease by its full length (``job.lease``) from now."""
        worker = self.worker
        now = worker.app.clock.now()
        ok = await worker.broker.extend_lease(job.delivery, job.lease)
        if worker._outage.since is not None:
            worker._outage.recovered()
        if ok:
            job.lease_expires_at = now + job.lease
            if job in worker.jobs:
                self.schedule(job)
        else:
            self.forget(job)  # another consumer has it now: do not try again
            log.warning(
                "lost the lease on %s (its lease of %gs ran out and it was handed out again); "
                "it may run twice",
                job.describe(),
                job.lease,
            )
        return ok

    async def _renew_one(self, job: Job) -> None:
        clock = self.worker.app.clock
        outage = self.worker._outage
        try:
            await self.renew(job)
        except Exception as exc:
            outage.failed(f"renewing the lease on {job.describe()}", exc)
            if job in self.worker.jobs:
                # Try again well before the lease runs out (a third of what is left).
                left = job.lease_expires_at - clock.now()
                self._renew_at[job] = clock.now() + max(0.05, left / 3)

    async def run(self) -> None:
        """Renew every lease when a third of it has passed, whatever its length."""
        clock = self.worker.app.clock
        while True:
            now = clock.now()
            due = [job for job, at in self._renew_at.items() if at <= now]
            if due:
                await asyncio.gather(*(self._renew_one(job) for job in due))
            # No await between here and the sleep: a job scheduled from now on sees the
            # new due time and wakes the loop if it needs renewing sooner.
            self._renewal_due = min(self._renew_at.values(), default=math.inf)
            self._renewal_changed.clear()
            if self._renewal_due == math.inf:
                await self._renewal_changed.wait()
            else:
                await first(
                    clock.sleep(self._renewal_due - clock.now()), self._renewal_changed.wait()
                )
