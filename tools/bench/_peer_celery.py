"""Celery on Redis: Redis as broker and result backend, one ``celery worker`` process.

The worker runs the solo pool: tasks run in the worker process itself, so it is one
process (the prefork pool would add a child process and a pipe between the two for every
task), with a prefetch of ``threads`` messages.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

from _redis_common import (
    TRIP_TIMEOUT,
    PeerRun,
    RedisPlan,
    ResultFrontier,
    WorkerProcess,
    load_module,
    round_trips,
    stamps_of,
    version_of,
    wait_drained,
    write_module,
)

NAME = "Celery"
DIST = "celery"

APP = '''\
"""A benchmark app written by tools/bench: a no-op task that returns when it ran."""
import time

from celery import Celery

app = Celery("bench", broker={url!r}, backend={url!r})
app.conf.update(worker_prefetch_multiplier={prefetch}, task_ignore_result=False)


@app.task(name="bench.noop")
def noop(i):
    return time.monotonic()
'''

_META = "celery-task-meta-"


def settings(plan: RedisPlan) -> str:
    return (
        f"1 `celery worker` process, --pool solo (concurrency 1), --prefetch-multiplier "
        f"{plan.threads}, -l WARNING; Redis broker and result backend (celery[redis]); "
        f"batch: group(...).apply_async(); round trip: result.get() (pub/sub)"
    )


def _app(workdir: Path, name: str, url: str, plan: RedisPlan) -> tuple[Path, object]:
    path = write_module(workdir, name, APP.format(url=url, prefetch=plan.threads))
    return path, load_module(path)


def run(plan: RedisPlan, workdir: Path) -> PeerRun:
    import redis
    from celery import group

    out = PeerRun(version=version_of(DIST))
    m = plan.measures
    if "batch" in m:
        _, bmod = _app(workdir, "celery_batch_app", plan.batch_url, plan)
        started = time.perf_counter()
        for start in range(0, plan.n, plan.batch):
            group(bmod.noop.s(i) for i in range(start, min(plan.n, start + plan.batch)))()
        out.enqueue_batched = plan.n / (time.perf_counter() - started)
    if not set(m) & {"enqueue", "drain", "rtt"}:
        return out
    path, mod = _app(workdir, "celery_app", plan.url, plan)
    ids: list[str] = []
    if set(m) & {"enqueue", "drain"}:
        started = time.perf_counter()
        for i in range(plan.n):
            ids.append(mod.noop.delay(i).id)
        if "enqueue" in m:
            out.enqueue_one = plan.n / (time.perf_counter() - started)
    if not set(m) & {"drain", "rtt"}:
        return out
    client = redis.Redis.from_url(plan.url)
    cmd = [sys.executable, "-m", "celery", "-A", path.stem, "worker", "--pool", "solo"]
    cmd += ["--prefetch-multiplier", str(plan.threads), "-l", "WARNING"]
    worker = WorkerProcess("celery-worker", cmd, workdir, signal.SIGTERM)
    try:
        if "drain" in m:
            keys = [_META + tid for tid in ids]
            frontier = ResultFrontier(keys)

            async def done() -> int:
                return frontier.check(client)

            asyncio.run(wait_drained(done, plan.n, worker))
            values = []
            for start in range(0, len(keys), 1000):
                for raw in client.mget(keys[start : start + 1000]):
                    meta = json.loads(raw)
                    values.append(meta["result"] if meta["status"] == "SUCCESS" else None)
            out.drain_stamps = stamps_of(values, plan.n, NAME)
        if "rtt" in m:
            out.round_trips = round_trips(
                lambda i: mod.noop.delay(i).get(timeout=TRIP_TIMEOUT),
                min(plan.round_trips, plan.n),
            )
    finally:
        worker.stop()
        client.close()
    return out
