"""The benchmarks in tools/bench keep working: each runs at a tiny size and says what it measured.

The figures of a run this small mean nothing; what is checked is that every measure
runs end to end (worker processes, the floor's copy of Stem's SQL, the JSON report)
and that the steady-state arithmetic is right. The Redis benchmark's peers are not in
the test environment (they are in the bench-redis dependency group): its tests run the
floor and the Stem row only. Likewise DBOS (bench-workflows): the workflow benchmark's
tests run the Stem rows only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from stem_adapter_tests import skip_or_fail

BENCH = Path(__file__).resolve().parent.parent / "tools" / "bench"


def _run(script: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEM_")}
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _measure() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_measure", BENCH / "_measure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_steady_rate_leaves_out_start_up_and_tail() -> None:
    m = _measure()
    # 101 tasks a millisecond apart, after a 5 s start-up gap and before a 5 s tail gap.
    stamps = [0.0] + [5.0 + i / 1000 for i in range(99)] + [15.0]
    assert m.steady_rate(stamps) == pytest.approx(1000, rel=0.01)
    assert m.window_rates([i / 100 for i in range(30)], 10) == pytest.approx([100, 100, 100])
    assert m.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)


@pytest.mark.slow
@pytest.mark.processes
def test_sqlite_vs_huey_runs_every_measure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    args = ["-n", "200", "-r", "1", "--sync", "normal", "--round-trips", "20"]
    args += ["--json", str(out), "--tmp", str(tmp_path)]
    if importlib.util.find_spec("huey") is None:
        args += ["--systems", "stem,floor"]
    done = _run("sqlite_vs_huey.py", *args, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| measure | synchronous | Stem | Huey | floor |" in done.stdout
    assert "synchronous NORMAL: stem=NORMAL" in done.stdout, (
        "the benchmark no longer reads stem-sqlite's synchronous setting back: "
        "update stem_synchronous() in tools/bench/_systems.py\n" + done.stdout
    )
    report = json.loads(out.read_text())
    figures = report["figures"]["NORMAL"]
    for key in ("enqueue_one", "enqueue_batched", "drain", "rtt_p50", "drain_two"):
        assert figures[key]["stem"][0] > 0, key
    for key in ("enqueue_one", "enqueue_batched", "drain"):
        assert figures[key]["floor"][0] > 0, key
    if "huey" in report["raw"]["NORMAL"]:
        for key in ("enqueue_one", "drain", "rtt_p50", "drain_two"):
            assert figures[key]["huey"][0] > 0, key
        assert report["read_back"]["NORMAL"]["huey"] == "NORMAL"


@pytest.mark.slow
def test_memory_drain_runs_both_handlers(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = _run("memory_drain.py", "-n", "200", "-r", "1", "--json", str(out), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| async def (event loop) |" in done.stdout
    assert "| def (thread pool) |" in done.stdout
    figures = json.loads(out.read_text())["figures"]
    assert figures["async"]["steady"][0] > 0
    assert figures["sync"]["steady"][0] > 0


def _redis_bench(systems: str, tmp_path: Path) -> dict[str, Any]:
    """Run redis_peers.py on its own server with tiny sizes; its JSON report."""
    import redis_server  # tools/ is on the path (tests/conftest.py)

    try:
        redis_server.find_binary()
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no redis-server for the Redis benchmark: {exc}")
    out = tmp_path / "figures.json"
    args = ["-n", "200", "-r", "1", "--round-trips", "20", "--systems", systems]
    done = _run("redis_peers.py", *args, "--json", str(out), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| system | version | enqueue one by one |" in done.stdout
    assert "| Stem's target |" in done.stdout
    report: dict[str, Any] = json.loads(out.read_text())
    floor = next(r for r in report["raw"] if r["system"] == "floor")
    assert floor["ok"], floor
    for key in ("enqueue_one", "enqueue_batched", "drain"):
        assert floor["figures"][key] > 0, key
    assert len(floor["figures"]["round_trips"]) == 20
    return report


@pytest.mark.slow
@pytest.mark.redis
def test_redis_bench_floor_runs(tmp_path: Path) -> None:
    report = _redis_bench("floor", tmp_path)
    assert report["server"]["save"] == "", "the benchmark's server must run without snapshots"
    assert report["server"]["appendonly"] == "no"


def _has_redis_adapter() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "redis" for ep in entry_points(group="stem.adapters"))


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.redis
def test_redis_bench_stem_row_runs(tmp_path: Path) -> None:
    report = _redis_bench("stem,floor", tmp_path)
    if not _has_redis_adapter():
        assert report["not_run"] == {"stem": "redis adapter not installed"}
        pytest.skip(
            "stem-redis registers no redis:// adapter yet, so the Stem row of "
            "tools/bench/redis_peers.py says 'Stem: redis adapter not installed'"
        )
    stem = next(r for r in report["raw"] if r["system"] == "stem")
    assert stem["ok"], stem
    for key in ("enqueue_one", "enqueue_batched", "drain"):
        assert stem["figures"][key] > 0, key
    assert len(stem["figures"]["round_trips"]) == 20


def _workflow_bench(systems: str, tmp_path: Path) -> dict[str, Any]:
    """Run workflows.py with tiny sizes on Stem only (DBOS is in the bench-workflows group,
    not in the test environment); its JSON report."""
    out = tmp_path / "figures.json"
    args = ["-n", "20", "-m", "5", "-r", "1", "--warm-up", "2", "--systems", systems]
    done = _run(
        "workflows.py", *args, "--json", str(out), "--tmp", str(tmp_path), tmp_path=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "| system | store | durability (read back) |" in done.stdout
    assert "| Stem's target (vs DBOS on SQLite, same durability) |" in done.stdout
    report: dict[str, Any] = json.loads(out.read_text())
    level = report["levels"]["NORMAL"]
    for system in systems.split(","):
        run = next(r for r in level["raw"] if r["system"] == system)
        assert run["ok"], run
        assert run["run"]["throughput"] > 0
        assert len(run["run"]["latencies"]) == 5
    return level


@pytest.mark.slow
@pytest.mark.processes
def test_workflow_bench_stem_on_sqlite_runs(tmp_path: Path) -> None:
    level = _workflow_bench("stem-sqlite", tmp_path)
    assert level["read_back"]["stem-sqlite"] == {"synchronous": "NORMAL", "journal_mode": "WAL"}


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.redis
def test_workflow_bench_stem_on_redis_runs(tmp_path: Path) -> None:
    import redis_server  # tools/ is on the path (tests/conftest.py)

    try:
        redis_server.find_binary()
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no redis-server for the workflow benchmark: {exc}")
    level = _workflow_bench("stem-redis", tmp_path)
    server = level["redis_server"]
    assert (server["appendonly"], server["appendfsync"]) == ("yes", "everysec")
