"""Dramatiq on Redis: RedisBroker, the Results middleware on RedisBackend, one worker process.

``dramatiq app --processes 1`` runs a supervisor and one worker process with ``threads``
threads. Dramatiq's CLI has no log-level option: it runs with ``--skip-logging`` and the
app configures logging at WARNING. Its consumer polls an empty queue with a backoff up
to ``dramatiq_worker_timeout`` (1 s by default): the benchmark sets it to the poll
interval.
"""

from __future__ import annotations

import asyncio
import os
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

NAME = "Dramatiq"
DIST = "dramatiq"

APP = '''\
"""A benchmark app written by tools/bench: a no-op task that returns when it ran."""
import logging
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

logging.basicConfig(level=logging.WARNING)  # the worker runs with --skip-logging
broker = RedisBroker(url={url!r})
backend = RedisBackend(url={url!r})
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", store_results=True, max_retries=0)
def noop(i):
    return time.monotonic()
'''


def _timeout_ms(plan: RedisPlan) -> int:
    return max(1, round(plan.poll * 1000))


def settings(plan: RedisPlan) -> str:
    return (
        f"`dramatiq app --processes 1 --threads {plan.threads} --skip-logging` (a supervisor "
        f"and 1 worker process), queue prefetch {plan.threads * 2} (its default: 2 x "
        f"threads), dramatiq_worker_timeout={_timeout_ms(plan)} ms; Results middleware on "
        "RedisBackend (store_results=True); batch: group(...).run(); round trip: "
        "message.get_result(block=True) (BRPOPLPUSH)"
    )


def run(plan: RedisPlan, workdir: Path) -> PeerRun:
    import dramatiq

    out = PeerRun(version=version_of(DIST))
    m = plan.measures
    if "batch" in m:
        # A process has one global broker: the batched enqueue writes through one of its
        # own to database 1, then the main app takes over.
        bmod = load_module(
            write_module(workdir, "dramatiq_batch_app", APP.format(url=plan.batch_url))
        )
        started = time.perf_counter()
        for start in range(0, plan.n, plan.batch):
            dramatiq.group(
                bmod.noop.message(i) for i in range(start, min(plan.n, start + plan.batch))
            ).run()
        out.enqueue_batched = plan.n / (time.perf_counter() - started)
        bmod.broker.close()
    if not set(m) & {"enqueue", "drain", "rtt"}:
        return out
    path = write_module(workdir, "dramatiq_app", APP.format(url=plan.url))
    mod = load_module(path)
    messages = []
    if set(m) & {"enqueue", "drain"}:
        started = time.perf_counter()
        for i in range(plan.n):
            messages.append(mod.noop.send(i))
        if "enqueue" in m:
            out.enqueue_one = plan.n / (time.perf_counter() - started)
    if not set(m) & {"drain", "rtt"}:
        return out
    # Dramatiq reads its settings from lower-case environment variables.
    os.environ["dramatiq_worker_timeout"] = str(_timeout_ms(plan))  # noqa: SIM112
    cmd = [sys.executable, "-m", "dramatiq", path.stem, "--processes", "1"]
    cmd += ["--threads", str(plan.threads), "--skip-logging", "--path", str(workdir)]
    worker = WorkerProcess("dramatiq-worker", cmd, workdir, signal.SIGTERM)
    backend = mod.backend
    try:
        if "drain" in m:
            frontier = ResultFrontier([backend.build_message_key(msg) for msg in messages])

            async def done() -> int:
                return frontier.check(backend.client)

            asyncio.run(wait_drained(done, plan.n, worker))
            values = [backend.get_result(msg) for msg in messages]
            out.drain_stamps = stamps_of(values, plan.n, NAME)
        if "rtt" in m:
            out.round_trips = round_trips(
                lambda i: mod.noop.send(i).get_result(block=True, timeout=int(TRIP_TIMEOUT * 1000)),
                min(plan.round_trips, plan.n),
            )
    finally:
        worker.stop()
        mod.broker.close()
    return out
