"""Stem on SQLite and SqliteHuey, each driven the way a careful user would drive it.

Each system gets fresh database files per repetition, a producer in this process and
worker processes of its own (``stem worker`` / ``huey_consumer``), both logging at
WARNING. The no-op task returns ``time.monotonic()``: the rates are computed afterwards
from those timestamps (see _measure), so nothing polls hard while a worker drains.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

from _measure import BenchError, rss_bytes

from stem import ConfigurationError, Stem, TaskState

__all__ = [
    "Plan",
    "SystemRun",
    "run_huey",
    "run_stem",
    "stem_accepts_synchronous",
]

#: A worker that makes no progress for this long is taken as stuck.
STALL_TIMEOUT = 60.0
#: Round trips run before the measured ones (connections opened, code paths warm).
WARM_UP_TRIPS = 10
_PRAGMA_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}

STEM_APP = '''\
"""A benchmark app written by tools/bench: a no-op task that returns when it ran."""
import time

from stem import Stem

URL = {url!r}
app = Stem.from_url(URL, backend=URL, workflow_store=URL)


@app.task(name="bench.noop")
async def noop(i: int) -> float:
    return time.monotonic()
'''

HUEY_APP = '''\
"""A benchmark app written by tools/bench: a no-op task that returns when it ran."""
import time

from huey import SqliteHuey
from huey.storage import SqliteStorage


class BenchStorage(SqliteStorage):
    # SqliteHuey's fsync= option offers FULL (True) or OFF (False) only: NORMAL needs
    # the pragma on each connection it opens, the worker's and the producer's alike.
    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("pragma synchronous = {synchronous}")
        return conn


huey = SqliteHuey("bench", filename={db!r}, storage_class=BenchStorage, journal_mode="wal")


@huey.task()
def noop(i):
    return time.monotonic()
'''


@dataclass(frozen=True, slots=True)
class Plan:
    """What to measure and how; the same for every system of one run."""

    n: int
    synchronous: str  # "FULL" or "NORMAL"
    measures: frozenset[str]
    batch: int = 100
    round_trips: int = 500
    concurrency: int = 100
    huey_workers: int = 1
    huey_poll: float = 0.001
    stem_options: tuple[tuple[str, str], ...] = ()
    stem_sync_in_url: bool = True


@dataclass(slots=True)
class SystemRun:
    """One repetition of one system; None or empty where a measure was not asked for."""

    enqueue_one: float | None = None
    enqueue_batched: float | None = None
    drain_stamps: list[float] = field(default_factory=list)
    drain_rss: tuple[int | None, int | None] = (None, None)
    round_trips: list[float] = field(default_factory=list)
    two_stamps: list[float] = field(default_factory=list)
    synchronous_seen: str = "unverified"
    journal_mode: str = "unverified"


# -- processes ----------------------------------------------------------------------------


class WorkerProcess:
    """A worker process, its output in a file; stopped (and killed if need be) on exit."""

    def __init__(self, name: str, cmd: Sequence[str], cwd: Path, stop_signal: int) -> None:
        self.name = name
        self.log = cwd / f"{name}.log"
        self._stop_signal = stop_signal
        # STEM_* variables of the caller's shell would point the worker elsewhere.
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEM_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd), env.get("PYTHONPATH")) if p)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with code {code}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self._stop_signal)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pause(elapsed: float) -> float:
    """How long to sleep between two progress checks: often at first, rarely in a long run
    (the checks count rows, and must not take the worker's CPU)."""
    return min(1.0, max(0.02, elapsed / 100))


def _load(path: Path) -> ModuleType:
    """Import the app module the workers import, under the same name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def journal_mode(path: Path) -> str:
    """The file's journal mode as stored in it (WAL is persistent), read from outside."""
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).upper()
    finally:
        conn.close()


# -- Stem -----------------------------------------------------------------------------------


def stem_accepts_synchronous() -> bool:
    """Whether stem-sqlite takes ``?synchronous=`` in its URL (the constructor opens nothing)."""
    try:
        app = Stem.from_url("sqlite:////nonexistent/stem-bench-probe.db?synchronous=full")
    except ConfigurationError:
        return False
    asyncio.run(app.aclose())
    return True


def stem_url(path: Path, plan: Plan) -> str:
    query = dict(plan.stem_options)
    if plan.stem_sync_in_url:
        query["synchronous"] = plan.synchronous.lower()
    return f"sqlite:///{path}" + (f"?{urlencode(query)}" if query else "")


def _read_synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


async def stem_synchronous(app: Stem) -> str:
    """PRAGMA synchronous on the connection stem-sqlite opened.

    Reached through private attributes, as a check only: if they change, the setting is
    reported as unverified rather than guessed.
    """
    try:
        db = await app.broker._client.db()  # type: ignore[attr-defined]
        value = await db.run(_read_synchronous)
    except Exception:
        return "unverified"
    return _PRAGMA_NAMES.get(value, str(value))


def _stem_worker(name: str, module: str, cwd: Path, plan: Plan) -> WorkerProcess:
    cmd = [sys.executable, "-m", "stem_cli", "worker", "--app", f"{module}:app"]
    cmd += ["-c", str(plan.concurrency), "-l", "warning"]
    return WorkerProcess(name, cmd, cwd, signal.SIGTERM)


async def _wait(
    remaining: Callable[[], Awaitable[int]], workers: Sequence[WorkerProcess]
) -> tuple[int | None, int | None]:
    """Wait until ``remaining()`` is 0; the first worker's RSS once it ran something, and at the end."""
    started = last_progress = time.monotonic()
    first_rss: int | None = None
    initial = previous = await remaining()
    while True:
        for w in workers:
            w.check()
        left = await remaining()
        now = time.monotonic()
        if left != previous:
            previous, last_progress = left, now
        if first_rss is None and left < initial:  # past start-up: it has run something
            first_rss = rss_bytes(workers[0].pid)
        if left == 0:
            last_rss = rss_bytes(workers[0].pid)
            return (first_rss if first_rss is not None else last_rss), last_rss
        if now - last_progress > STALL_TIMEOUT:
            logs = "\n".join(f"--- {w.name}:\n{w.tail()}" for w in workers)
            raise BenchError(f"no progress for {STALL_TIMEOUT:.0f} s ({left} left)\n{logs}")
        await asyncio.sleep(_pause(now - started))


async def _stem_stamps(app: Stem, ids: Sequence[str]) -> list[float]:
    stamps: list[float] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found = await app.backend.get_statuses(chunk)
        for tid in chunk:
            status = found.get(tid)
            if status is None or status.state is not TaskState.SUCCEEDED:
                raise BenchError(f"task {tid} did not succeed: {status!r}")
            stamps.append(float(status.value))
    return stamps


async def _stem_fill(app: Stem, noop: Any, n: int, batch: int) -> tuple[list[str], float]:
    started = time.perf_counter()
    ids: list[str] = []
    for start in range(0, n, batch):
        ids += await app.enqueue_many(noop.call(i) for i in range(start, min(n, start + batch)))
    return ids, n / (time.perf_counter() - started)


async def _stem_drain(app: Stem, workers: Sequence[WorkerProcess]) -> tuple[int | None, int | None]:
    async def remaining() -> int:
        stats = await app.broker.queue_stats("default")
        return stats.pending + stats.delayed + stats.inflight

    return await _wait(remaining, workers)


async def _stem_round_trips(app: Stem, noop: Any, count: int) -> list[float]:
    trips: list[float] = []
    for i in range(WARM_UP_TRIPS + count):
        started = time.perf_counter()
        tid = await noop.enqueue(i)
        result = await app.wait_for_task(tid, timeout=30)
        elapsed = time.perf_counter() - started
        if result.timed_out or result.status is None:
            raise BenchError(f"round trip {i}: no result within 30 s")
        if result.status.state is not TaskState.SUCCEEDED:
            raise BenchError(f"round trip {i}: the task ended {result.status.state}")
        if i >= WARM_UP_TRIPS:
            trips.append(elapsed)
    return trips


async def _run_stem(workdir: Path, plan: Plan) -> SystemRun:
    run = SystemRun()
    m = plan.measures
    if m & {"enqueue", "drain", "rtt"}:
        db = workdir / "stem-one.db"
        module_path = workdir / f"stem_app_{workdir.name}_one.py"
        module_path.write_text(STEM_APP.format(url=stem_url(db, plan)))
        mod = _load(module_path)
        app: Stem = mod.app
        try:
            ids: list[str] = []
            if "enqueue" in m:
                started = time.perf_counter()
                for i in range(plan.n):
                    ids.append(await mod.noop.enqueue(i))
                run.enqueue_one = plan.n / (time.perf_counter() - started)
            elif "drain" in m:
                ids, _ = await _stem_fill(app, mod.noop, plan.n, plan.batch)
            run.synchronous_seen = await stem_synchronous(app)
            if m & {"drain", "rtt"}:
                worker = _stem_worker("stem-worker", module_path.stem, workdir, plan)
                try:
                    if "drain" in m:
                        run.drain_rss = await _stem_drain(app, [worker])
                        run.drain_stamps = await _stem_stamps(app, ids)
                    if "rtt" in m:
                        run.round_trips = await _stem_round_trips(
                            app, mod.noop, min(plan.round_trips, plan.n)
                        )
                finally:
                    worker.stop()
        finally:
            await app.aclose()
        run.journal_mode = journal_mode(db)
    if m & {"batch", "two"}:
        db = workdir / "stem-batched.db"
        module_path = workdir / f"stem_app_{workdir.name}_batched.py"
        module_path.write_text(STEM_APP.format(url=stem_url(db, plan)))
        mod = _load(module_path)
        app = mod.app
        try:
            ids, rate = await _stem_fill(app, mod.noop, plan.n, plan.batch)
            if "batch" in m:
                run.enqueue_batched = rate
            if run.synchronous_seen == "unverified":
                run.synchronous_seen = await stem_synchronous(app)
            if "two" in m:
                workers = [
                    _stem_worker(f"stem-worker-{k}", module_path.stem, workdir, plan)
                    for k in (1, 2)
                ]
                try:
                    await _stem_drain(app, workers)
                    run.two_stamps = await _stem_stamps(app, ids)
                finally:
                    for w in workers:
                        w.stop()
        finally:
            await app.aclose()
        if run.journal_mode == "unverified":
            run.journal_mode = journal_mode(db)
    return run


def run_stem(workdir: Path, plan: Plan) -> SystemRun:
    """One repetition of every measure asked for, on fresh files under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run_stem(workdir, plan))


# -- Huey -----------------------------------------------------------------------------------


def _huey_consumer(name: str, module: str, cwd: Path, plan: Plan) -> WorkerProcess:
    poll = str(plan.huey_poll)
    cmd = [sys.executable, "-m", "huey.bin.huey_consumer", f"{module}.huey"]
    cmd += ["-w", str(plan.huey_workers), "-k", "thread", "-q", "-d", poll, "-m", poll]
    # SIGTERM stops the consumer at once; nothing runs by then.
    return WorkerProcess(name, cmd, cwd, signal.SIGTERM)


def _huey_app(workdir: Path, label: str, plan: Plan) -> tuple[ModuleType, Path]:
    db = workdir / f"huey-{label}.db"
    module_path = workdir / f"huey_app_{workdir.name}_{label}.py"
    module_path.write_text(HUEY_APP.format(db=str(db), synchronous=plan.synchronous))
    return _load(module_path), db


def _huey_drain(
    huey: Any, workers: Sequence[WorkerProcess], n: int
) -> tuple[int | None, int | None]:
    async def remaining() -> int:
        # The consumer deletes a task before it runs it: count results too.
        return int(huey.pending_count()) + max(0, n - int(huey.result_count()))

    return asyncio.run(_wait(remaining, workers))


def _huey_stamps(huey: Any, n: int) -> list[float]:
    values = [huey.serializer.deserialize(bytes(v)) for v in huey.storage.result_items().values()]
    stamps = [float(v) for v in values if isinstance(v, float)]
    if len(stamps) != n:
        raise BenchError(f"Huey stored {len(stamps)} results of {n} tasks")
    return stamps


def _huey_round_trips(noop: Any, count: int, poll: float) -> list[float]:
    trips: list[float] = []
    for i in range(WARM_UP_TRIPS + count):
        started = time.perf_counter()
        try:
            noop(i).get(blocking=True, timeout=30, max_delay=poll)
        except Exception as exc:  # ResultTimeout, or the task's error
            raise BenchError(f"round trip {i}: {type(exc).__name__}: {exc}") from exc
        if i >= WARM_UP_TRIPS:
            trips.append(time.perf_counter() - started)
    return trips


def run_huey(workdir: Path, plan: Plan) -> SystemRun:
    """One repetition of every measure asked for (Huey has no batched enqueue)."""
    workdir.mkdir(parents=True, exist_ok=True)
    run = SystemRun()
    m = plan.measures
    if m & {"enqueue", "drain", "rtt"}:
        mod, db = _huey_app(workdir, "one", plan)
        huey = mod.huey
        try:
            started = time.perf_counter()
            if m & {"enqueue", "drain"}:
                for i in range(plan.n):
                    mod.noop(i)
            if "enqueue" in m:
                run.enqueue_one = plan.n / (time.perf_counter() - started)
            run.synchronous_seen = _PRAGMA_NAMES.get(
                _read_synchronous(huey.storage.conn), "unverified"
            )
            if m & {"drain", "rtt"}:
                consumer = _huey_consumer("huey-consumer", mod.__name__, workdir, plan)
                try:
                    if "drain" in m:
                        run.drain_rss = _huey_drain(huey, [consumer], plan.n)
                        run.drain_stamps = _huey_stamps(huey, plan.n)
                    if "rtt" in m:
                        run.round_trips = _huey_round_trips(
                            mod.noop, min(plan.round_trips, plan.n), plan.huey_poll
                        )
                finally:
                    consumer.stop()
        finally:
            huey.storage.close()
        run.journal_mode = journal_mode(db)
    if "two" in m:
        mod, db = _huey_app(workdir, "two", plan)
        huey = mod.huey
        try:
            for i in range(plan.n):
                mod.noop(i)
            consumers = [
                _huey_consumer(f"huey-consumer-{k}", mod.__name__, workdir, plan) for k in (1, 2)
            ]
            try:
                _huey_drain(huey, consumers, plan.n)
                run.two_stamps = _huey_stamps(huey, plan.n)
            finally:
                for c in consumers:
                    c.stop()
        finally:
            huey.storage.close()
    return run
