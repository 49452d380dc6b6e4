"""Broadcast queues, the worker's side: subscribe, keep the subscriptions alive, reap.

A worker consuming a broadcast queue subscribes to it under its id and reads its copies
from its own queue (:func:`stem.contracts.subscriber_queue`). It renews the
subscriptions with its heartbeat; a subscription that has ended (its worker died or
stopped) is reaped by any worker of the queue one TTL after its end: its copies still
waiting are deleted, and once none is leased the subscription itself goes. A worker
that comes back under the same id within that time finds its copies waiting.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..contracts import subscriber_queue

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["keep_subscriptions", "subscribe", "subscription_ttl"]

log = logging.getLogger("stem.worker")


def subscription_ttl(worker: Worker) -> float:
    """How long a subscription outlives its last renewal (as long as a heartbeat)."""
    return worker.heartbeat_interval * 3


async def subscribe(worker: Worker) -> None:
    """Subscribe (or renew) to each broadcast queue the worker consumes."""
    for queue in worker.broadcast_queues:
        await worker.broker.subscribe(queue, worker.id, subscription_ttl(worker))


async def reap(worker: Worker) -> None:
    """Clear away the subscriptions that ended more than a TTL ago, with their copies."""
    broker, grace = worker.broker, subscription_ttl(worker)
    for queue in worker.broadcast_queues:
        for sub in await broker.subscriptions(queue):
            if sub.expires_in > -grace:
                continue
            copies = subscriber_queue(queue, sub.subscriber)
            dropped = await broker.purge(copies)
            if (await broker.queue_stats(copies)).inflight:
                continue  # a leased copy returns when its lease ends: purged next time
            if await broker.unsubscribe(queue, sub.subscriber, ended_for=grace):
                log.info(
                    "subscription of %s to broadcast queue %s ended; %d copies dropped",
                    sub.subscriber,
                    queue,
                    dropped,
                )


async def keep_subscriptions(worker: Worker) -> None:
    """Renew the subscriptions and reap ended ones, every heartbeat interval."""
    outage = worker._outage
    while True:
        await worker.app.clock.sleep(worker.heartbeat_interval)
        try:
            await subscribe(worker)
            await reap(worker)
        except Exception as exc:
            outage.failed("renewing broadcast subscriptions", exc, retried=True)
        else:
            outage.recovered("renewing broadcast subscriptions")
