"""Revocation polling: a worker's set of revoked tasks, read in commit order, and the
running jobs a ``terminate`` revocation stops."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._job import Terminated

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["RevocationPoller"]

log = logging.getLogger("stem.worker")


class RevocationPoller:
    """Keeps ``Worker.revoked`` up to date: reads the revocations committed since the
    last read, drops the expired ones, and terminates the running jobs they name."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._revoked_seq = 0  # the largest RevokeEntry.seq read so far

    async def sync(self) -> None:
        worker = self.worker
        revoked = worker.revoked
        entries = await worker.app.revoke_store.list(since=self._revoked_seq)
        now = worker.app.clock.now()
        for task_id in [
            t for t, e in revoked.items() if e.expires_at is not None and e.expires_at <= now
        ]:
            del revoked[task_id]  # expired: the set stays bounded in a long-lived worker
        for entry in entries:
            revoked[entry.task_id] = entry
            self._revoked_seq = max(self._revoked_seq, entry.seq)
            if entry.terminate:
                for job in list(worker.jobs):
                    if (
                        job.envelope is not None
                        and job.envelope.id == entry.task_id
                        and job.running
                    ):
                        job.revoked = True
                        log.info("terminating %s[%s] (revoked)", job.envelope.task, job.envelope.id)
                        if job.interrupt is not None:
                            job.interrupt(Terminated())

    async def run(self) -> None:
        while True:
            await self.worker.app.clock.sleep(self.worker.revoke_interval)
            outage = self.worker._backend_outage
            try:
                await self.sync()
            except Exception as exc:
                outage.failed("reading revocations", exc, retried=True)
            else:
                outage.recovered("reading revocations")
