"""Stem's durable workflows on SQLite or Redis: the runs started here, executed by one
``stem worker`` process (the task ``stem.workflow.run``), as a user deploys them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from _measure import BenchError
from _systems import WorkerProcess, _pause, journal_mode, stem_synchronous
from _wf_common import WORKFLOW, NotInstalled, WfPlan, WfRun, latencies, throughput

NAME = "Stem"

APP = '''\
"""A benchmark app written by tools/bench: a workflow of {steps} no-op steps."""
from stem import Stem, WorkflowContext

app = Stem.from_url({url!r})


async def noop(k: int) -> int:
    return k


@app.workflow(name={workflow!r})
async def bench_steps(wf: WorkflowContext, i: int) -> int:
    for k in range({steps}):
        await wf.step(f"step{{k}}", noop, k)
    return i
'''

#: A throughput run that makes no progress for this long is taken as stuck.
STALL_TIMEOUT = 60.0


def settings(plan: WfPlan) -> str:
    store = "SQLite (one file: broker, results and workflow store)"
    if plan.system == "stem-redis":
        store = "Redis (broker, results and workflow store on the one server)"
    return (
        f"{store}; 1 `stem worker` process, concurrency {plan.concurrency}, -l warning; "
        f"`@app.workflow` script, {plan.steps} `await wf.step(name, noop, k)` (async no-op); "
        "started with `.start(i=...)` in the harness's process, latency waited with "
        "`app.wait_for_workflow`"
    )


def url_of(plan: WfPlan, workdir: Path) -> str:
    if plan.system == "stem-redis":
        return plan.redis_url
    return f"sqlite:///{workdir / 'stem.db'}?synchronous={plan.synchronous.lower()}"


async def _wait_done(app: Any, worker: WorkerProcess) -> None:
    """Wait until no run of the benchmark is pending or running.

    The checks read the oldest pending and the oldest running run only (one row each),
    so that the harness takes next to nothing from the worker it measures. A pair that
    stays the same for STALL_TIMEOUT is a stall.
    """
    from stem.contracts import RunStatus

    store = app.workflow_store
    began = last_progress = time.monotonic()
    previous: tuple[str, ...] = ()
    while True:
        worker.check()
        oldest: tuple[str, ...] = ()
        for status in (RunStatus.PENDING, RunStatus.RUNNING):
            oldest += tuple(
                r.id for r in await store.list_runs(workflow=WORKFLOW, status=status, limit=1)
            )
        now = time.monotonic()
        if not oldest:
            return
        if oldest != previous:
            previous, last_progress = oldest, now
        elif now - last_progress > STALL_TIMEOUT:
            raise BenchError(f"no workflow completed for {STALL_TIMEOUT:g} s:\n{worker.tail()}")
        await asyncio.sleep(_pause(now - began))


async def _finish_times(app: Any, ids: list[str]) -> list[float]:
    from stem.contracts import RunStatus

    ends: list[float] = []
    for run_id in ids:
        run = await app.workflow_store.get_run(run_id)
        if run is None or run.status is not RunStatus.COMPLETED or run.finished_at is None:
            raise BenchError(f"workflow run {run_id} did not complete: {run!r}")
        ends.append(run.finished_at)
    return ends


async def _check_steps(app: Any, ids: list[str], steps: int) -> None:
    for run_id in ids:
        found = await app.workflow_store.list_steps(run_id)
        if len(found) != steps:
            raise BenchError(f"workflow run {run_id} recorded {len(found)} steps, not {steps}")


async def _run(plan: WfPlan, workdir: Path) -> WfRun:
    from _redis_common import load_module, write_module

    out = WfRun(version=metadata.version("stem-core"))
    source = APP.format(url=url_of(plan, workdir), steps=plan.steps, workflow=WORKFLOW)
    path = write_module(workdir, f"stem_wf_{plan.system.replace('-', '_')}", source)
    mod = load_module(path)
    app, workflow = mod.app, mod.bench_steps
    cmd = [sys.executable]
    if os.environ.get("STEM_BENCH_PROFILE"):  # workflows.py --profile
        cmd += ["-m", "cProfile", "-o", os.environ["STEM_BENCH_PROFILE"]]
    cmd += ["-m", "stem_cli", "worker", "--app", f"{path.stem}:app"]
    cmd += ["-c", str(plan.concurrency), "-l", "warning"]
    worker = WorkerProcess("stem-worker", cmd, workdir, signal.SIGTERM)
    try:

        async def trip(i: int) -> Any:
            worker.check()
            result = await app.wait_for_workflow(await workflow.start(i=i), timeout=60)
            if not result.ok:
                raise BenchError(f"workflow {i} ended {result.status}: {result.error}")
            return result.value

        out.latencies = await latencies(trip, plan.m, plan.warm_up)
        if plan.system == "stem-sqlite":
            out.read_back["synchronous"] = await stem_synchronous(app)

        async def start(i: int) -> str:
            return str(await workflow.start(i=i))

        async def wait(ids: list[str]) -> None:
            await _wait_done(app, worker)

        async def ends(ids: list[str]) -> list[float]:
            return await _finish_times(app, ids)

        processes = {"worker": worker.pid, "harness": os.getpid()}
        await throughput(start, wait, ends, plan.n, processes, out)
        # Every run checkpointed each step once (outside the measured time).
        await _check_steps(app, [str(i) for i in await _bench_ids(app, plan)], plan.steps)
    finally:
        worker.stop()
        await app.aclose()
    if plan.system == "stem-sqlite":
        out.read_back["journal_mode"] = journal_mode(workdir / "stem.db")
    return out


async def _bench_ids(app: Any, plan: WfPlan) -> list[str]:
    from stem.contracts import RunStatus

    runs = await app.workflow_store.list_runs(
        workflow=WORKFLOW, status=RunStatus.COMPLETED, limit=plan.n + plan.m + plan.warm_up + 1
    )
    expected = plan.n + plan.m + plan.warm_up
    if len(runs) != expected:
        raise BenchError(f"{len(runs)} completed workflow runs are listed, not {expected}")
    return [r.id for r in runs]


def run(plan: WfPlan, workdir: Path) -> WfRun:
    try:
        from stem import Stem, UnknownSchemeError
    except ImportError as exc:
        raise NotInstalled(f"stem-core is not installed ({exc})") from None
    if plan.system == "stem-redis":
        try:
            probe = Stem.from_url("redis://127.0.0.1:1/0")  # builds the stores, connects nowhere
        except UnknownSchemeError:
            raise NotInstalled("the redis adapter (stem-redis) is not installed") from None
        asyncio.run(probe.aclose())
    return asyncio.run(_run(plan, workdir))
