"""Real `stem worker` processes sharing one SQLite file or one Redis server: killed, and
stopped with SIGTERM (each test runs on both: see ``stem_url`` in conftest.py)."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from _stem_procs import StemProcesses

from stem import Stem, TaskState
from stem.contracts import subscriber_queue

pytestmark = [pytest.mark.processes]

APP = """
import asyncio, os
from stem import Stem

app = Stem.from_url(os.environ["STEM_URL"], broadcast_queues=["news"])
RUNS = os.environ["RUNS_FILE"]
RELEASE = os.environ.get("RELEASE_FILE", "")
STALL_AFTER = int(os.environ.get("STALL_AFTER", "0"))
started = 0


def record(event, task_id):
    # One short O_APPEND write per line: lines from several processes never interleave.
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event} {task_id} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)


@app.task(name="work.step", visibility_timeout=2)
async def step(ctx, n: int) -> int:
    global started
    record("start", ctx.id)
    started += 1
    if STALL_AFTER and started > STALL_AFTER:  # held until the process is killed
        await asyncio.Event().wait()
    await asyncio.sleep(0.01)  # a little real work, so a kill lands mid-run
    return n


@app.task(name="work.news", queue="news")
async def news(ctx) -> None:
    record("start", ctx.id)


@app.task(name="work.gated", visibility_timeout=30)
async def gated(ctx, n: int) -> int:
    record("start", ctx.id)
    while not os.path.exists(RELEASE):  # held until the test lets it finish
        await asyncio.sleep(0.01)
    return n
"""


class Workers(StemProcesses):
    """`stem worker` processes on one app module, all killed at the end."""

    def __init__(self, root: Path, url: str) -> None:
        self.url = url
        self.runs = root / "runs.txt"
        self.release = root / "release"
        env = {"STEM_URL": url, "RUNS_FILE": str(self.runs), "RELEASE_FILE": str(self.release)}
        super().__init__(root, "proc_app", APP, env)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.spawn("worker", *args, env=env)

    def runs_by_task(self) -> dict[str, list[int]]:
        starts: dict[str, list[int]] = collections.defaultdict(list)
        if self.runs.exists():
            for line in self.runs.read_text().splitlines():
                event, task_id, pid = line.split()
                if event == "start":
                    starts[task_id].append(int(pid))
        return starts


@pytest.fixture
def workers(tmp_path: Path, stem_url: str) -> Iterator[Workers]:
    group = Workers(tmp_path, stem_url)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
async def producer(workers: Workers) -> AsyncIterator[Stem]:
    app = Stem.from_url(workers.url, broadcast_queues=["news"])
    yield app
    await app.aclose()


Eventually = Callable[..., Awaitable[None]]


@pytest.fixture
def eventually() -> Eventually:
    """Check a condition on shared state until it holds (other processes cannot send us events)."""

    async def wait(
        condition: Callable[[], Awaitable[bool]], timeout: float = 60.0, what: str = ""
    ) -> None:
        async with asyncio.timeout(timeout):
            while not await condition():  # noqa: ASYNC110 - polling the shared file is the only signal
                await asyncio.sleep(0.02)

    return wait


async def test_sigkill_of_one_of_three_workers_loses_nothing(
    workers: Workers, producer: Stem, eventually: Eventually
) -> None:
    # Given three worker processes on one file and a few thousand tasks; the first one
    # holds every task it starts after its 100th until it is killed (so it is surely
    # mid-task when it is, however loaded the machine)
    total, concurrency = 3000, 4
    stall = {"STALL_AFTER": "100"}
    procs = [
        workers.start(
            "-c", str(concurrency), "--heartbeat-interval", "1", env=stall if i == 0 else None
        )
        for i in range(3)
    ]
    ids: list[str] = []
    for start in range(0, total, 500):
        ids += await producer.enqueue_many(
            producer.call("work.step", [n]) for n in range(start, start + 500)
        )
    victim = procs[0]

    async def victim_is_mid_task() -> bool:
        # well into the run, and holding a task it started but will not finish
        mine = [t for t, pids in workers.runs_by_task().items() if victim.pid in pids]
        return len(mine) > 100

    # When one worker is killed with SIGKILL mid-run
    await eventually(victim_is_mid_task)
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    async def all_final() -> bool:
        statuses = await producer.backend.get_statuses(ids)
        return len(statuses) == total and all(s.state.is_final for s in statuses.values())

    # Then every task reaches a final state, all succeeded, nothing is left in the queue
    await eventually(all_final, timeout=120)
    statuses = await producer.backend.get_statuses(ids)
    assert {s.state for s in statuses.values()} == {TaskState.SUCCEEDED}
    assert sorted(statuses[i].value for i in ids) == list(range(total))
    stats = await producer.broker.queue_stats("default")
    assert (stats.pending, stats.inflight, stats.dead) == (0, 0, 0)
    # And only tasks the killed worker was holding ran twice: at most its concurrency,
    # each first started by the killed worker and finished by a survivor
    runs = workers.runs_by_task()
    assert set(runs) == set(ids)
    twice = {task_id: pids for task_id, pids in runs.items() if len(pids) > 1}
    assert 1 <= len(twice) <= concurrency
    assert all(len(pids) == 2 and pids[0] == victim.pid != pids[1] for pids in twice.values())
    assert all(statuses[t].worker and f":{victim.pid}:" not in statuses[t].worker for t in twice)
    survivors = {p.pid for p in procs[1:]}
    assert all(p.poll() is None for p in procs[1:]) and survivors


async def test_sigterm_finishes_running_tasks_and_returns_prefetched_ones(
    workers: Workers, producer: Stem, eventually: Eventually
) -> None:
    # Given a worker running two held tasks with four more prefetched
    proc = workers.start("-c", "2", "--prefetch", "4", "--grace-period", "60")
    ids = [await producer.enqueue("work.gated", [n]) for n in range(10)]

    async def two_running_four_held() -> bool:
        stats = await producer.broker.queue_stats("default")
        return len(workers.runs_by_task()) == 2 and stats.inflight == 6

    await eventually(two_running_four_held)
    running = set(workers.runs_by_task())

    # When it gets SIGTERM
    proc.send_signal(signal.SIGTERM)

    async def prefetched_returned() -> bool:
        stats = await producer.broker.queue_stats("default")
        return (stats.pending, stats.inflight) == (8, 2)

    # Then the prefetched messages go back at once, while the running two still run
    await eventually(prefetched_returned)
    assert proc.poll() is None
    workers.release.touch()
    # And the running two finish, and the process exits cleanly
    assert await asyncio.to_thread(proc.wait, 60) == 0
    statuses = await producer.backend.get_statuses(ids)
    assert {t for t, s in statuses.items() if s.state is TaskState.SUCCEEDED} == running
    stats = await producer.broker.queue_stats("default")
    assert (stats.pending, stats.inflight, stats.dead) == (8, 0, 0)
    log = workers.log_of(proc)
    assert "SIGTERM: finishing running tasks" in log and "stopped" in log


async def test_a_broadcast_reaches_every_live_worker_and_a_dead_ones_copies_are_reaped(
    workers: Workers, producer: Stem, eventually: Eventually
) -> None:
    # Given three worker processes consuming the broadcast queue "news"
    procs = [workers.start("-Q", "news", "--heartbeat-interval", "1") for _ in range(3)]

    async def live_subscribers() -> list[str]:
        return [s.subscriber for s in await producer.broker.subscriptions("news") if s.live]

    async def three_subscribed() -> bool:
        return len(await live_subscribers()) == 3

    await eventually(three_subscribed)
    # When five broadcasts are published
    ids = [await producer.enqueue("work.news", queue="news") for _ in range(5)]

    def ran_once_in_each(task_ids: list[str], pids: set[int]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            runs = workers.runs_by_task()
            return all(sorted(runs.get(i, [])) == sorted(pids) for i in task_ids)

        return check

    # Then each worker process runs each of them, once
    await eventually(ran_once_in_each(ids, {p.pid for p in procs}))
    # And when one worker is killed, the next broadcast reaches the two others
    victim = procs.pop(0)
    [victim_id] = [s for s in await live_subscribers() if f":{victim.pid}:" in s]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    last = await producer.enqueue("work.news", queue="news")
    await eventually(ran_once_in_each([last], {p.pid for p in procs}))

    # and the dead one's subscription is reaped (3 s after its last renewal, then 3 s
    # more), with the copy it will never run
    async def reaped() -> bool:
        subs = await producer.broker.subscriptions("news")
        return sorted(s.subscriber for s in subs) == sorted(await live_subscribers()) and (
            victim_id not in {s.subscriber for s in subs}
        )

    await eventually(reaped)
    stats = await producer.broker.queue_stats(subscriber_queue("news", victim_id))
    assert (stats.pending, stats.delayed, stats.inflight) == (0, 0, 0)
    assert victim.pid not in workers.runs_by_task()[last]
