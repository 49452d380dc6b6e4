"""DBOS Transact on its SQLite system database, in one process, as its docs launch it.

DBOS runs a workflow in the process that starts it (``DBOS.start_workflow_async``):
the harness's process is also DBOS's executor, so DBOS pays no hop between processes
and no queue, while Stem hands each run to a worker process through its broker.

Two settings of the SQLite file:
  dbos-sqlite   the same durability as Stem's row: WAL, and the ``synchronous`` of the
                run, set on each connection DBOS opens (an SQLAlchemy ``connect`` event
                added next to DBOS's own, which keep their IMMEDIATE transactions and
                busy timeout). DBOS has no option for it.
  dbos-shipped  DBOS as it ships: SQLite's rollback journal (DELETE) and
                ``synchronous=FULL`` (fsync of journal and file at every commit).
The settings are read back from DBOS's own connections and reported.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from importlib import metadata
from pathlib import Path
from typing import Any

from _measure import BenchError
from _systems import journal_mode
from _wf_common import WORKFLOW, NotInstalled, WfPlan, WfRun, latencies, throughput

NAME = "DBOS"

APP = '''\
"""A benchmark app written by tools/bench: a DBOS workflow of {steps} no-op steps."""
from dbos import DBOS


@DBOS.step()
async def noop(k: int) -> int:
    return k


@DBOS.workflow(name={workflow!r})
async def bench_steps(i: int) -> int:
    for k in range({steps}):
        await noop(k)
    return i
'''

_PRAGMA_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def settings(plan: WfPlan) -> str:
    if plan.system == "dbos-shipped":
        sqlite = "SQLite as DBOS ships it (journal_mode=DELETE, synchronous=FULL)"
    else:
        sqlite = (
            f"SQLite set to Stem's durability (journal_mode=WAL, synchronous="
            f"{plan.synchronous}, by a connect event on DBOS's engine)"
        )
    return (
        f"{sqlite}; 1 process, DBOS's own executor (DBOS.launch(), its defaults), "
        f"log_level WARNING, no admin server; `@DBOS.workflow` calling an async "
        f"`@DBOS.step` no-op {plan.steps} times; started with `DBOS.start_workflow_async`, "
        "result with `handle.get_result()`"
    )


def _set_pragmas(plan: WfPlan, seen: set[str]) -> None:
    """Set (dbos-sqlite) and read back (both) the journal and synchronous settings on
    every SQLite connection DBOS's SQLAlchemy engines open."""
    import sqlalchemy
    from sqlalchemy import event

    @event.listens_for(sqlalchemy.engine.Engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        if not isinstance(dbapi_conn, sqlite3.Connection):
            return
        if plan.system == "dbos-sqlite":
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute(f"PRAGMA synchronous={plan.synchronous}")
        value = int(dbapi_conn.execute("PRAGMA synchronous").fetchone()[0])
        seen.add(_PRAGMA_NAMES.get(value, str(value)))


async def _run(plan: WfPlan, config: Any, dbos: Any, app: Any) -> WfRun:
    DBOS = dbos.DBOS
    DBOS(config=config)
    DBOS.launch()  # in the event loop, as an asyncio app launches it
    try:
        return await _measure(plan, DBOS, app.bench_steps)
    finally:
        DBOS.destroy()


async def _measure(plan: WfPlan, DBOS: Any, workflow: Any) -> WfRun:
    out = WfRun(version=metadata.version("dbos"))

    async def trip(i: int) -> Any:
        handle = await DBOS.start_workflow_async(workflow, i)
        return await handle.get_result()

    out.latencies = await latencies(trip, plan.m, plan.warm_up)

    async def start(i: int) -> Any:
        return await DBOS.start_workflow_async(workflow, i)

    async def wait(handles: list[Any]) -> None:
        results = await asyncio.gather(*(h.get_result() for h in handles))
        if results != list(range(len(handles))):
            raise BenchError("DBOS returned other results than the workflows' own")

    async def ends(handles: list[Any]) -> list[float]:
        found = []
        for h in handles:
            status = await DBOS.get_workflow_status_async(h.workflow_id)
            if status is None or status.status != "SUCCESS" or status.updated_at is None:
                raise BenchError(f"DBOS workflow {h.workflow_id} did not succeed: {status!r}")
            found.append(status.updated_at / 1000)  # ms since the epoch
        return found

    await throughput(start, wait, ends, plan.n, {"process": os.getpid()}, out)
    return out


def run(plan: WfPlan, workdir: Path) -> WfRun:
    try:
        import dbos
    except ImportError as exc:
        raise NotInstalled(
            f"dbos is not installed ({exc}); run with `uv run --group bench-workflows`"
        ) from None
    from _redis_common import load_module, write_module

    seen: set[str] = set()
    _set_pragmas(plan, seen)
    source = APP.format(steps=plan.steps, workflow=WORKFLOW)
    app = load_module(write_module(workdir, f"dbos_wf_{plan.system.replace('-', '_')}", source))
    db = workdir / "dbos.sqlite"
    config: Any = {
        "name": "stem-bench",
        "system_database_url": f"sqlite:///{db}",
        "application_version": "bench",
        "log_level": "WARNING",
        "run_admin_server": False,
    }
    out = asyncio.run(_run(plan, config, dbos, app))
    out.read_back["synchronous"] = "/".join(sorted(seen)) or "unverified"
    out.read_back["journal_mode"] = journal_mode(db)
    return out
