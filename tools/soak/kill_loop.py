"""The kill -9 soak: real ``stem worker`` processes on one SQLite file, one killed every half second.

    uv run python tools/soak/kill_loop.py                      # all three pools, 60 s of kills each
    uv run python tools/soak/kill_loop.py --pool thread --seconds 60 --tasks 5000

Prints a table per pool (tasks sent, succeeded, run twice, run concurrently, lost,
dead-lettered, kills, duration, integrity) and exits 1 if any task was lost or
dead-lettered or the SQLite file failed ``PRAGMA integrity_check``. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

# Run as a script, this directory is on sys.path: the harness is shared with tests/processes.
from kill_harness import POOLS, Report, Settings, run_kill_loop

COLUMNS = (
    ("pool", "pool"),
    ("sent", "sent"),
    ("succeeded", "succeeded"),
    ("run twice", "run_twice"),
    ("concurrently", "run_concurrently"),
    ("lost", "lost"),
    ("dead", "dead"),
    ("kills", "kills"),
    ("duration", "duration"),
    ("drain", "drain"),
    ("integrity", "integrity"),
)


def table(reports: list[Report]) -> str:
    def cell(report: Report, attr: str) -> str:
        value = getattr(report, attr)
        return f"{value:.1f}s" if isinstance(value, float) else str(value)

    rows = [[title for title, _ in COLUMNS]]
    rows += [[cell(r, attr) for _, attr in COLUMNS] for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(text.rjust(width) for text, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", choices=POOLS, help="one pool (default: all three in turn)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of kills per pool")
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per pool")
    parser.add_argument("--workers", type=int, default=3, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="-c of each worker")
    parser.add_argument("--kill-every", type=float, default=0.5, help="seconds between kills")
    parser.add_argument(
        "--work-ms", type=float, default=20.0, help="each task's work, milliseconds"
    )
    parser.add_argument(
        "--visibility-timeout", type=float, default=2.0, help="the task's lease, seconds"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="after the kills, how long tasks get to reach a final status",
    )
    parser.add_argument("--enqueue-over", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=None, help="seed for the choice of victim")
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directories (database, logs, runs)"
    )
    return parser.parse_args(argv)


async def soak(args: argparse.Namespace) -> list[Report]:
    reports: list[Report] = []
    for pool in [args.pool] if args.pool else list(POOLS):
        settings = Settings(
            pool=pool,
            tasks=args.tasks,
            seconds=args.seconds,
            workers=args.workers,
            concurrency=args.concurrency,
            kill_every=args.kill_every,
            work=args.work_ms / 1000,
            visibility_timeout=args.visibility_timeout,
            drain_timeout=args.drain_timeout,
            seed=args.seed,
            enqueue_over=args.enqueue_over,
        )
        root = Path(tempfile.mkdtemp(prefix=f"stem-soak-{pool}-"))
        print(
            f"{pool} pool: {args.tasks} tasks, a kill every {args.kill_every}s for {args.seconds:g}s in {root}",
            flush=True,
        )
        report = await run_kill_loop(root, settings, say=lambda line: print(line, flush=True))
        reports.append(report)
        print(report.describe(), flush=True)
        if args.keep or not report.ok:
            print(f"  kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reports = asyncio.run(soak(args))
    print()
    print(table(reports))
    failed = [r.pool for r in reports if not r.ok]
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (lost or dead-lettered tasks, or a damaged file)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
