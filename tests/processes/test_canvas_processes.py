"""Chords under real faults: `stem worker` processes on one SQLite file or one Redis
server (each test runs on both: see ``stem_url`` in conftest.py).

The producer is a process of its own that exits as soon as the chord is sent; the
worker running the last branch is killed with SIGKILL after storing the branch's result
and before sending the callback (held there by the app, see APP). The callback still
runs, exactly once. Every task appends a line to a shared runs file (one O_APPEND write
per line, so lines from several processes never interleave).
"""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from _stem_procs import StemProcesses

from stem import Stem, TaskState

pytestmark = [pytest.mark.processes]

APP = """
import asyncio, os
from stem import Stem

app = Stem.from_url(os.environ["STEM_URL"])
RUNS = os.environ["RUNS_FILE"]
HOLD_FILE = os.environ.get("HOLD_FILE", "")
HOLD_AT = os.environ.get("HOLD_AT", "")


def record(event, task_id):
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event} {task_id} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)


# A 2 s lease: a killed worker's message comes back within seconds.
@app.task(name="canvas.square", visibility_timeout=2)
async def square(ctx, n: int) -> int:
    record("branch", ctx.id)
    return n * n


@app.task(name="canvas.total", visibility_timeout=2)
async def total(ctx, values: list[int]) -> int:
    record("callback", ctx.id)
    return sum(values)


async def hold():
    # Tell the test where we are, then wait to be killed.
    with open(HOLD_FILE, "w") as f:
        f.write(str(os.getpid()))
    await asyncio.Event().wait()


if HOLD_AT:
    # The canvas step after a final status is stored, before the message is acked:
    # held before it starts (for the last branch), or after the chord is claimed.
    canvas = app._canvas
    real_after_final, real_dispatch = canvas.after_final, canvas.dispatch

    async def after_final(envelope, status, *, recovering=False):
        if HOLD_AT == "before-the-step" and envelope.group_id:
            group = await app.backend.get_group(envelope.group_id)
            if group is not None and len(group.results) == group.size - 1:
                await hold()
        await real_after_final(envelope, status, recovering=recovering)

    async def dispatch(items, *, recovering):
        if HOLD_AT == "after-the-claim":
            await hold()
        await real_dispatch(items, recovering=recovering)

    canvas.after_final, canvas.dispatch = after_final, dispatch
"""

PRODUCER = """
import asyncio, os
from stem import chord
from proc_app import app, square, total


async def main():
    handle = await app.apply(chord([square.call(n) for n in range(int(os.environ["BRANCHES"]))], total))
    print(handle.id, flush=True)
    os._exit(0)  # gone at once: nothing closed, nothing waited for


asyncio.run(main())
"""


class Processes(StemProcesses):
    """Worker processes (and a producer) on one app module; all stopped at the end."""

    def __init__(self, root: Path, url: str) -> None:
        self.runs_file = root / "runs.txt"
        self.hold = root / "held"
        env = {"STEM_URL": url, "RUNS_FILE": str(self.runs_file), "HOLD_FILE": str(self.hold)}
        super().__init__(root, "proc_app", APP, env)
        (root / "producer.py").write_text(textwrap.dedent(PRODUCER))

    def worker(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.spawn("worker", *args, env=env)

    def produce(self, branches: int) -> str:
        done = subprocess.run(
            [sys.executable, "producer.py"],
            cwd=self.root,
            env={**self.env, "BRANCHES": str(branches), "PYTHONPATH": str(self.root)},
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode().strip()

    def runs(self) -> dict[str, list[tuple[str, int]]]:
        """Each event ("branch", "callback") with the task id and pid of each run."""
        found: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
        if self.runs_file.exists():
            for line in self.runs_file.read_text().splitlines():
                event, task_id, pid = line.split()
                found[event].append((task_id, int(pid)))
        return found


@pytest.fixture
def processes(tmp_path: Path, stem_url: str) -> Iterator[Processes]:
    group = Processes(tmp_path, stem_url)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
async def reader(stem_url: str) -> AsyncIterator[Stem]:
    app = Stem.from_url(stem_url)
    yield app
    await app.aclose()


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Check shared state until it holds (other processes cannot send us events)."""
    async with asyncio.timeout(timeout):
        while not await condition():  # noqa: ASYNC110 - polling shared state is the only signal
            await asyncio.sleep(0.05)


async def succeeded(reader: Stem, task_id: str) -> bool:
    status = await reader.get_status(task_id)
    return status is not None and status.state is TaskState.SUCCEEDED


async def test_a_chord_completes_after_its_producer_exited(
    processes: Processes, reader: Stem
) -> None:
    # Given two workers, and a producer process that exits as soon as the chord is sent
    for _ in range(2):
        processes.worker("-c", "4")
    callback_id = processes.produce(branches=20)

    # Then the chord completes: the worker that stored the last branch sent the callback
    await eventually(lambda: succeeded(reader, callback_id))
    status = await reader.get_status(callback_id)
    assert status is not None and status.value == sum(n * n for n in range(20))
    runs = processes.runs()
    assert len(runs["branch"]) == 20
    assert [task_id for task_id, _ in runs["callback"]] == [callback_id]


@pytest.mark.parametrize("hold_at", ["before-the-step", "after-the-claim"])
async def test_the_last_branchs_worker_killed_before_sending_the_callback(
    processes: Processes, reader: Stem, hold_at: str
) -> None:
    # Given a worker that holds, once the last branch's result is stored, before the
    # callback is sent (before the canvas step, or after the chord's claim)
    victim = processes.worker("-c", "1", env={"HOLD_AT": hold_at})
    callback_id = processes.produce(branches=5)

    async def held() -> bool:
        return processes.hold.exists()

    await eventually(held)
    runs = processes.runs()
    assert len(runs["branch"]) == 5 and runs["callback"] == []
    last_branch = runs["branch"][-1][0]
    assert await succeeded(reader, last_branch)  # its result is stored

    # When it is killed with SIGKILL there, and another worker starts
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = processes.worker("-c", "4")

    # Then the branch's message comes back to the survivor, which finds the stored result
    # and sends the callback: the callback runs exactly once, and no branch ran twice
    await eventually(lambda: succeeded(reader, callback_id))
    await eventually(lambda: _queue_empty(reader))
    status = await reader.get_status(callback_id)
    assert status is not None and status.value == sum(n * n for n in range(5))
    runs = processes.runs()
    assert runs["callback"] == [(callback_id, survivor.pid)]
    branch_ids = [task_id for task_id, _ in runs["branch"]]
    assert len(branch_ids) == len(set(branch_ids)) == 5
    assert {pid for _, pid in runs["branch"]} == {victim.pid}


async def _queue_empty(reader: Stem) -> bool:
    stats = await reader.broker.queue_stats("default")
    return stats.pending == stats.inflight == stats.delayed == 0
