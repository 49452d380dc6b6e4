"""Real ``stem worker`` processes on one SQLite file (or one Redis server), one SIGKILLed
every half second.

The shared harness of the kill -9 loop: ``tools/soak/kill_loop.py`` runs it for a
minute per pool, ``tests/processes/test_kill_loop.py`` for a few seconds. Every task
appends a ``start`` and a ``finish`` line to one file (one short ``O_APPEND`` write
per line, so lines from several processes never interleave and the file's order is
the order the writes happened); the harness appends a ``killed`` line once a killed
worker is dead. From that file and the result backend it counts what at-least-once
delivery cost: tasks run twice, tasks run twice *at the same time*, tasks lost.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from stem import Stem, TaskState, TaskStatus

__all__ = [
    "KILL_APP",
    "NOT_A_FILE",
    "POOLS",
    "RECORD",
    "Pool",
    "Report",
    "Run",
    "Settings",
    "WorkerGroup",
    "integrity_check",
    "overlapping",
    "pid_alive",
    "pool_args",
    "read_runs",
    "run_kill_loop",
    "wait_until",
]

Pool = Literal["async", "thread", "process"]
#: ``Report.integrity`` of a loop on a server: there is no file to check.
NOT_A_FILE = "-"
POOLS: tuple[Pool, ...] = ("async", "thread", "process")

#: The recording helper every test app embeds: ``record("start", ctx.id)``.
RECORD = """
def record(event, task_id):
    # One short O_APPEND write per line: lines from several processes never interleave,
    # and their order in the file is the order they were written.
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {task_id} {os.getpid()} {os.getppid()}\\n".encode())
    finally:
        os.close(fd)
"""

#: The kill loop's app: one async handler (async pool) and one plain one (thread and
#: process pools), each doing a few milliseconds of work so that kills land mid-run.
KILL_APP = (
    """
import asyncio, os, time
from stem import Stem, TaskContext

app = Stem.from_url(os.environ["STEM_URL"])
RUNS = os.environ["RUNS_FILE"]
WORK = float(os.environ["WORK_SECONDS"])
VISIBILITY = float(os.environ["VISIBILITY_TIMEOUT"])
"""
    + RECORD
    + """

@app.task(name="soak.step_async", visibility_timeout=VISIBILITY)
async def step_async(ctx: TaskContext, n: int) -> int:
    record("start", ctx.id)
    await asyncio.sleep(WORK)
    record("finish", ctx.id)
    return n


@app.task(name="soak.step_sync", visibility_timeout=VISIBILITY)
def step_sync(ctx: TaskContext, n: int) -> int:
    record("start", ctx.id)
    time.sleep(WORK)
    record("finish", ctx.id)
    return n
"""
)


# -- worker processes ------------------------------------------------------------------------


class WorkerGroup:
    """Starts ``stem worker --app <module>:app`` processes in ``root``, each logging to its own file.

    ``app_source`` is written to ``root/<module>.py``; the workers find the database in
    ``$STEM_URL`` (``url``, by default the SQLite file ``root/stem.db``) and the runs file
    in ``$RUNS_FILE`` (``root/runs.txt``).
    """

    def __init__(
        self,
        root: Path,
        app_source: str,
        *,
        module: str = "proc_app",
        env: dict[str, str] | None = None,
        url: str | None = None,
    ) -> None:
        self.root = root
        self.module = module
        self.db = root / "stem.db"
        self.runs = root / "runs.txt"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        (root / f"{module}.py").write_text(textwrap.dedent(app_source))
        # The CLI reads STEM_* options from the environment: keep the caller's out of it.
        clean = {k: v for k, v in os.environ.items() if not k.startswith("STEM_")}
        self.env = {
            **clean,
            "STEM_URL": url or f"sqlite:///{self.db}",
            "RUNS_FILE": str(self.runs),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: dict[int, tuple[Path, IO[bytes]]] = {}

    @property
    def url(self) -> str:
        return self.env["STEM_URL"]

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        path = self.logs / f"worker-{len(self.procs)}.log"
        log = path.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stem_cli", "worker", "--app", f"{self.module}:app", *args],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        self._logs[proc.pid] = (path, log)
        return proc

    def log_path(self, proc: subprocess.Popen[bytes]) -> Path:
        return self._logs[proc.pid][0]

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return self.log_path(proc).read_text(errors="replace")

    def exit_note(self, proc: subprocess.Popen[bytes]) -> str:
        """One line on a worker that exited on its own: its code and its last words."""
        last = self.log_of(proc).strip().splitlines()[-1:] or ["(nothing logged)"]
        return (
            f"worker {proc.pid} exited on its own with {proc.returncode}: {last[0]}"
            f" (log: {self.log_path(proc)})"
        )

    async def kill(self, proc: subprocess.Popen[bytes]) -> int | None:
        """SIGKILL ``proc``, wait until it is dead, and mark its death in the runs file.

        Returns the exit code if it had already exited on its own (None if we killed it).
        """
        code = proc.poll()
        if code is None:
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
        # Written once the process is dead: every line it wrote comes before this one.
        append_line(self.runs, f"killed - {proc.pid} 0")
        return code

    async def terminate_all(self, timeout: float) -> list[str]:
        """SIGTERM every live worker and wait for them; returns what went wrong (if anything).

        A worker that does not exit within ``timeout`` is SIGKILLed and reported, as is
        one that exits with a non-zero code.
        """
        live = [p for p in self.procs if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        problems: list[str] = []
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                await asyncio.to_thread(proc.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
                problems.append(f"worker {proc.pid} did not stop within {timeout:g}s of SIGTERM")
                continue
            if proc.returncode != 0:
                problems.append(f"worker {proc.pid} exited with {proc.returncode} after SIGTERM")
        return problems

    def close(self) -> None:
        """Kill whatever still runs and close the log files (safe to call twice)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for _, log in self._logs.values():
            log.close()


def pool_args(pool: Pool) -> list[str]:
    """The ``stem worker`` options for a pool: async handlers always run on the event loop."""
    return [] if pool == "async" else ["--pool", pool]


def append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not: nobody may reap an orphan in a container)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            text = stat.read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        state = text.rpartition(")")[2].split()[0]
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition`` (a check of shared state: files, /proc) until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


# -- the runs file -------------------------------------------------------------------------


@dataclass
class Run:
    """One execution of a task: the lines (by position in the runs file) that bound it."""

    task_id: str
    pid: int
    ppid: int
    start: int
    finish: int | None = None
    killed: int | None = None

    @property
    def end(self) -> float:
        """Where the run ended: its finish, else its worker's death, else never (open)."""
        if self.finish is not None:
            return self.finish
        if self.killed is not None:
            return self.killed
        return math.inf


def read_runs(path: Path) -> dict[str, list[Run]]:
    """The runs of every task, from ``start``/``finish`` lines and the harness's ``killed`` lines.

    A run with no finish ended when its worker was killed: the worker is its own pid
    (async and thread pools) or its parent (a process-pool child). If the child lives
    on and finishes anyway, its finish line wins: the run really went on.
    """
    runs: dict[str, list[Run]] = collections.defaultdict(list)
    open_runs: dict[int, list[Run]] = collections.defaultdict(list)  # by pid
    if not path.exists():
        return runs
    for index, line in enumerate(path.read_text().splitlines()):
        fields = line.split()
        if len(fields) != 4:
            continue
        event, task_id, pid, ppid = fields[0], fields[1], int(fields[2]), int(fields[3])
        if event == "start":
            run = Run(task_id, pid, ppid, index)
            runs[task_id].append(run)
            open_runs[pid].append(run)
        elif event == "finish":
            for run in reversed(open_runs[pid]):
                if run.task_id == task_id and run.finish is None:
                    run.finish = index
                    open_runs[pid].remove(run)
                    break
        elif event == "killed":
            for runs_of_pid in open_runs.values():
                for run in runs_of_pid:
                    if run.killed is None and pid in (run.pid, run.ppid):
                        run.killed = index
    return runs


def overlapping(runs: Sequence[Run]) -> bool:
    """Whether two runs by different processes overlapped: one started before the other ended."""
    return any(
        a is not b and a.pid != b.pid and a.start < b.start < a.end for a in runs for b in runs
    )


def integrity_check(db: Path) -> str:
    """``PRAGMA integrity_check`` of the file: ``"ok"`` or the problems it lists."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "; ".join(str(row[0]) for row in rows)


# -- the kill loop ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """One kill loop: how many tasks, for how long, on which pool and backend.

    Tasks are enqueued in small batches over the first 80% of the kill period, so that
    kills keep landing on running work until the end of it. ``url`` is where the workers
    meet: None for a SQLite file in the loop's directory.
    """

    pool: Pool
    tasks: int = 400
    seconds: float = 6.0
    workers: int = 3
    concurrency: int = 4
    kill_every: float = 0.5
    work: float = 0.02
    visibility_timeout: float = 2.0
    drain_timeout: float = 30.0
    stop_timeout: float = 15.0
    seed: int | None = None
    enqueue_over: float = 0.8
    url: str | None = None

    @property
    def task_name(self) -> str:
        return "soak.step_async" if self.pool == "async" else "soak.step_sync"

    def worker_args(self) -> list[str]:
        return [
            *pool_args(self.pool),
            "-c",
            str(self.concurrency),
            "--heartbeat-interval",
            "1",
            "-l",
            "warning",
        ]


@dataclass
class Report:
    """What one kill loop cost. ``ok`` when nothing was lost, nothing dead and the file is sound.

    ``integrity`` is ``PRAGMA integrity_check``'s verdict on a SQLite file, ``-`` on a server.
    """

    pool: Pool
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    run_twice: int = 0
    run_concurrently: int = 0
    lost: int = 0
    dead: int = 0
    kills: int = 0
    exited_on_their_own: int = 0
    duration: float = 0.0
    drain: float = 0.0
    integrity: str = ""
    left_in_queue: int = 0
    lost_ids: list[str] = field(default_factory=list)
    lost_details: list[str] = field(default_factory=list)
    concurrent_ids: list[str] = field(default_factory=list)
    dead_reasons: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.dead == 0 and self.integrity in ("ok", NOT_A_FILE)

    def describe(self) -> str:
        """A few lines for an assertion message or a log."""
        lines = [
            f"pool={self.pool} sent={self.sent} succeeded={self.succeeded} failed={self.failed}"
            f" run_twice={self.run_twice} run_concurrently={self.run_concurrently}"
            f" lost={self.lost} dead={self.dead} kills={self.kills}"
            f" exited_on_their_own={self.exited_on_their_own} left_in_queue={self.left_in_queue}"
            f" duration={self.duration:.1f}s drain={self.drain:.1f}s integrity={self.integrity}"
        ]
        if self.lost_ids:
            lines.append(f"lost: not final {self.drain:.0f}s after the kills; the first 5:")
            lines += self.lost_details
        if self.concurrent_ids:
            lines.append(f"run concurrently (first 5): {self.concurrent_ids[:5]}")
        if self.dead_reasons:
            lines.append(f"dead letters by reason: {self.dead_reasons}")
        lines += self.problems
        return "\n".join(lines)


async def run_kill_loop(
    root: Path, settings: Settings, *, say: Callable[[str], None] | None = None
) -> Report:
    """Run one kill loop in ``root`` (an empty directory) and count what it cost."""
    say = say or (lambda _: None)
    group = WorkerGroup(
        root,
        KILL_APP,
        module="kill_app",
        env={
            "WORK_SECONDS": str(settings.work),
            "VISIBILITY_TIMEOUT": str(settings.visibility_timeout),
        },
        url=settings.url,
    )
    report = Report(pool=settings.pool)
    rng = random.Random(settings.seed)
    producer = Stem.from_url(group.url)
    began = time.monotonic()
    sending = asyncio.ensure_future(_enqueue_spread(producer, settings))
    try:
        slots = [group.start(*settings.worker_args()) for _ in range(settings.workers)]
        # Pace the kills on the clock (this is the load, not a synchronisation). Each
        # kill is moved by up to 40% of the period, at random: kills at a fixed phase
        # would lock onto the enqueue batches and onto redeliveries (the visibility
        # timeout is a multiple of the period), and hit the same message every time.
        kills = int(settings.seconds / settings.kill_every + 1e-9)
        for number in range(1, kills + 1):
            jitter = rng.uniform(-0.4, 0.4) * settings.kill_every
            at = began + number * settings.kill_every + jitter
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            index = rng.randrange(len(slots))
            code = await group.kill(slots[index])
            if code is not None:
                report.exited_on_their_own += 1
                report.problems.append(group.exit_note(slots[index]))
            slots[index] = group.start(*settings.worker_args())
            report.kills += 1
            if report.kills % 20 == 0:
                say(f"  {settings.pool}: {report.kills} kills, {time.monotonic() - began:.0f}s")
        ids = await sending
        report.sent = len(ids)
        say(f"  {settings.pool}: kills done, waiting for {len(ids)} tasks to be final")
        kills_ended = time.monotonic()
        await _wait_final(producer, ids, settings.drain_timeout)
        report.drain = time.monotonic() - kills_ended
        report.left_in_queue = await _wait_queue_empty(
            producer, max(1.0, began + settings.seconds + settings.drain_timeout - time.monotonic())
        )
        for proc in slots:
            if proc.poll() is not None:
                report.exited_on_their_own += 1
                report.problems.append(group.exit_note(proc))
        # A worker restarted by the last kills may still be importing, and SIGTERM before
        # its handlers are installed kills it: wait for its first heartbeat.
        if not await _wait_ready(producer, [p.pid for p in slots if p.poll() is None], 15.0):
            report.problems.append("a restarted worker sent no heartbeat within 15s")
        report.problems += await group.terminate_all(settings.stop_timeout)
        report.duration = time.monotonic() - began
        statuses: dict[str, TaskStatus] = {}
        for chunk in _chunks(ids, 500):
            statuses.update(await producer.backend.get_statuses(chunk))
        _count_outcomes(report, ids, statuses)
        dead = await _dead_letters(producer, "default")
        report.dead = len(dead)
        report.dead_reasons = dict(collections.Counter(reason for reason in dead))
        if settings.url is not None and report.lost_ids:
            report.lost_details = await describe_statuses(producer, report.lost_ids[:5])
    finally:
        if not sending.done():
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        await producer.aclose()
        group.close()
    if settings.url is not None:
        report.integrity = NOT_A_FILE
    else:
        report.integrity = integrity_check(group.db)
    if settings.url is None and report.lost_ids:
        report.lost_details = describe_messages(group.db, report.lost_ids[:5])
    runs = read_runs(group.runs)
    report.run_twice = sum(1 for task_runs in runs.values() if len(task_runs) > 1)
    report.concurrent_ids = [
        task_id for task_id, task_runs in runs.items() if overlapping(task_runs)
    ]
    report.run_concurrently = len(report.concurrent_ids)
    never_ran = [i for i in ids if i not in runs]
    if never_ran:
        report.problems.append(f"tasks never started: {len(never_ran)}, e.g. {never_ran[:3]}")
    return report


async def _enqueue_spread(producer: Stem, settings: Settings) -> list[str]:
    """Enqueue ``settings.tasks`` tasks in batches, every quarter second over 80% of the kill period."""
    batches = max(1, int(settings.seconds * settings.enqueue_over / 0.25))
    sizes = [
        settings.tasks // batches + (1 if b < settings.tasks % batches else 0)
        for b in range(batches)
    ]
    ids: list[str] = []
    began = time.monotonic()
    for batch, size in enumerate(sizes):
        await asyncio.sleep(max(0.0, began + batch * 0.25 - time.monotonic()))
        if size:
            first = len(ids)
            ids += await producer.enqueue_many(
                producer.call(settings.task_name, [n]) for n in range(first, first + size)
            )
    return ids


async def _wait_final(producer: Stem, ids: Sequence[str], timeout: float) -> dict[str, TaskStatus]:
    """Poll the backend until every task is final or ``timeout`` passes; returns the final ones."""
    final: dict[str, TaskStatus] = {}
    remaining = list(ids)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        for chunk in _chunks(remaining, 500):
            statuses = await producer.backend.get_statuses(chunk)
            final.update((k, s) for k, s in statuses.items() if s.state.is_final)
        remaining = [i for i in remaining if i not in final]
        if remaining:
            await asyncio.sleep(0.2)
    return final


async def _wait_queue_empty(producer: Stem, timeout: float) -> int:
    """Wait until nothing is pending, delayed or leased (a late duplicate may still run); returns what is left."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await producer.broker.queue_stats("default")
        left = stats.pending + stats.delayed + stats.inflight
        if left == 0 or time.monotonic() >= deadline:
            return left
        await asyncio.sleep(0.2)


async def _wait_ready(producer: Stem, pids: Sequence[int], timeout: float) -> bool:
    """Wait until each of ``pids`` has sent a heartbeat (its signal handlers are in place)."""
    deadline = time.monotonic() + timeout
    while True:
        beating = {beat.pid for beat in await producer.backend.list_heartbeats()}
        if beating.issuperset(pids):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


def describe_messages(db: Path, ids: Sequence[str]) -> list[str]:
    """Where the messages of ``ids`` are in the SQLite queue table (to say why a task was lost)."""
    try:
        conn = sqlite3.connect(db)
        try:
            conn.row_factory = sqlite3.Row
            rows = {
                row["id"]: row
                for row in conn.execute(
                    "SELECT * FROM stem_messages WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(list(ids)),),
                )
            }
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [f"cannot read the queue table: {exc}"]
    now = time.time()
    lines = []
    for task_id in ids:
        row = rows.get(task_id)
        if row is None:
            lines.append(f"  {task_id}: no message in the queue")
            continue
        fields = dict(row)
        lease = fields.get("lease_until")
        leased = f", leased for {lease - now:.1f}s more" if isinstance(lease, float) else ""
        lines.append(
            f"  {task_id}: state={fields.get('state')} deliveries={fields.get('deliveries')}{leased}"
        )
    return lines


async def describe_statuses(producer: Stem, ids: Sequence[str]) -> list[str]:
    """What the result backend says of ``ids`` (where the queue is no file to look into)."""
    statuses = await producer.backend.get_statuses(list(ids))
    lines = []
    for task_id in ids:
        status = statuses.get(task_id)
        said = "no status" if status is None else f"status {status.state} by {status.worker}"
        lines.append(f"  {task_id}: {said}")
    return lines


async def _dead_letters(producer: Stem, queue: str) -> list[str]:
    """The reasons of every dead letter in ``queue``."""
    reasons: list[str] = []
    while True:
        page = await producer.broker.list_dead_letters(queue, limit=500, offset=len(reasons))
        reasons += [letter.reason for letter in page]
        if len(page) < 500:
            return reasons


def _count_outcomes(report: Report, ids: Sequence[str], statuses: dict[str, TaskStatus]) -> None:
    for task_id in ids:
        status = statuses.get(task_id)
        if status is None or not status.state.is_final:
            report.lost_ids.append(task_id)
        elif status.state is TaskState.SUCCEEDED:
            report.succeeded += 1
        else:
            report.failed += 1
    report.lost = len(report.lost_ids)


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
