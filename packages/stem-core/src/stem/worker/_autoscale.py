"""Autoscaling: a worker's concurrency follows the backlog, between its min and max."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["autoscale"]


async def autoscale(worker: Worker) -> None:
    """Every ``autoscale_interval``: grow while a backlog waits and every slot is busy;
    shrink after three looks in a row with no backlog and idle slots."""
    idle_ticks = 0
    while True:
        await worker.app.clock.sleep(worker.autoscale_interval)
        backlog = 0
        for queue in worker.read_queues:
            backlog += await worker.broker.pending_count(queue)
        busy = len(worker.jobs)
        concurrency = worker.concurrency
        if backlog > 0 and busy >= concurrency and concurrency < worker.max_concurrency:
            idle_ticks = 0
            worker.set_concurrency(
                min(worker.max_concurrency, concurrency + max(1, min(backlog, concurrency)))
            )
        elif backlog == 0 and busy < concurrency and concurrency > worker.min_concurrency:
            idle_ticks += 1
            if idle_ticks >= 3:
                idle_ticks = 0
                worker.set_concurrency(
                    max(
                        worker.min_concurrency,
                        busy,
                        concurrency - max(1, (concurrency - busy) // 2),
                    )
                )
        else:
            idle_ticks = 0
