"""The kill -9 soak: real ``stem worker`` processes on one SQLite file, one killed every half second.

    uv run python tools/soak/kill_loop.py                      # all three pools, 60 s of kills each
    uv run python tools/soak/kill_loop.py --pool thread --seconds 60 --tasks 5000
    uv run python tools/soak/kill_loop.py --backend redis      # on a redis-server it starts
    uv run python tools/soak/kill_loop.py --url redis://host:6379/0   # on a server of yours

Prints a table per pool (tasks sent, succeeded, run twice, run concurrently, lost,
dead-lettered, kills, duration, integrity) and exits 1 if any task was lost or
dead-lettered or the SQLite file failed ``PRAGMA integrity_check``. See README.md.
On Redis each pool works under a key prefix of its own (``?prefix=soak-...``).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Run as a script, this directory is on sys.path: the harness is shared with tests/processes.
from kill_harness import POOLS, Report, Settings, run_kill_loop

TOOLS = Path(__file__).resolve().parent.parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))  # for redis_server, when --backend redis starts one

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
    parser.add_argument(
        "--backend",
        choices=("sqlite", "redis"),
        default=None,
        help="sqlite: a file per pool (the default); redis: a redis-server started for the "
        "soak (append-only, on a free loopback port), unless --url names one",
    )
    parser.add_argument(
        "--url", default=None, help="a redis:// URL to run on (implies --backend redis)"
    )
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
    args = parser.parse_args(argv)
    if args.url is not None:
        if args.backend == "sqlite":
            parser.error("--url is a Redis server's URL: leave out --backend sqlite")
        args.backend = "redis"
    args.backend = args.backend or "sqlite"
    return args


@contextmanager
def server_url(args: argparse.Namespace) -> Iterator[str | None]:
    """Where the workers meet: None (SQLite files), ``--url``, or a redis-server of our own."""
    if args.backend == "sqlite" or args.url is not None:
        yield args.url
        return
    import redis_server

    with redis_server.start(appendonly=True) as server:
        print(f"redis-server {server.url} in {server.directory}", flush=True)
        yield server.url


def with_prefix(url: str, prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


async def soak(args: argparse.Namespace, url: str | None = None) -> list[Report]:
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
            url=None if url is None else with_prefix(url, f"soak-{pool}-{uuid.uuid4().hex[:8]}"),
        )
        root = Path(tempfile.mkdtemp(prefix=f"stem-soak-{pool}-"))
        print(
            f"{pool} pool on {args.backend}: {args.tasks} tasks, a kill every {args.kill_every}s"
            f" for {args.seconds:g}s in {root}",
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
    with server_url(args) as url:
        reports = asyncio.run(soak(args, url))
    print()
    print(table(reports))
    failed = [r.pool for r in reports if not r.ok]
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (lost or dead-lettered tasks, or a damaged file)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
