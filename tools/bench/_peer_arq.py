"""arq on Redis: ``arq app.WorkerSettings``, one worker process, results kept (its default).

arq's worker polls its queue (a sorted set) every ``poll_delay`` (0.5 s by default), and
``job.result()`` polls for the result likewise: the benchmark sets both to the poll
interval. arq's CLI logs every job at INFO: ``--custom-log-dict`` sets WARNING.
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

NAME = "arq"
DIST = "arq"

APP = '''\
"""A benchmark app written by tools/bench: a no-op task that returns when it ran."""
import time

from arq.connections import RedisSettings

URL = {url!r}
LOG_CONFIG = {{
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {{"arq": {{"level": "WARNING", "class": "logging.StreamHandler"}}}},
    "loggers": {{"arq": {{"handlers": ["arq"], "level": "WARNING"}}}},
}}


async def noop(ctx, i):
    return time.monotonic()


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = {concurrency}
    poll_delay = {poll}
'''


def settings(plan: RedisPlan) -> str:
    return (
        f"`arq app.WorkerSettings` (1 process), max_jobs {plan.concurrency}, queue_read_limit "
        f"{max(plan.concurrency * 5, 100)} (its default), poll_delay {plan.poll} s, "
        "keep_result 3600 s (its default), --custom-log-dict at WARNING; no batch API; "
        f"round trip: job.result(poll_delay={plan.poll})"
    )


async def _run(plan: RedisPlan, workdir: Path) -> PeerRun:
    from arq.connections import RedisSettings, create_pool
    from arq.constants import result_key_prefix
    from arq.jobs import deserialize_result

    out = PeerRun(version=version_of(DIST))
    m = plan.measures
    source = APP.format(url=plan.url, concurrency=plan.concurrency, poll=plan.poll)
    path = write_module(workdir, "arq_app", source)
    load_module(path)  # what the worker will import must import
    pool = await create_pool(RedisSettings.from_dsn(plan.url))
    try:
        ids: list[str] = []
        if set(m) & {"enqueue", "drain"}:
            started = time.perf_counter()
            for i in range(plan.n):
                job = await pool.enqueue_job("noop", i)
                assert job is not None
                ids.append(job.job_id)
            if "enqueue" in m:
                out.enqueue_one = plan.n / (time.perf_counter() - started)
        if not set(m) & {"drain", "rtt"}:
            return out
        cmd = [sys.executable, "-m", "arq", f"{path.stem}.WorkerSettings"]
        cmd += ["--custom-log-dict", f"{path.stem}.LOG_CONFIG"]
        worker = WorkerProcess("arq-worker", cmd, workdir, signal.SIGTERM)
        try:
            if "drain" in m:
                keys = [result_key_prefix + jid for jid in ids]
                frontier = ResultFrontier(keys)

                async def done() -> int:
                    return await frontier.check_async(pool)

                await wait_drained(done, plan.n, worker)
                values: list[Any] = []
                for start in range(0, len(keys), 1000):
                    for raw in await pool.mget(keys[start : start + 1000]):
                        info = deserialize_result(raw)
                        values.append(info.result if info.success else None)
                out.drain_stamps = stamps_of(values, plan.n, NAME)
            if "rtt" in m:

                async def trip(i: int) -> Any:
                    job = await pool.enqueue_job("noop", i)
                    assert job is not None
                    return await job.result(timeout=TRIP_TIMEOUT, poll_delay=plan.poll)

                out.round_trips = await round_trips_async(trip, min(plan.round_trips, plan.n))
        finally:
            worker.stop()
    finally:
        await pool.aclose()
    return out


def run(plan: RedisPlan, workdir: Path) -> PeerRun:
    import asyncio

    return asyncio.run(_run(plan, workdir))
