"""Heartbeats: what a worker tells the result backend about itself, and how often."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from .._messages import WorkerHeartbeat

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["heartbeat_of", "send_heartbeat", "send_heartbeats"]


def heartbeat_of(worker: Worker) -> WorkerHeartbeat:
    """The worker's state as of now, as a heartbeat record."""
    counters = worker.counters
    return WorkerHeartbeat(
        worker_id=worker.id,
        host=socket.gethostname(),
        pid=os.getpid(),
        queues=worker.queues,
        concurrency=worker.concurrency,
        inflight=len(worker.jobs),
        processed=counters["processed"],
        succeeded=counters["succeeded"],
        failed=counters["failed"],
        retried=counters["retried"],
        dead=counters["dead"],
        revoked=counters["revoked"],
        skipped=counters["skipped"],
        started_at=worker.started_at,
        sent_at=worker.app.clock.now(),
        last_consumed_at=worker.last_consumed_at,
        meta={"pool": worker.pool or "per-task", "stopping": worker._stopping.is_set()},
    )


async def send_heartbeat(worker: Worker, *, final: bool = False) -> None:
    outage = worker._backend_outage
    try:
        ttl = worker.heartbeat_interval if final else worker.heartbeat_interval * 3
        await worker.app.backend.set_heartbeat(heartbeat_of(worker), ttl=ttl)
    except Exception as exc:
        outage.failed("sending the heartbeat", exc, retried=True)
    else:
        outage.recovered("sending the heartbeat")


async def send_heartbeats(worker: Worker) -> None:
    while True:
        await send_heartbeat(worker)
        await worker.app.clock.sleep(worker.heartbeat_interval)
