"""Durable workflows: Stem on SQLite and on Redis against DBOS on SQLite, in one run.

    uv run --group bench-workflows python tools/bench/workflows.py [-n 500] [-m 100] [-r 3]
        [--sync normal|full|full,normal] [--systems stem-sqlite,stem-redis,dbos-sqlite]
        [--json out.json] [--redis-url URL] [--profile DIR]

DBOS is in the `bench-workflows` dependency group (not in the test environment); if it
is not installed its row says so and the run goes on.

Every system runs the same workflow: 10 steps, each an async no-op whose result is
checkpointed, returning the workflow's own parameter. Measures, the same for all:
  throughput  N workflows started at once (asyncio.gather of N starts); workflows per
              second from the first start to the last completion, as each system's store
              recorded it
  latency     one workflow at a time, start to result, M of them after 10 warm-up ones,
              the executor idle between; p50 and p99
Stem runs the way it is deployed: the harness's process starts the runs, one `stem
worker` process executes them (the task stem.workflow.run). DBOS runs the way its docs
launch it: the workflows execute in the process that starts them, on DBOS's own
executor. DBOS has no Redis store, so Stem on Redis is compared with DBOS on SQLite.

Durability is the same on every row of a `--sync` level: SQLite in WAL mode with that
`synchronous` (Stem through its URL, DBOS through a connect event on its engine, both
read back from the connections), and Redis with the append-only file fsynced to match
(`appendfsync everysec` for NORMAL: a crash of any process loses nothing, a power cut
the last second; `always` for FULL). `--systems ...,dbos-shipped` adds DBOS as it ships
(rollback journal, synchronous=FULL), for reference.

Each repetition runs every system in a process of its own, one after the other, the
order reversed on every other repetition; the tables show the median of R repetitions
with their range, and the target ratios are medians of the per-repetition ratios.
`--profile DIR` runs Stem's worker (and the harness process) under cProfile and keeps
the profiles there (the figures of such a run are slower: do not publish them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from _measure import (
    BenchError,
    comma_choices,
    filesystem,
    format_cell,
    format_number,
    paired_ratios,
    percentile,
    platform_settings,
    run_in_own_process,
    summarize,
)
from _redis_setup import server_settings
from _wf_common import MODULES, TRIP_TIMEOUT, WfPlan

SYSTEMS = tuple(MODULES)
DEFAULT_SYSTEMS = ("stem-sqlite", "stem-redis", "dbos-sqlite")
RUNNER = Path(__file__).resolve().parent / "_wf_run.py"
TOOLS = Path(__file__).resolve().parent.parent
#: A system's repetition that takes longer than this is stopped (its row says so).
RUN_TIMEOUT = 1800.0
#: Redis's append-only fsync policy at the durability of each SQLite ``synchronous``.
APPENDFSYNC = {"NORMAL": "everysec", "FULL": "always"}

#: The columns: key, label, unit ("rate" or "ms").
COLUMNS: list[tuple[str, str, str]] = [
    ("throughput", "workflows/s", "rate"),
    ("p50", "10-step latency p50", "ms"),
    ("p99", "p99", "ms"),
]

# Stem's targets (issue 10), as ratios within one run against DBOS on SQLite at the same
# durability: label, key, the target, whether the ratio must be at least (True) or at
# most (False) the target.
TARGETS: list[tuple[str, str, float, bool]] = [
    ("workflows/s", "throughput", 10.0, True),
    ("10-step p50", "p50", 0.2, False),
]

# One repetition's figures: system -> key -> value.
Rep = dict[str, dict[str, float]]


def _module(system: str) -> Any:
    import importlib

    return importlib.import_module(MODULES[system])


def _run_system(plan: WfPlan, profile: Path | None) -> dict[str, Any]:
    """One repetition of one system in a process of its own (and its worker's group)."""
    workdir = Path(plan.workdir)
    workdir.mkdir(parents=True)
    plan_path, out_path = workdir / "plan.json", workdir / "out.json"
    plan_path.write_text(json.dumps(plan.to_json()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEM_")}
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile / f"{workdir.name}-harness.prof")]
        env["STEM_BENCH_PROFILE"] = str(profile / f"{workdir.name}-worker.prof")
    cmd += [str(RUNNER), str(plan_path), str(out_path)]
    return run_in_own_process(cmd, workdir, out_path, plan.system, env, RUN_TIMEOUT)


def _figures(run: dict[str, Any]) -> dict[str, float]:
    figures: dict[str, float] = {}
    if run.get("throughput"):
        figures["throughput"] = run["throughput"]
    trips = run.get("latencies")
    if trips:
        figures["p50"] = percentile(trips, 50)
        figures["p99"] = percentile(trips, 99)
    return figures


# -- Redis ------------------------------------------------------------------------------------


class _Redis:
    """The one redis-server of the run (started here with an append-only file, or the
    user's), set to the fsync policy of each --sync level."""

    def __init__(self, url: str | None) -> None:
        self.own = url is None
        if url is None:
            if str(TOOLS) not in sys.path:
                sys.path.insert(0, str(TOOLS))
            import redis_server

            try:
                self.server: Any = redis_server.start(appendonly=True)
            except redis_server.RedisServerUnavailable as exc:
                raise BenchError(f"no Redis server: {exc}") from exc
            self.url = self.server.url
        else:
            self.server, self.url = None, url

    def prepare(self, sync: str) -> dict[str, str]:
        """Empty the database; on our own server, set appendfsync for ``sync``; the
        persistence settings the server reports."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            if self.own:
                client.config_set("appendfsync", APPENDFSYNC[sync])
            client.flushdb()
        except redis.RedisError as exc:
            raise BenchError(f"cannot talk to the Redis server at {self.url}: {exc}") from exc
        finally:
            client.close()
        return server_settings(self.url)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# -- the run ----------------------------------------------------------------------------------


def compare(args: argparse.Namespace) -> dict[str, Any]:
    syncs = [s.upper() for s in args.sync]
    systems = [s for s in SYSTEMS if s in args.systems]
    redis = _Redis(args.redis_url) if "stem-redis" in systems else None
    root = Path(tempfile.mkdtemp(prefix="stem-bench-wf-", dir=args.tmp))
    profile = args.profile.resolve() if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"levels": {}, "raw": []}
    failed = False
    try:
        for sync in syncs:
            level = _level(args, sync, systems, syncs, redis, root, profile)
            failed |= level.pop("failed")
            report["levels"][sync] = level
    finally:
        if redis is not None:
            redis.stop()
        if failed:
            print(f"the failed runs' files are kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return report


def _level(
    args: argparse.Namespace,
    sync: str,
    systems: Sequence[str],
    syncs: Sequence[str],
    redis: _Redis | None,
    root: Path,
    profile: Path | None,
) -> dict[str, Any]:
    here = [s for s in systems if s != "dbos-shipped" or sync == syncs[0]]
    reps: list[Rep] = []
    versions: dict[str, str] = {}
    read_back: dict[str, dict[str, str]] = {}
    reasons: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    starts: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    raw: list[dict[str, Any]] = []
    server: dict[str, str] = {}
    missing: set[str] = set()
    for rep in range(args.repeat):
        order = here if rep % 2 == 0 else here[::-1]
        figures: Rep = {}
        for system in order:
            if system in missing:
                continue
            print(f"  {sync} repetition {rep + 1}/{args.repeat}: {system}", file=sys.stderr)
            redis_url = ""
            if system == "stem-redis" and redis is not None:
                server = redis.prepare(sync)
                redis_url = redis.url
            plan = WfPlan(
                system=system,
                workdir=str(root / f"{sync.lower()}_r{rep}_{system}"),
                synchronous=sync,
                n=args.n,
                m=args.m,
                steps=args.steps,
                warm_up=args.warm_up,
                concurrency=args.concurrency,
                redis_url=redis_url,
            )
            result = _run_system(plan, profile)
            raw.append({"repetition": rep, "system": system, **result})
            if not result["ok"]:
                print(f"  {system}: {result['reason']}", file=sys.stderr)
                if result.get("missing"):
                    missing.add(system)
                    reasons[system] = _short(result["reason"])
                else:
                    notes.setdefault(system, []).append(
                        f"repetition {rep + 1}: {_short(result['reason'])}"
                    )
                continue
            run = result["run"]
            versions[system] = run["version"]
            read_back.setdefault(system, {}).update(run["read_back"])
            if run.get("start_seconds") is not None:
                starts.setdefault(system, []).append(run["start_seconds"])
            for process, ms in run.get("cpu_ms", {}).items():
                cpu.setdefault(system, {}).setdefault(process, []).append(ms / 1000)
            if run.get("note"):
                notes.setdefault(system, []).append(f"repetition {rep + 1}: {run['note']}")
            figures[system] = _figures(run)
            shutil.rmtree(plan.workdir, ignore_errors=True)
        reps.append(figures)
    _check_durability(sync, read_back, server)
    failed = any(not r["ok"] and not r.get("missing") for r in raw)
    lines = _header(args, sync, here, server, read_back, versions)
    lines += ["", *_table(sync, here, reps, versions, reasons, notes, server, read_back)]
    lines += ["", *_targets(reps, here)]
    if starts:
        parts = [f"{s} {format_cell(v, 'ms')}" for s, v in starts.items()]
        lines += [
            "",
            f"- time to start the {args.n:,} workflows (in the throughput): " + "; ".join(parts),
        ]
    if cpu:
        parts = [
            f"{s} " + " + ".join(f"{p} {format_cell(v, 'ms')}" for p, v in by.items())
            for s, by in cpu.items()
        ]
        lines.append("- CPU time per workflow in the throughput, by process: " + "; ".join(parts))
    print("\n".join(lines))
    print()
    return {
        "failed": failed,
        "figures": reps,
        "versions": versions,
        "read_back": read_back,
        "redis_server": server,
        "not_run": reasons,
        "notes": notes,
        "cpu_seconds_per_workflow": cpu,
        "raw": raw,
    }


def _check_durability(
    sync: str, read_back: dict[str, dict[str, str]], server: dict[str, str]
) -> None:
    """Refuse figures taken at unequal durability (a setting read back that differs)."""
    for system in ("stem-sqlite", "dbos-sqlite"):
        seen = read_back.get(system, {})
        if seen.get("synchronous", sync) not in (sync, "unverified"):
            raise BenchError(
                f"{system} ran with synchronous={seen['synchronous']}, not {sync}: the "
                "figures would compare unequal durability"
            )
        if seen.get("journal_mode", "WAL") not in ("WAL", "unverified"):
            raise BenchError(f"{system}'s file is in journal mode {seen['journal_mode']}, not WAL")


def _short(reason: str) -> str:
    first = reason.strip().splitlines()[0] if reason.strip() else "failed"
    return first.replace("|", "/")


def _values(reps: Sequence[Rep], system: str, key: str) -> list[float]:
    return [r[system][key] for r in reps if key in r.get(system, {})]


def _durability(
    system: str, sync: str, server: dict[str, str], read_back: dict[str, dict[str, str]]
) -> str:
    seen = read_back.get(system, {})
    if system == "stem-redis":
        if not server:
            return "-"
        return f"AOF appendfsync {server['appendfsync']}, save '{server['save']}'"
    if not seen:
        return "-"
    return f"{seen.get('journal_mode', '?')}, synchronous {seen.get('synchronous', '?')}"


STORE = {
    "stem-sqlite": ("Stem", "SQLite"),
    "stem-redis": ("Stem", "Redis"),
    "dbos-sqlite": ("DBOS", "SQLite"),
    "dbos-shipped": ("DBOS", "SQLite, as shipped"),
}


def _table(
    sync: str,
    systems: Sequence[str],
    reps: Sequence[Rep],
    versions: dict[str, str],
    reasons: dict[str, str],
    notes: dict[str, list[str]],
    server: dict[str, str],
    read_back: dict[str, dict[str, str]],
) -> list[str]:
    head = "| system | store | durability (read back) | version | "
    head += " | ".join(label for _, label, _ in COLUMNS) + " | note |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 5)]
    for system in systems:
        name, store = STORE[system]
        cells = [format_cell(_values(reps, system, key), unit) for key, _, unit in COLUMNS]
        said = [reasons[system]] if system in reasons else []
        said += notes.get(system, [])
        if system == "stem-redis":
            said.append("DBOS has no Redis store: compared with DBOS on SQLite")
        note = "; ".join(said).replace("|", "/")
        durability = _durability(system, sync, server, read_back)
        lines.append(
            f"| {name} | {store} | {durability} | {versions.get(system, '-')} | "
            + " | ".join(cells)
            + f" | {note} |"
        )
    return lines


def _targets(reps: Sequence[Rep], systems: Sequence[str]) -> list[str]:
    lines = [
        "| Stem's target (vs DBOS on SQLite, same durability) | Stem | DBOS | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for system in ("stem-sqlite", "stem-redis"):
        if system not in systems:
            continue
        store = STORE[system][1]
        for label, key, target, at_least in TARGETS:
            unit = "ms" if key.startswith("p") else "rate"
            mine, theirs = [], []
            for rep in reps:
                a, b = rep.get(system, {}).get(key), rep.get("dbos-sqlite", {}).get(key)
                if a is not None and b is not None:
                    mine.append(a)
                    theirs.append(b)
            bound = f"{'>=' if at_least else '<='} {format_number(target, 'x')}x"
            if not mine:
                lines.append(f"| {label}, Stem on {store} | - | - | - | {bound} | not measured |")
                continue
            ratios = paired_ratios(mine, theirs)
            median = summarize(ratios).median
            met = median >= target if at_least else median <= target
            lines.append(
                f"| {label}, Stem on {store} | {format_cell(mine, unit)} | "
                f"{format_cell(theirs, unit)} | {format_cell(ratios, 'x')} | {bound} | "
                f"{'yes' if met else '**no**'} |"
            )
    return lines


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _header(
    args: argparse.Namespace,
    sync: str,
    systems: Sequence[str],
    server: dict[str, str],
    read_back: dict[str, dict[str, str]],
    versions: dict[str, str],
) -> list[str]:
    p = platform_settings()
    plan = WfPlan(
        system="", workdir="", synchronous=sync, steps=args.steps, concurrency=args.concurrency
    )
    lines = [
        f"Durable workflows at synchronous={sync}: Stem on SQLite and on Redis vs DBOS on SQLite "
        "(DBOS has no Redis store)",
        f"- a workflow of {args.steps} no-op steps (async, each result checkpointed); "
        f"throughput: N={args.n:,} started at once, first start to last completion; latency: "
        f"M={args.m:,} one at a time after {args.warm_up} warm-up, start to result, the "
        f"executor idle between (timeout {TRIP_TIMEOUT:g} s)",
        f"- R={args.repeat} repetitions, median (min-max); each system in a process of its "
        "own, the order reversed on every other repetition; fresh files (and an emptied "
        "Redis database) for each",
        f"- SQLite: WAL, synchronous={sync} for Stem and DBOS alike, read back from their "
        "connections (table); files on " + filesystem(str(args.tmp or tempfile.gettempdir())),
    ]
    if "stem-redis" in systems and server:
        where = args.redis_url or "started by the benchmark on a free loopback port"
        lines.append(
            f"- Redis: redis-server {server['version']} ({where}), appendonly="
            f"{server['appendonly']}, appendfsync {server['appendfsync']}, save "
            f"'{server['save']}' (appendfsync everysec matches synchronous=NORMAL, always "
            "matches FULL)"
        )
    for system in systems:
        module = _module(system)
        lines.append(
            f"- {STORE[system][0]} on {STORE[system][1]}: {module.settings(_for(plan, system))}"
        )
    lines.append(
        f"- Python {p['python']} ({p['implementation']}), SQLite {p['sqlite']}, stem-core "
        f"{p['stem-core']}, stem-sqlite {p['stem-sqlite']}, stem-redis {_version('stem-redis')}, "
        f"dbos {_version('dbos')}, SQLAlchemy {_version('sqlalchemy')}; {p['cpus']} CPUs, "
        f"{p['platform']}"
    )
    if args.profile:
        lines.append(f"- PROFILED under cProfile ({args.profile}): these figures are slowed down")
    return lines


def _for(plan: WfPlan, system: str) -> WfPlan:
    return WfPlan(**{**plan.to_json(), "system": system})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=500, help="workflows started at once (default 500)")
    parser.add_argument(
        "-m", type=int, default=100, help="sequential workflows for the latency (default 100)"
    )
    parser.add_argument("-r", "--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--sync",
        type=comma_choices(("normal", "full")),
        default=["normal"],
        help="SQLite synchronous levels, Redis fsync to match (default normal, Stem's default)",
    )
    parser.add_argument(
        "--systems",
        type=comma_choices(SYSTEMS),
        default=list(DEFAULT_SYSTEMS),
        help=f"which systems (default {','.join(DEFAULT_SYSTEMS)}; also dbos-shipped)",
    )
    parser.add_argument(
        "-c", "--concurrency", type=int, default=100, help="Stem worker concurrency (default 100)"
    )
    parser.add_argument("--steps", type=int, default=10, help="steps per workflow (default 10)")
    parser.add_argument("--warm-up", type=int, default=10, help="warm-up workflows (default 10)")
    parser.add_argument(
        "--redis-url",
        help="use this server instead of starting one (its database is flushed; its "
        "persistence is reported, not changed)",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--tmp", type=Path, help="directory for the database files")
    parser.add_argument(
        "--profile", type=Path, help="run under cProfile and keep the profiles in this directory"
    )
    args = parser.parse_args(argv)
    if min(args.n, args.m, args.repeat, args.steps, args.concurrency) < 1 or args.warm_up < 0:
        parser.error("-n, -m, -r, --steps and -c need at least 1, --warm-up at least 0")
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
        **platform_settings(),
        "dbos": _version("dbos"),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
