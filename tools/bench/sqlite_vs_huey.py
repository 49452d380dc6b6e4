"""Enqueue and drain N no-op tasks on SQLite: Stem against Huey, in the same run.

    uv run python tools/bench/sqlite_vs_huey.py [-n 10000]

Reports jobs/s for enqueue one by one, enqueue in batches (Stem only: Huey has no
batch enqueue), and drain by one worker process (`stem worker` / `huey_consumer`),
each starting when the worker process is up and ending when every task has a result.

Stem's worker runs with concurrency 100 (no-op async handlers: the batch of messages
one reserve takes is the free slots); Huey's consumer runs with 1 and with 8 threads,
and the better of the two is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

STEM_APP = """
from stem import Stem
app = Stem.from_url("sqlite:///{db}")

@app.task(name="bench.noop")
async def noop(i: int) -> int:
    return i
"""

HUEY_APP = """
from huey import SqliteHuey
huey = SqliteHuey(filename="{db}")

@huey.task()
def noop(i):
    return i
"""


async def _drain(
    cmd: list[str], cwd: Path, ready: str, done: Callable[[], Awaitable[bool]]
) -> float:
    """Start a worker process, wait until it says ``ready``, then time until ``done()``."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=cwd, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert proc.stderr is not None
    try:
        while ready not in (await proc.stderr.readline()).decode():
            if proc.stderr.at_eof():
                raise RuntimeError(f"the worker exited before saying {ready!r}")
        output = asyncio.ensure_future(proc.stderr.read())  # keep the pipe from filling
        started = time.perf_counter()
        while not await done():  # noqa: ASYNC110 - a benchmark may poll; tests may not
            await asyncio.sleep(0.02)
        return time.perf_counter() - started
    finally:
        proc.terminate()
        await proc.wait()
        if "output" in locals():
            await output


async def bench_stem(workdir: Path, n: int, batch: int) -> dict[str, float]:
    db = workdir / "stem.db"
    (workdir / "stem_bench_app.py").write_text(STEM_APP.format(db=db))
    sys.path.insert(0, str(workdir))
    import stem_bench_app as mod  # type: ignore[import-not-found]

    t0 = time.perf_counter()
    for i in range(n // 10):
        await mod.noop.enqueue(i)
    one_by_one = (n // 10) / (time.perf_counter() - t0)
    await mod.app.broker.purge("default")
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        await mod.app.enqueue_many(mod.noop.call(i) for i in range(start, min(n, start + batch)))
    batched = n / (time.perf_counter() - t0)

    async def done() -> bool:
        stats = await mod.app.broker.queue_stats("default")
        return stats.pending == 0 and stats.inflight == 0

    cmd = [sys.executable, "-m", "stem_cli", "worker", "--app", "stem_bench_app:app", "-c", "100"]
    seconds = await _drain(cmd, workdir, "consuming", done)
    statuses = await mod.app.backend.list_statuses(limit=n + 10)
    succeeded = sum(1 for s in statuses if s.state == "succeeded")
    await mod.app.aclose()
    assert succeeded == n, f"only {succeeded} of {n} tasks succeeded"
    return {"enqueue one by one": one_by_one, "enqueue batched": batched, "drain": n / seconds}


async def bench_huey(workdir: Path, n: int, workers: int) -> dict[str, float]:
    db = workdir / f"huey-{workers}.db"
    name = f"huey_bench_app_{workers}"
    (workdir / f"{name}.py").write_text(HUEY_APP.format(db=db))
    sys.path.insert(0, str(workdir))
    mod = __import__(name)
    t0 = time.perf_counter()
    for i in range(n):
        mod.noop(i)
    enqueue = n / (time.perf_counter() - t0)

    async def done() -> bool:
        return bool(mod.huey.pending_count() == 0 and mod.huey.result_count() >= n)

    consumer = Path(sys.executable).with_name("huey_consumer")
    cmd = [
        str(consumer),
        f"{name}.huey",
        "-w",
        str(workers),
        "-k",
        "thread",
        "-n",
        "-d",
        "0.01",
        "-m",
        "0.1",
    ]
    seconds = await _drain(cmd, workdir, "The following commands are available", done)
    return {"enqueue one by one": enqueue, "drain": n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        stem = asyncio.run(bench_stem(workdir, args.n, args.batch))
        hueys = [asyncio.run(bench_huey(workdir, args.n, w)) for w in (1, 8)]
        huey = max(hueys, key=lambda r: r["drain"])
    print(
        textwrap.dedent(f"""
        {args.n:,} no-op tasks on SQLite, one worker process each (jobs/s)
        | measure            |      Stem |      Huey |  ratio |
        |--------------------|-----------|-----------|--------|
        | enqueue one by one | {stem["enqueue one by one"]:>9,.0f} | {huey["enqueue one by one"]:>9,.0f} | {stem["enqueue one by one"] / huey["enqueue one by one"]:>5.1f}x |
        | enqueue batched    | {stem["enqueue batched"]:>9,.0f} |         - |      - |
        | drain              | {stem["drain"]:>9,.0f} | {huey["drain"]:>9,.0f} | {stem["drain"] / huey["drain"]:>5.1f}x |
        """).strip()
    )


if __name__ == "__main__":
    main()
