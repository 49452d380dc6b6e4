"""The core's own ceiling: drain ``memory://`` in-process, no I/O at all.

    uv run python tools/bench/memory_drain.py [-n 100000] [-r 3] [-c 100] [--json out.json]

Stem(MemoryBroker(), MemoryResultBackend()), N no-op tasks that store a result, enqueued
before the worker starts (in batches of 1,000, not timed); one worker with concurrency 100
in the same process and event loop drains them. Two handlers, in alternating order per
repetition: ``async def`` (run on the event loop) and a plain ``def`` (run in the worker's
thread pool). The rate is the steady state: the tasks between the 10% and the 90% marks
of the timestamps the handlers record, divided by the time between them. Every result
is checked to be stored as succeeded. Target of issue 8: at least 100,000 tasks/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _measure import BenchError, platform_settings, steady_rate, summarize

from stem import Stem, TaskState
from stem.memory import MemoryBroker, MemoryResultBackend

HANDLERS = ("async", "sync")
TARGET = 100_000


async def drain_once(handler: str, n: int, concurrency: int) -> dict[str, float]:
    """One drain of ``n`` tasks; the steady-state rate and the whole drain's rate."""
    app = Stem(MemoryBroker(), MemoryResultBackend())
    stamps: list[float] = []
    record = stamps.append  # list.append is atomic: the thread pool may call it too

    if handler == "async":

        @app.task(name="bench.noop")
        async def noop(i: int) -> int:
            record(time.perf_counter())
            return i

    else:

        @app.task(name="bench.noop")
        def noop(i: int) -> int:
            record(time.perf_counter())
            return i

    try:
        ids: list[str] = []
        for start in range(0, n, 1000):
            ids += await app.enqueue_many(noop.call(i) for i in range(start, min(n, start + 1000)))
        started = time.perf_counter()
        async with app.worker(concurrency=concurrency):
            while len(stamps) < n:  # noqa: ASYNC110 - a benchmark may poll; tests may not
                await asyncio.sleep(0.005)
            while True:  # every result stored and every message acked
                stats = await app.broker.queue_stats("default")
                if stats.pending + stats.inflight == 0:
                    break
                await asyncio.sleep(0.001)
            whole = n / (time.perf_counter() - started)
        for start in range(0, n, 1000):
            chunk = ids[start : start + 1000]
            found = await app.backend.get_statuses(chunk)
            failed = [t for t in chunk if t not in found or found[t].state != TaskState.SUCCEEDED]
            if failed:
                raise BenchError(f"{len(failed)} tasks did not succeed, e.g. {failed[0]}")
    finally:
        await app.aclose()
    if len(stamps) != n:
        raise BenchError(f"{len(stamps)} handler runs for {n} tasks")
    return {"steady": steady_rate(stamps), "whole": whole}


def _k(v: float) -> str:
    return f"{v / 1000:.1f}k"


def _cell(values: Sequence[float]) -> str:
    s = summarize(values)
    text = f"{_k(s.median)}/s"
    return text + (f" ({_k(s.low)}-{_k(s.high)})" if len(values) > 1 else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=100_000, help="tasks (default 100000)")
    parser.add_argument("-r", "--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("-c", "--concurrency", type=int, default=100, help="(default 100)")
    parser.add_argument(
        "--handlers", default="async,sync", help="async, sync or both (default async,sync)"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    handlers = [h.strip() for h in args.handlers.split(",") if h.strip()]
    if not handlers or any(h not in HANDLERS for h in handlers):
        parser.error(f"--handlers takes {', '.join(HANDLERS)}, comma-separated")
    if args.n < 10 or args.repeat < 1 or args.concurrency < 1:
        parser.error("-n needs at least 10 tasks; -r and -c at least 1")
    logging.basicConfig(level=logging.WARNING)

    figures: dict[str, dict[str, list[float]]] = {h: {"steady": [], "whole": []} for h in handlers}
    try:
        for rep in range(args.repeat):
            for handler in handlers if rep % 2 == 0 else handlers[::-1]:
                print(f"  repetition {rep + 1}/{args.repeat}: {handler}", file=sys.stderr)
                result = asyncio.run(drain_once(handler, args.n, args.concurrency))
                for key, value in result.items():
                    figures[handler][key].append(value)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1

    p = platform_settings()
    print("memory:// drain, in-process: the core's own ceiling")
    print(
        f"- N={args.n:,} no-op tasks storing a result, enqueued before the worker starts; "
        f"1 worker, concurrency {args.concurrency}, in the same process and event loop; "
        f"R={args.repeat} repetitions, median (min-max), order alternating"
    )
    print(
        "- steady state: tasks between the 10% and 90% marks of the handlers' timestamps; "
        "whole drain: N / (worker start to every message acked); log level WARNING"
    )
    print(
        f"- Python {p['python']} ({p['implementation']}), stem-core {p['stem-core']}, "
        f"{p['cpus']} CPUs, {p['platform']}"
    )
    print()
    print(f"| handler | steady state | whole drain | steady / target {_k(TARGET)}/s |")
    print("|---|---|---|---|")
    labels = {"async": "async def (event loop)", "sync": "def (thread pool)"}
    for handler in handlers:
        steady, whole = figures[handler]["steady"], figures[handler]["whole"]
        ratio = summarize(steady).median / TARGET
        print(f"| {labels[handler]} | {_cell(steady)} | {_cell(whole)} | {ratio:.2f}x |")
    if args.json:
        report: dict[str, Any] = {
            "settings": {
                "n": args.n,
                "repeat": args.repeat,
                "concurrency": args.concurrency,
                "handlers": handlers,
                **platform_settings(),
            },
            "figures": figures,
        }
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
