"""Stem on Redis against Celery, Dramatiq, arq, SAQ, Taskiq, Huey and RQ, and a floor, in one run.

    uv run --group bench-redis python tools/bench/redis_peers.py [-n 10000] [-r 3]
        [--systems stem,celery,dramatiq,arq,saq,taskiq,huey,rq,floor]
        [--measures enqueue,batch,drain,rtt] [--json out.json] [--redis-url URL]

The peers are in the `bench-redis` dependency group (not in the test environment); a peer
that is not installed, or fails, gets a row saying why and the run goes on.

Every system runs on the same redis-server (started here on a free loopback port with
persistence off, or the one --redis-url names: its databases 0 and 1 are flushed), with
a no-op task that stores its result (the time.monotonic() at which it ran), logging at
WARNING, one worker process started the way its users start it (settings in the header).

Measures (each system starts on empty databases, N tasks):
  enqueue  N enqueues one by one from one producer; they are the drain's backlog
  batch    N enqueues in batches of 100, where the system has a batch API (database 1)
  drain    the backlog drained by one worker process, steady state: the tasks between
           the 10% and 90% marks of their own timestamps, divided by the time between
  rtt      round trip: enqueue one task and wait for its result, sequentially, the
           worker idle between trips; p50 and p99
The floor is plain redis-py on one stream (see _redis_floor.py): XADD one by one and
pipelined, XREADGROUP + XACK in batches, and an XADD -> XREADGROUP -> XACK round trip.
STEM_REDIS_CLIENT=redis-py runs Stem (producer and worker) with redis-py's asyncio client
for every command instead of its own RESP client (stem_redis._resp), for an A/B comparison.

Each repetition runs every system in a process of its own, one after the other, the
order reversed on every other repetition; the tables show the median of R repetitions
with their range, and the ratios are medians of the per-repetition ratios.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _measure import (
    BenchError,
    comma_choices,
    format_cell,
    format_number,
    paired_ratios,
    percentile,
    platform_settings,
    run_in_own_process,
    summarize,
)
from _redis_common import MODULES, RedisPlan
from _redis_setup import base_url, flush, server_settings, start_server
from _systems import WARM_UP_TRIPS

SYSTEMS = tuple(MODULES)
PEERS = tuple(s for s in SYSTEMS if s not in ("stem", "floor"))
MEASURES = ("enqueue", "batch", "drain", "rtt")
RUNNER = Path(__file__).resolve().parent / "_redis_run.py"

# The columns of the table: key, label, unit ("rate" or "ms").
COLUMNS: list[tuple[str, str, str]] = [
    ("enqueue_one", "enqueue one by one", "rate"),
    ("enqueue_batched", "enqueue batched (100)", "rate"),
    ("drain", "drain, 1 worker (10-90%)", "rate"),
    ("rtt_p50", "round trip p50", "ms"),
    ("rtt_p99", "round trip p99", "ms"),
]

# Stem's targets (issue 9), as ratios within one run: label, Stem's figure, the reference,
# the target, and whether the ratio must be at least (True) or at most (False) the target.
TARGETS: list[tuple[str, str, str, float, bool]] = [
    ("drain vs the fastest peer", "drain", "fastest peer", 10.0, True),
    ("drain vs the floor", "drain", "floor", 0.3, True),
    ("batched enqueue vs the floor's pipelined XADD", "enqueue_batched", "floor", 0.5, True),
    ("round trip p50 vs the floor's", "rtt_p50", "floor", 2.0, False),
]

#: A system's repetition that takes longer than this is stopped (its row says so).
RUN_TIMEOUT = 1800.0

# One repetition's figures: system -> key -> value (absent where not measured or failed).
Rep = dict[str, dict[str, float]]


def _module(system: str) -> Any:
    return importlib.import_module(MODULES[system])


def _name(system: str) -> str:
    return str(_module(system).NAME)


def _run_system(system: str, plan: RedisPlan) -> dict[str, Any]:
    """One repetition of one system in a process of its own (and its workers' group)."""
    workdir = Path(plan.workdir)
    workdir.mkdir(parents=True)
    plan_path, out_path = workdir / "plan.json", workdir / "out.json"
    plan_path.write_text(json.dumps(plan.to_json()))
    # STEM_* settings of the caller's shell stay out, but for the choice of Redis client
    # (see the header), which _peer_stem.py passes on to its worker through the app.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("STEM_") or k == "STEM_REDIS_CLIENT"
    }
    cmd = [sys.executable, str(RUNNER), system, str(plan_path), str(out_path)]
    return run_in_own_process(cmd, workdir, out_path, system, env, RUN_TIMEOUT)


def _figures(raw: dict[str, Any]) -> dict[str, float]:
    figures = {k: v for k, v in raw.items() if k in ("enqueue_one", "enqueue_batched", "drain")}
    trips = raw.get("round_trips")
    if trips:
        figures["rtt_p50"] = percentile(trips, 50)
        figures["rtt_p99"] = percentile(trips, 99)
    return figures


def compare(args: argparse.Namespace) -> dict[str, Any]:
    server = start_server(args.redis_url)
    try:
        url = base_url(server)
        return _compare(args, url)
    finally:
        server.stop()


def _compare(args: argparse.Namespace, url: str) -> dict[str, Any]:
    systems = [s for s in SYSTEMS if s in args.systems]
    reps: list[Rep] = []
    versions: dict[str, str] = {}
    reasons: dict[str, str] = {}
    notes: dict[str, list[tuple[int, str]]] = {}
    missing: set[str] = set()  # not installed: not tried again
    raw: list[dict[str, Any]] = []
    root = Path(tempfile.mkdtemp(prefix="stem-bench-redis-"))
    settings = server_settings(f"{url}/0")
    for rep in range(args.repeat):
        order = systems if rep % 2 == 0 else systems[::-1]
        figures: Rep = {}
        for system in order:
            if system in missing:
                continue  # the same in every repetition
            print(f"  repetition {rep + 1}/{args.repeat}: {system}", file=sys.stderr)
            plan = _plan(args, url, root / f"r{rep}_{system}")
            for db in (plan.url, plan.batch_url):
                flush(db)
            result = _run_system(system, plan)
            raw.append({"repetition": rep, "system": system, **result})
            if not result["ok"]:
                print(f"  {system}: {result['reason']}", file=sys.stderr)
                if result.get("missing"):
                    missing.add(system)
                    reasons[system] = _short(result["reason"])
                else:
                    notes.setdefault(system, []).append((rep, _short(result["reason"])))
                continue
            versions[system] = result["figures"].get("version", "?")
            if result["figures"].get("note"):
                notes.setdefault(system, []).append((rep, result["figures"]["note"]))
            figures[system] = _figures(result["figures"])
        reps.append(figures)
    for db in (f"{url}/0", f"{url}/1"):
        flush(db)
    if any(not r["ok"] and not r.get("missing") for r in raw):
        print(f"the failed runs' files are kept in {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    for line in _header(args, systems, settings, versions):
        print(line)
    print()
    for line in _table(systems, reps, versions, reasons, notes):
        print(line)
    print()
    for line in _targets(reps):
        print(line)
    return {
        "server": settings,
        "versions": versions,
        "not_run": reasons,
        "notes": notes,
        "raw": raw,
    }


def _short(reason: str) -> str:
    """The first line of a reason (a worker's log may follow it), for the table."""
    first = reason.strip().splitlines()[0] if reason.strip() else "failed"
    return first.replace("|", "/")


def _plan(args: argparse.Namespace, url: str, workdir: Path) -> RedisPlan:
    return RedisPlan(
        url=f"{url}/0",
        batch_url=f"{url}/1",
        n=args.n,
        measures=tuple(args.measures),
        workdir=str(workdir),
        batch=args.batch,
        round_trips=args.round_trips,
        concurrency=args.concurrency,
        threads=args.threads,
        poll=args.poll,
    )


def _values(reps: Sequence[Rep], system: str, key: str) -> list[float]:
    return [r[system][key] for r in reps if key in r.get(system, {})]


def _table(
    systems: Sequence[str],
    reps: Sequence[Rep],
    versions: dict[str, str],
    reasons: dict[str, str],
    notes: dict[str, list[tuple[int, str]]],
) -> list[str]:
    head = "| system | version | " + " | ".join(label for _, label, _ in COLUMNS) + " | note |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for system in systems:
        name = _name(system)
        cells = [format_cell(_values(reps, system, key), unit) for key, _, unit in COLUMNS]
        said = [f"{name}: {reasons[system]}"] if system in reasons else []
        said += [f"repetition {rep + 1}: {text}" for rep, text in notes.get(system, [])]
        note = "; ".join(said).replace("|", "/")
        version = versions.get(system, "-")
        lines.append(f"| {name} | {version} | " + " | ".join(cells) + f" | {note} |")
    return lines


def _fastest_peer(rep: Rep) -> tuple[str, float] | None:
    drains = [(rep[p]["drain"], p) for p in PEERS if "drain" in rep.get(p, {})]
    if not drains:
        return None
    value, peer = max(drains)
    return peer, value


def _targets(reps: Sequence[Rep]) -> list[str]:
    lines = [
        "| Stem's target | Stem | reference | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for label, key, reference, target, at_least in TARGETS:
        unit = "ms" if key.startswith("rtt") else "rate"
        stem, ref, ref_names = [], [], []
        for rep in reps:
            mine = rep.get("stem", {}).get(key)
            if reference == "floor":
                other = rep.get("floor", {}).get(key)
                name = "floor"
            else:
                found = _fastest_peer(rep)
                other, name = (found[1], _name(found[0])) if found else (None, "")
            if mine is not None and other is not None:
                stem.append(mine)
                ref.append(other)
                ref_names.append(name)
        if not stem:
            lines.append(f"| {label} | - | - | - | {_bound(target, at_least)} | not measured |")
            continue
        ratios = paired_ratios(stem, ref)
        median = summarize(ratios).median
        met = median >= target if at_least else median <= target
        who = "/".join(sorted(set(ref_names)))
        lines.append(
            f"| {label} | {format_cell(stem, unit)} | {who} {format_cell(ref, unit)} | "
            f"{format_cell(ratios, 'x')} | {_bound(target, at_least)} | "
            f"{'yes' if met else '**no**'} |"
        )
    return lines


def _bound(target: float, at_least: bool) -> str:
    return f"{'>=' if at_least else '<='} {format_number(target, 'x')}x"


def _header(
    args: argparse.Namespace,
    systems: Sequence[str],
    server: dict[str, str],
    versions: dict[str, str],
) -> list[str]:
    import redis
    from redis.utils import HIREDIS_AVAILABLE

    p = platform_settings()
    plan = _plan(args, "redis://", Path("."))
    parser = "hiredis" if HIREDIS_AVAILABLE else "pure-Python parser (hiredis not installed)"
    trips = min(args.round_trips, args.n)
    where = args.redis_url or "started by the benchmark on a free loopback port"
    lines = [
        "Redis: Stem vs Celery, Dramatiq, arq, SAQ, Taskiq, Huey and RQ, and the floor "
        "(plain redis-py on one stream)",
        f"- N={args.n:,} tasks per measure and system; R={args.repeat} paired repetitions, "
        "median (min-max); each system in a process of its own, the order reversed on every "
        "other repetition",
        f"- one redis-server {server['version']} for all ({where}); persistence as the server "
        f"reports it: save='{server['save']}', appendonly={server['appendonly']} "
        f"(appendfsync {server['appendfsync']}); every system starts on empty databases "
        "(backlog, drain and round trips in database 0, batched enqueue in database 1)",
        f"- client: redis-py {redis.__version__} with {parser}, for every system (Celery "
        "through kombu; asyncio systems through redis.asyncio)",
        "- log level WARNING for all; a no-op task storing its result (time.monotonic()) "
        "in the system's own result store on the same server",
        f"- enqueue batched: batches of {args.batch}; round trip: {trips} sequential trips "
        f"after {WARM_UP_TRIPS} warm-up, the worker idle between trips; drain: the tasks "
        "between the 10% and 90% marks of their own timestamps / the time between",
        f"- polling peers poll every {args.poll * 1000:g} ms, at their most responsive "
        "(their defaults would add up to 0.5-1 s to a round trip)",
    ]
    for system in systems:
        module = _module(system)
        version = versions.get(system, "not run")
        lines.append(f"- {module.NAME} ({version}): {module.settings(plan)}")
    lines.append(
        f"- Python {p['python']} ({p['implementation']}), {p['cpus']} CPUs, {p['platform']}"
    )
    if args.n < 10_000:
        lines.append(f"- N={args.n:,} is small: drain rates are dominated by batch granularity")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10_000, help="tasks per measure (default 10000)")
    parser.add_argument(
        "-r", "--repeat", type=int, default=3, help="paired repetitions (default 3)"
    )
    parser.add_argument(
        "--systems",
        type=comma_choices(SYSTEMS),
        default=list(SYSTEMS),
        help=f"which systems (default all: {','.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--measures",
        type=comma_choices(MEASURES),
        default=list(MEASURES),
        help=f"which measures (default all: {','.join(MEASURES)})",
    )
    parser.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    parser.add_argument(
        "--round-trips", type=int, default=500, help="round trips per repetition (default 500)"
    )
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=100,
        help="concurrency of Stem's worker and the asyncio peers' (default 100)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=8,
        help="threads of Dramatiq's and Huey's worker, Celery's prefetch (default 8)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=0.001,
        help="poll interval of the peers that poll (default 0.001 s)",
    )
    parser.add_argument(
        "--redis-url",
        help="use this server instead of starting one (its databases 0 and 1 are flushed)",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    if args.n < 10 or args.repeat < 1 or args.batch < 1 or args.round_trips < 1:
        parser.error("-n needs at least 10 tasks, -r, --batch and --round-trips at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = compare(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    report["settings"] = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "warm_up_trips": WARM_UP_TRIPS,
        **platform_settings(),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
