"""The dispatcher of due workflow runs, which every worker of an app with workflows runs.

It hands the runs whose wake time has come (a sleep's end, an event's deadline, a dead
worker's lease, a lost dispatch) to the queue as ``stem.workflow.run`` tasks. The
store hands each run to one dispatcher per window, so several workers may run it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["dispatch_workflows"]

#: Most runs dispatched per look; a full batch looks again at once.
BATCH = 100


async def dispatch_workflows(worker: Worker) -> None:
    workflows, clock = worker.app.workflows, worker.app.clock
    outage = worker._backend_outage
    while True:
        handed, wake = 0, None
        try:
            handed = await workflows.dispatch_due(BATCH)
            if handed < BATCH:
                wake = await workflows.store.next_wake()
        except Exception as exc:
            outage.failed("dispatching due workflow runs", exc, retried=True)
        else:
            outage.recovered("dispatching due workflow runs")
        if handed >= BATCH:
            continue
        timeout = workflows.poll_interval
        if wake is not None:
            timeout = max(0.0, min(timeout, wake - clock.now()))
        await clock.sleep(timeout)
