"""Huey on Redis: RedisHuey, one ``huey_consumer`` process with worker threads.

RedisHuey's consumer blocks on its queue (BRPOP, its default), and ``notify_result=True``
makes ``result.get(blocking=True)`` wait on a notification (BLPOP) instead of polling
with a backoff from 50 ms: Huey at its most responsive.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from _redis_common import (
    PeerRun,
    RedisPlan,
    WorkerProcess,
    load_module,
    version_of,
    write_module,
)
from _systems import _huey_drain, _huey_round_trips, _huey_stamps

NAME = "Huey"
DIST = "huey"

APP = '''\
"""A benchmark app written by tools/bench: a no-op task that returns when it ran."""
import time

from huey import RedisHuey

huey = RedisHuey("bench", url={url!r}, notify_result=True)


@huey.task()
def noop(i):
    return time.monotonic()
'''


def settings(plan: RedisPlan) -> str:
    return (
        f"`huey_consumer app.huey -w {plan.threads} -k thread -q` (1 process, "
        f"{plan.threads} worker threads, -q: WARNING); RedisHuey, blocking dequeue "
        "(its default), results in its Redis hash, notify_result=True; no batch API "
        "(task.map() enqueues one by one); round trip: result.get(blocking=True) (BLPOP)"
    )


def run(plan: RedisPlan, workdir: Path) -> PeerRun:
    out = PeerRun(version=version_of(DIST))
    m = plan.measures
    if not set(m) & {"enqueue", "drain", "rtt"}:
        return out
    path = write_module(workdir, "huey_app", APP.format(url=plan.url))
    mod = load_module(path)
    huey = mod.huey
    if set(m) & {"enqueue", "drain"}:
        started = time.perf_counter()
        for i in range(plan.n):
            mod.noop(i)
        if "enqueue" in m:
            out.enqueue_one = plan.n / (time.perf_counter() - started)
    if not set(m) & {"drain", "rtt"}:
        return out
    cmd = [sys.executable, "-m", "huey.bin.huey_consumer", f"{path.stem}.huey"]
    cmd += ["-w", str(plan.threads), "-k", "thread", "-q"]
    consumer = WorkerProcess("huey-consumer", cmd, workdir, signal.SIGTERM)
    try:
        if "drain" in m:
            _huey_drain(huey, [consumer], plan.n)
            out.drain_stamps = _huey_stamps(huey, plan.n)
        if "rtt" in m:
            out.round_trips = _huey_round_trips(mod.noop, min(plan.round_trips, plan.n), plan.poll)
    finally:
        consumer.stop()
    return out
