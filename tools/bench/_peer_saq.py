"""SAQ on Redis: ``saq app.settings --workers 1``, results kept in the job (its default)."""

from __future__ import annotations

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
    round_trips_async,
    stamps_of,
    version_of,
    wait_drained,
    write_module,
)

NAME = "SAQ"
DIST = "saq"

APP = '''\
"""A benchmark app written by tools/bench: a no-op task that returns when it ran."""
import time

from redis.asyncio import Redis
from saq.queue.redis import RedisQueue

# Each of the worker's slots blocks on a dequeue with a connection of its own: redis-py's
# default pool of 100 connections would run out at a concurrency of 100.
queue = RedisQueue(Redis.from_url({url!r}, max_connections={connections}))


async def noop(ctx, *, i):
    return time.monotonic()


settings = {{"queue": queue, "functions": [noop], "concurrency": {concurrency}}}
'''


def _connections(plan: RedisPlan) -> int:
    return 2 * plan.concurrency + 20


def settings(plan: RedisPlan) -> str:
    return (
        f"`saq app.settings --workers 1` (1 process, log level WARNING: its default), "
        f"concurrency {plan.concurrency}, a pool of {_connections(plan)} connections (redis-py's "
        "default 100 runs out: a blocking dequeue per slot), blocking dequeue (its default, no polling); results "
        "kept in the job for 600 s (its default); no batch API; round trip: "
        f"queue.apply(poll_interval={plan.poll}) (job.refresh(until_complete=...), which "
        "waits on pub/sub, can miss a completion that comes before it subscribes)"
    )


async def _run(plan: RedisPlan, workdir: Path) -> PeerRun:
    from saq.job import Status

    out = PeerRun(version=version_of(DIST))
    m = plan.measures
    path = write_module(
        workdir,
        "saq_app",
        APP.format(url=plan.url, concurrency=plan.concurrency, connections=_connections(plan)),
    )
    mod = load_module(path)
    queue = mod.queue
    await queue.connect()
    try:
        keys: list[str] = []
        if set(m) & {"enqueue", "drain"}:
            started = time.perf_counter()
            for i in range(plan.n):
                job = await queue.enqueue("noop", i=i)
                assert job is not None
                keys.append(job.key)
            if "enqueue" in m:
                out.enqueue_one = plan.n / (time.perf_counter() - started)
        if not set(m) & {"drain", "rtt"}:
            return out
        cmd = [sys.executable, "-m", "saq", f"{path.stem}.settings", "--workers", "1"]
        worker = WorkerProcess("saq-worker", cmd, workdir, signal.SIGTERM)
        try:
            if "drain" in m:

                async def done() -> int:
                    return plan.n - int(await queue.count("incomplete"))

                await wait_drained(done, plan.n, worker)
                values: list[Any] = []
                swept = 0
                for start in range(0, len(keys), 1000):
                    for job in await queue.jobs(keys[start : start + 1000]):
                        if job is not None and job.status == Status.COMPLETE:
                            values.append(job.result)
                        elif job is not None and job.error == queue.swept_error_message:
                            swept += 1
                        else:
                            values.append(job and (job.status, job.error))
                out.drain_stamps = stamps_of(values, plan.n - swept, NAME)
                if swept:
                    # SAQ's sweep, run as the worker starts, aborts the jobs the worker has
                    # taken from the queue but not yet marked active (a race in SAQ).
                    out.note = f"{swept} of {plan.n} tasks aborted by SAQ's sweep at worker start"
            if "rtt" in m:

                async def trip(i: int) -> Any:
                    return await queue.apply(
                        "noop", timeout=TRIP_TIMEOUT, poll_interval=plan.poll, i=i
                    )

                out.round_trips = await round_trips_async(trip, min(plan.round_trips, plan.n))
        finally:
            worker.stop()
    finally:
        await queue.disconnect()
    return out


def run(plan: RedisPlan, workdir: Path) -> PeerRun:
    import asyncio

    return asyncio.run(_run(plan, workdir))
