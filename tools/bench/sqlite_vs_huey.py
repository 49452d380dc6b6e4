"""Stem on SQLite against SqliteHuey and against a floor, at equal durability, in one run.

    uv run python tools/bench/sqlite_vs_huey.py [-n 10000] [-r 3] [--sync full,normal]
        [--measures enqueue,batch,drain,rtt,two] [--systems stem,huey,floor] [--json out.json]
    uv run python tools/bench/sqlite_vs_huey.py --long 1000000 --sync normal

Both systems run with the same SQLite settings: WAL, and synchronous FULL or NORMAL on
every connection (a row of the table per setting), logs at WARNING, the same number of
no-op tasks that store a result, one worker process each. The floor is plain sqlite3
running Stem's own SQL on Stem's schema in one thread (see _floor.py).

Measures (each on fresh files, N tasks):
  enqueue  enqueue one by one from one producer (Stem: await task.enqueue; Huey: task())
  batch    enqueue_many in batches of 100 (Stem and the floor; Huey has no batch enqueue)
  drain    a backlog of N drained by one worker process, steady state: tasks between the
           10% and 90% marks of the tasks' own timestamps, so start-up and tail are left out
  rtt      round trip: enqueue one task and wait for its result (Stem: app.wait_for_task;
           Huey: result.get(blocking=True)), sequentially, the worker idle between trips
  two      a backlog drained by two worker processes on one file (and the gain over one)
The floor takes part in enqueue, batch and drain.

Each repetition runs Stem, Huey and the floor one after the other, in alternating order;
the table shows the median of R repetitions and their range, and ratios computed per
repetition (the median of the paired ratios). --long N drains N tasks with one Stem worker
and reports the rate per window of 10,000 tasks from the first to the last, and the
worker's RSS at the start and the end.

The machine may be shared: read the ranges before the medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _floor import run_floor
from _measure import (
    BenchError,
    comma_choices,
    filesystem,
    percentile,
    platform_settings,
    steady_rate,
    window_rates,
)
from _measure import format_cell as _cell
from _measure import format_number as _number
from _measure import paired_ratios as _ratios
from _systems import (
    WARM_UP_TRIPS,
    Plan,
    SystemRun,
    run_huey,
    run_stem,
    stem_accepts_synchronous,
)

MEASURES = ("enqueue", "batch", "drain", "rtt", "two")
SYSTEMS = ("stem", "huey", "floor")

# The rows of the table: key, label, unit ("rate", "ms" or "x"), and whether lower is better.
ROWS: list[tuple[str, str, str, bool]] = [
    ("enqueue_one", "enqueue one by one", "rate", False),
    ("enqueue_batched", "enqueue batched (100)", "rate", False),
    ("drain", "drain, 1 worker (10-90%)", "rate", False),
    ("rtt_p50", "round trip p50", "ms", True),
    ("rtt_p95", "round trip p95", "ms", True),
    ("drain_two", "drain, 2 workers (10-90%)", "rate", False),
    ("two_gain", "2 workers / 1 worker", "x", False),
]


def _figures(run: SystemRun) -> dict[str, float]:
    """The figures of one repetition of one system, by row key."""
    out: dict[str, float] = {}
    if run.enqueue_one is not None:
        out["enqueue_one"] = run.enqueue_one
    if run.enqueue_batched is not None:
        out["enqueue_batched"] = run.enqueue_batched
    if run.drain_stamps:
        out["drain"] = steady_rate(run.drain_stamps)
    if run.round_trips:
        out["rtt_p50"] = percentile(run.round_trips, 50)
        out["rtt_p95"] = percentile(run.round_trips, 95)
    if run.two_stamps:
        out["drain_two"] = steady_rate(run.two_stamps)
        if "drain" in out:
            out["two_gain"] = out["drain_two"] / out["drain"]
    return out


def _rate(v: float) -> str:
    return _number(v, "rate") + "/s"


def _table(
    figures: dict[str, dict[str, dict[str, list[float]]]], syncs: Sequence[str]
) -> list[str]:
    head = "| measure | synchronous | Stem | Huey | floor | Stem/Huey | Stem/floor |"
    lines = [head, "|" + "---|" * 7]
    for key, label, unit, lower_better in ROWS:
        for sync in syncs:
            by_system = figures[sync].get(key, {})
            stem, huey, floor = (by_system.get(s, []) for s in SYSTEMS)
            if not (stem or huey or floor):
                continue
            note = " (lower is better)" if lower_better else ""
            comparable = unit != "x"  # a ratio of two gains says nothing more
            vs_huey = _cell(_ratios(stem, huey), "x") if comparable and stem and huey else "-"
            vs_floor = _cell(_ratios(stem, floor), "x") if comparable and stem and floor else "-"
            lines.append(
                f"| {label}{note} | {sync} | {_cell(stem, unit)} | {_cell(huey, unit)}"
                f" | {_cell(floor, unit)} | {vs_huey} | {vs_floor} |"
            )
    return lines


def _header(
    args: argparse.Namespace,
    plan: Plan,
    seen: dict[str, dict[str, str]],
    journals: dict[str, str],
) -> list[str]:
    p = platform_settings()
    stem_opts = ", ".join(f"{k}={v}" for k, v in plan.stem_options) or "none besides synchronous"
    trips = min(args.round_trips, args.n)
    read_back = "; ".join(
        f"{sync}: " + ", ".join(f"{system}={value}" for system, value in by_system.items())
        for sync, by_system in seen.items()
    )
    lines = [
        "SQLite: Stem vs SqliteHuey vs the floor (plain sqlite3, Stem's schema and SQL)",
        f"- N={args.n:,} tasks per measure and system; R={args.repeat} paired repetitions, "
        "median (min-max); order alternates (Stem, Huey, floor) / (floor, Huey, Stem)",
        "- journal_mode=WAL for all (Huey: SqliteStorage journal_mode='wal', its default); "
        "synchronous per row, set on every connection (Stem: ?synchronous= in the URL; "
        "Huey: a PRAGMA on each connection, subclassing SqliteStorage; floor: a PRAGMA)",
        f"- read back from the connections: synchronous {read_back or '-'}; journal_mode "
        + (", ".join(f"{system}={mode}" for system, mode in journals.items()) or "-"),
        "- log level WARNING for all; a no-op task storing a result (time.monotonic())",
        f"- Stem: 1 worker process (stem worker), concurrency {plan.concurrency}, async "
        f"handler, prefetch 0; URL options: {stem_opts}",
        f"- Huey: 1 consumer process (huey_consumer), {plan.huey_workers} worker "
        f"thread(s) (-k thread); poll {plan.huey_poll} s (consumer -d/-m and "
        "result.get max_delay; Huey's defaults would add 50-100 ms to a round trip)",
        f"- round trip: {trips} sequential trips after {WARM_UP_TRIPS} warm-up, the worker "
        "idle between trips; drain rates: tasks between the 10% and 90% marks of their own "
        "timestamps / the time between",
        f"- floor: one thread, no asyncio, batches of {plan.batch}; no worker process",
        f"- Python {p['python']} ({p['implementation']}), SQLite {p['sqlite']}, "
        f"stem-core {p['stem-core']}, stem-sqlite {p['stem-sqlite']}, huey {p['huey']}, "
        f"{p['cpus']} CPUs, {p['platform']}; files on {filesystem(str(args.tmp or tempfile.gettempdir()))}",
    ]
    if args.n < 10_000:
        lines.append(f"- N={args.n:,} is small: drain rates are dominated by batch granularity")
    return lines


def _plan(args: argparse.Namespace, sync: str, measures: frozenset[str], in_url: bool) -> Plan:
    return Plan(
        n=args.n,
        synchronous=sync,
        measures=measures,
        batch=args.batch,
        round_trips=args.round_trips,
        concurrency=args.concurrency,
        huey_workers=args.huey_workers,
        huey_poll=args.huey_poll,
        stem_options=tuple(args.stem_option),
        stem_sync_in_url=in_url,
    )


def _check(sync: str, system: str, run: SystemRun) -> None:
    if run.synchronous_seen not in (sync, "unverified"):
        raise BenchError(
            f"{system} ran with synchronous={run.synchronous_seen}, not {sync}: the figures "
            "would compare unequal durability"
        )
    if run.journal_mode not in ("WAL", "unverified"):
        raise BenchError(f"{system}'s file is in journal mode {run.journal_mode}, not WAL")


def compare(args: argparse.Namespace, syncs: Sequence[str], in_url: bool) -> dict[str, Any]:
    measures = frozenset(args.measures)
    systems = [s for s in SYSTEMS if s in args.systems]
    if not measures & {"enqueue", "batch", "drain"}:
        systems = [s for s in systems if s != "floor"]  # nothing for it to do
    figures: dict[str, dict[str, dict[str, list[float]]]] = {}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    seen: dict[str, dict[str, str]] = {}
    journals: dict[str, str] = {}
    root = Path(tempfile.mkdtemp(prefix="stem-bench-", dir=args.tmp))
    try:
        for sync in syncs:
            plan = _plan(args, sync, measures, in_url)
            figures[sync] = {}
            raw[sync] = {s: [] for s in systems}
            seen[sync] = {}
            for rep in range(args.repeat):
                order = systems if rep % 2 == 0 else systems[::-1]
                for system in order:
                    workdir = root / f"{sync.lower()}_r{rep}_{system}"
                    workdir.mkdir()
                    print(f"  {sync} repetition {rep + 1}/{args.repeat}: {system}", file=sys.stderr)
                    run = _run(system, workdir, plan, args)
                    _check(sync, system, run)
                    if system != "floor":
                        seen[sync][system] = run.synchronous_seen
                        journals[system] = run.journal_mode
                    for key, value in _figures(run).items():
                        figures[sync].setdefault(key, {}).setdefault(system, []).append(value)
                    raw[sync][system].append(_raw(run))
                    shutil.rmtree(workdir, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    plan = _plan(args, syncs[0], measures, in_url)
    for line in _header(args, plan, seen, journals):
        print(line)
    print()
    for line in _table(figures, syncs):
        print(line)
    return {"figures": figures, "raw": raw, "read_back": seen}


def _run(system: str, workdir: Path, plan: Plan, args: argparse.Namespace) -> SystemRun:
    if system == "stem":
        return run_stem(workdir, plan)
    if system == "huey":
        return run_huey(workdir, plan)
    m = plan.measures
    floor = run_floor(
        workdir,
        plan.n,
        plan.synchronous,
        batch=plan.batch,
        one_by_one="enqueue" in m,
        batched="batch" in m,
        drain="drain" in m,
    )
    return SystemRun(
        enqueue_one=floor.enqueue_one,
        enqueue_batched=floor.enqueue_batched,
        drain_stamps=floor.drain_stamps,
        synchronous_seen=plan.synchronous,  # read back by the floor when it connects
        journal_mode="WAL",  # likewise
    )


def _raw(run: SystemRun) -> dict[str, Any]:
    """What the JSON keeps of a repetition: every figure, and the RSS of the worker."""
    return {
        **_figures(run),
        "drain_rss_start": run.drain_rss[0],
        "drain_rss_end": run.drain_rss[1],
        "round_trips_s": run.round_trips,
        "synchronous_seen": run.synchronous_seen,
        "journal_mode": run.journal_mode,
    }


def long_run(args: argparse.Namespace, syncs: Sequence[str], in_url: bool) -> dict[str, Any]:
    """Stem alone: the drain rate per window from the first task to the last, and RSS."""
    out: dict[str, Any] = {}
    n = args.long
    root = Path(tempfile.mkdtemp(prefix="stem-bench-long-", dir=args.tmp))
    try:
        for sync in syncs:
            args_long = argparse.Namespace(**{**vars(args), "n": n})
            plan = _plan(args_long, sync, frozenset({"drain"}), in_url)
            workdir = root / f"{sync.lower()}_long"
            workdir.mkdir()
            started = time.perf_counter()
            run = run_stem(workdir, plan)
            _check(sync, "stem", run)
            windows = window_rates(run.drain_stamps, args.window)
            start_rss, end_rss = run.drain_rss
            out[sync] = {
                "n": n,
                "window": args.window,
                "window_rates": windows,
                "steady_rate": steady_rate(run.drain_stamps),
                "rss_start": start_rss,
                "rss_end": end_rss,
                "synchronous_seen": run.synchronous_seen,
                "seconds": time.perf_counter() - started,
            }
            shutil.rmtree(workdir, ignore_errors=True)
            _print_long(sync, n, args, out[sync])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def _print_long(sync: str, n: int, args: argparse.Namespace, r: dict[str, Any]) -> None:
    p = platform_settings()
    windows: list[float] = r["window_rates"]
    print(
        f"Long run: Stem on SQLite, {n:,} tasks drained by 1 worker process, concurrency "
        f"{args.concurrency}, synchronous={sync} (read back: {r['synchronous_seen']}), WAL, "
        f"log level WARNING; Python {p['python']}, {p['cpus']} CPUs"
    )
    if windows:
        first, last = windows[0], windows[-1]
        print(
            f"- rate per {args.window:,}-task window: first {_rate(first)}, last {_rate(last)} "
            f"(last/first {last / first:.2f}), min {_rate(min(windows))}, "
            f"max {_rate(max(windows))}; steady state (10-90%) {_rate(r['steady_rate'])}"
        )
        for start in range(0, len(windows), 10):
            chunk = " ".join(f"{w / 1000:.1f}k" for w in windows[start : start + 10])
            print(f"  windows {start + 1}-{min(start + 10, len(windows))}: {chunk}")
    start_rss, end_rss = r["rss_start"], r["rss_end"]
    if start_rss and end_rss:
        print(
            f"- worker RSS: {start_rss / 2**20:.1f} MiB at the start, {end_rss / 2**20:.1f} MiB "
            f"at the end ({(end_rss / start_rss - 1) * 100:+.1f}%)"
        )
    else:
        print("- worker RSS: not available on this platform")


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10_000, help="tasks per measure (default 10000)")
    parser.add_argument(
        "-r", "--repeat", type=int, default=3, help="paired repetitions (default 3)"
    )
    parser.add_argument(
        "--sync",
        type=comma_choices(("full", "normal")),
        default=["full", "normal"],
        help="synchronous settings to compare at (default full,normal)",
    )
    parser.add_argument(
        "--measures",
        type=comma_choices(MEASURES),
        default=list(MEASURES),
        help=f"which measures (default all: {','.join(MEASURES)})",
    )
    parser.add_argument(
        "--systems",
        type=comma_choices(SYSTEMS),
        default=list(SYSTEMS),
        help="which systems (default stem,huey,floor; huey is left out if not installed)",
    )
    parser.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    parser.add_argument(
        "--round-trips", type=int, default=500, help="round trips per repetition (default 500)"
    )
    parser.add_argument(
        "-c", "--concurrency", type=int, default=100, help="Stem worker concurrency (default 100)"
    )
    parser.add_argument(
        "--huey-workers", type=int, default=1, help="Huey consumer threads (default 1)"
    )
    parser.add_argument(
        "--huey-poll",
        type=float,
        default=0.001,
        help="Huey's poll interval, consumer and result.get (default 0.001 s)",
    )
    parser.add_argument(
        "--stem-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sqlite:// URL option for Stem, e.g. wake_interval=0.005 (repeatable)",
    )
    parser.add_argument(
        "--long", type=int, default=0, metavar="N", help="only the long Stem drain of N tasks"
    )
    parser.add_argument(
        "--window", type=int, default=10_000, help="window of the long run (default 10000)"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--tmp", type=Path, help="directory for the database files")
    args = parser.parse_args(argv)
    if args.n < 10 or args.repeat < 1 or args.batch < 1 or args.round_trips < 1:
        parser.error("-n needs at least 10 tasks, -r, --batch and --round-trips at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    syncs = [s.upper() for s in args.sync]
    if "huey" in args.systems and not _has_huey():
        print(
            "huey is not installed: running without it (uv sync installs the dev group)",
            file=sys.stderr,
        )
        args.systems = [s for s in args.systems if s != "huey"]
    in_url = stem_accepts_synchronous()
    if not in_url and ("stem" in args.systems or args.long):
        if "FULL" in syncs:
            print(
                "stem-sqlite does not accept ?synchronous= in its URL yet, so Stem cannot run "
                "with synchronous=FULL and no comparison at equal durability is possible at "
                "FULL. Run with --sync normal (stem-sqlite's built-in setting), or update "
                "stem-sqlite.",
                file=sys.stderr,
            )
            return 2
        print(
            "note: stem-sqlite does not accept ?synchronous= yet; Stem runs with its built-in "
            "synchronous=NORMAL (read back below)",
            file=sys.stderr,
        )
    report: dict[str, Any] = {
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "synchronous_in_url": in_url,
            "warm_up_trips": WARM_UP_TRIPS,
            **platform_settings(),
        }
    }
    try:
        if args.long:
            report["long"] = long_run(args, syncs, in_url)
        else:
            report.update(compare(args, syncs, in_url))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _has_huey() -> bool:
    import importlib.util

    return importlib.util.find_spec("huey") is not None


if __name__ == "__main__":
    os.environ.pop("STEM_URL", None)  # the harness names every file itself
    sys.exit(main())
