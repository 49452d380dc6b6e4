"""Stem on Redis: a ``redis://`` app, a producer here and one ``stem worker`` process.

``STEM_REDIS_CLIENT=redis-py`` in the benchmark's environment runs Stem with redis-py's
asyncio client for every command, as before stem_redis._resp (the default is ``resp``);
the app module sets it, so the worker (whose environment drops STEM_* variables) uses
the same client as the producer.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from _redis_common import (
    NotInstalled,
    PeerRun,
    RedisPlan,
    WorkerProcess,
    load_module,
    version_of,
    write_module,
)
from _systems import _stem_drain, _stem_fill, _stem_round_trips, _stem_stamps

NAME = "Stem"
DIST = "stem-redis"

APP = '''\
"""A benchmark app written by tools/bench: a no-op task that returns when it ran."""
import os
import time

os.environ["STEM_REDIS_CLIENT"] = {client!r}  # the single-server client (see the header)

from stem import Stem

app = Stem.from_url({url!r})


@app.task(name="bench.noop")
async def noop(i: int) -> float:
    return time.monotonic()
'''


def client() -> str:
    """The single-server client Stem runs with: ``resp`` or ``redis-py``."""
    return os.environ.get("STEM_REDIS_CLIENT", "").strip().lower() or "resp"


def settings(plan: RedisPlan) -> str:
    return (
        f"1 `stem worker` process, concurrency {plan.concurrency}, prefetch 0, `async def` "
        f"handler, -l warning; results in the same redis:// (Stem.from_url(url)); "
        f"enqueue_many for batches; round trip app.wait_for_task; client "
        f"STEM_REDIS_CLIENT={client()}"
    )


def adapter_missing() -> str | None:
    """Why ``redis://`` cannot be used here, or None when the adapter is installed."""
    import asyncio

    from stem import Stem, UnknownSchemeError

    try:
        app = Stem.from_url("redis://127.0.0.1:1/0")  # builds the stores, connects to nothing
    except UnknownSchemeError as exc:
        print(f"Stem: {exc}", file=sys.stderr)
        return "redis adapter not installed"
    asyncio.run(app.aclose())
    return None


async def _run(plan: RedisPlan, workdir: Path) -> PeerRun:
    out = PeerRun(version=version_of(DIST))
    m = set(plan.measures)
    if "batch" in m:
        mod = load_module(
            write_module(workdir, "stem_batch_app", APP.format(url=plan.batch_url, client=client()))
        )
        try:
            _, out.enqueue_batched = await _stem_fill(mod.app, mod.noop, plan.n, plan.batch)
        finally:
            await mod.app.aclose()
    if not m & {"enqueue", "drain", "rtt"}:
        return out
    path = write_module(workdir, "stem_app", APP.format(url=plan.url, client=client()))
    mod = load_module(path)
    app = mod.app
    try:
        ids: list[str] = []
        if m & {"enqueue", "drain"}:
            started = time.perf_counter()
            for i in range(plan.n):
                ids.append(await mod.noop.enqueue(i))
            if "enqueue" in m:
                out.enqueue_one = plan.n / (time.perf_counter() - started)
        if m & {"drain", "rtt"}:
            cmd = [sys.executable, "-m", "stem_cli", "worker", "--app", f"{path.stem}:app"]
            cmd += ["-c", str(plan.concurrency), "--prefetch", "0", "-l", "warning"]
            worker = WorkerProcess("stem-worker", cmd, workdir, signal.SIGTERM)
            try:
                if "drain" in m:
                    await _stem_drain(app, [worker])
                    out.drain_stamps = await _stem_stamps(app, ids)
                if "rtt" in m:
                    out.round_trips = await _stem_round_trips(
                        app, mod.noop, min(plan.round_trips, plan.n)
                    )
            finally:
                worker.stop()
    finally:
        await app.aclose()
    return out


def run(plan: RedisPlan, workdir: Path) -> PeerRun:
    import asyncio

    missing = adapter_missing()
    if missing:
        raise NotInstalled(missing)
    return asyncio.run(_run(plan, workdir))
