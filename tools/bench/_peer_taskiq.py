"""Taskiq on Redis (taskiq-redis): RedisStreamBroker, RedisAsyncResultBackend, one worker.

The stream broker is taskiq-redis's broker with acknowledgements (XREADGROUP/XACK), the
delivery guarantee Stem gives; its consumer group starts at id 0, so that a backlog
published before the worker starts is read. ``wait_result`` polls for the result: the
benchmark sets its ``check_interval`` to the poll interval.
"""

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
    ResultFrontier,
    WorkerProcess,
    load_module,
    round_trips_async,
    stamps_of,
    version_of,
    wait_drained,
    write_module,
)

NAME = "Taskiq"
DIST = "taskiq"

APP = '''\
"""A benchmark app written by tools/bench: a no-op task that returns when it ran."""
import time

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

broker = RedisStreamBroker({url!r}, consumer_id="0").with_result_backend(
    RedisAsyncResultBackend({url!r})
)


@broker.task(task_name="noop")
async def noop(i: int) -> float:
    return time.monotonic()
'''


def settings(plan: RedisPlan) -> str:
    return (
        f"`taskiq worker app:broker --workers 1 --max-async-tasks {plan.concurrency} "
        "--log-level WARNING` (a supervisor and 1 worker process), prefetch 0 and ack when "
        f"the result is saved (its defaults); taskiq-redis's RedisStreamBroker (XREADGROUP COUNT 100, blocking) and RedisAsyncResultBackend; "
        f"no batch API; round trip: task.wait_result(check_interval={plan.poll})"
    )


async def _run(plan: RedisPlan, workdir: Path) -> PeerRun:
    out = PeerRun(version=f"{version_of(DIST)}, taskiq-redis {version_of('taskiq-redis')}")
    m = plan.measures
    path = write_module(workdir, "taskiq_app", APP.format(url=plan.url))
    mod = load_module(path)
    broker = mod.broker
    backend = broker.result_backend
    await broker.startup()
    try:
        ids: list[str] = []
        if set(m) & {"enqueue", "drain"}:
            started = time.perf_counter()
            for i in range(plan.n):
                ids.append((await mod.noop.kiq(i)).task_id)
            if "enqueue" in m:
                out.enqueue_one = plan.n / (time.perf_counter() - started)
        if not set(m) & {"drain", "rtt"}:
            return out
        cmd = [sys.executable, "-m", "taskiq", "worker", f"{path.stem}:broker"]
        cmd += ["--workers", "1", "--max-async-tasks", str(plan.concurrency)]
        cmd += ["--log-level", "WARNING"]
        worker = WorkerProcess("taskiq-worker", cmd, workdir, signal.SIGTERM)
        try:
            if "drain" in m:
                import redis.asyncio

                client = redis.asyncio.Redis.from_url(plan.url)
                # The result backend's keys (private, used only to count the results).
                frontier = ResultFrontier([backend._task_name(tid) for tid in ids])

                async def done() -> int:
                    return await frontier.check_async(client)

                try:
                    await wait_drained(done, plan.n, worker)
                finally:
                    await client.aclose()
                values: list[Any] = []
                for tid in ids:
                    result = await backend.get_result(tid)
                    values.append(None if result.is_err else result.return_value)
                out.drain_stamps = stamps_of(values, plan.n, NAME)
            if "rtt" in m:

                async def trip(i: int) -> Any:
                    task = await mod.noop.kiq(i)
                    result = await task.wait_result(check_interval=plan.poll, timeout=TRIP_TIMEOUT)
                    return result.return_value

                out.round_trips = await round_trips_async(trip, min(plan.round_trips, plan.n))
        finally:
            worker.stop()
    finally:
        await broker.shutdown()
    return out


def run(plan: RedisPlan, workdir: Path) -> PeerRun:
    import asyncio

    return asyncio.run(_run(plan, workdir))
