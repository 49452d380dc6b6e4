"""RQ on Redis: one ``rq worker`` process with the SimpleWorker class.

RQ's default worker forks a work horse process for every job; ``SimpleWorker`` runs the
job in the worker process itself, so it is one worker process (and RQ's fastest). Both
run one job at a time.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

from _redis_common import (
    TRIP_TIMEOUT,
    PeerRun,
    RedisPlan,
    WorkerProcess,
    load_module,
    round_trips,
    stamps_of,
    version_of,
    wait_drained,
    write_module,
)

NAME = "RQ"
DIST = "rq"

APP = '''\
"""A benchmark app written by tools/bench: a no-op task that returns when it ran."""
import time


def noop(i):
    return time.monotonic()
'''


def settings(plan: RedisPlan) -> str:
    return (
        "`rq worker -w rq.worker.SimpleWorker --logging_level WARNING` (1 process, one job "
        "at a time, no fork per job), results kept 500 s (its default); batch: "
        "Queue.enqueue_many (one pipeline); round trip: job.latest_result(timeout=...) "
        "(XREAD BLOCK on the result stream)"
    )


def _trip(queue: Any, noop: Any, i: int) -> Any:
    job = queue.enqueue(noop, i)
    result = job.latest_result(timeout=int(TRIP_TIMEOUT))
    return None if result is None else result.return_value


def run(plan: RedisPlan, workdir: Path) -> PeerRun:
    import redis
    from rq import Queue
    from rq.job import JobStatus

    out = PeerRun(version=version_of(DIST))
    m = plan.measures
    path = write_module(workdir, "rq_app", APP)
    mod = load_module(path)
    if "batch" in m:
        bclient = redis.Redis.from_url(plan.batch_url)
        bqueue = Queue("default", connection=bclient)
        started = time.perf_counter()
        for start in range(0, plan.n, plan.batch):
            bqueue.enqueue_many(
                [
                    Queue.prepare_data(mod.noop, (i,))
                    for i in range(start, min(plan.n, start + plan.batch))
                ]
            )
        out.enqueue_batched = plan.n / (time.perf_counter() - started)
        bclient.close()
    if not set(m) & {"enqueue", "drain", "rtt"}:
        return out
    client = redis.Redis.from_url(plan.url)
    queue = Queue("default", connection=client)
    jobs = []
    if set(m) & {"enqueue", "drain"}:
        started = time.perf_counter()
        for i in range(plan.n):
            jobs.append(queue.enqueue(mod.noop, i))
        if "enqueue" in m:
            out.enqueue_one = plan.n / (time.perf_counter() - started)
    if not set(m) & {"drain", "rtt"}:
        return out
    cmd = [sys.executable, "-m", "rq.cli", "worker", "-u", plan.url, "-w"]
    cmd += ["rq.worker.SimpleWorker", "--logging_level", "WARNING", "default"]
    worker = WorkerProcess("rq-worker", cmd, workdir, signal.SIGTERM)
    try:
        if "drain" in m:
            finished = queue.finished_job_registry

            async def done() -> int:
                return int(finished.count)

            asyncio.run(wait_drained(done, plan.n, worker))
            values = []
            for job in jobs:
                status = job.get_status(refresh=True)
                values.append(job.return_value() if status == JobStatus.FINISHED else None)
            out.drain_stamps = stamps_of(values, plan.n, NAME)
        if "rtt" in m:
            out.round_trips = round_trips(
                lambda i: _trip(queue, mod.noop, i), min(plan.round_trips, plan.n)
            )
    finally:
        worker.stop()
        client.close()
    return out
