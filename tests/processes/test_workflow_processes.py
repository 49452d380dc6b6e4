"""Durable workflows under real faults: `stem worker` processes running scripts on one
SQLite file or one Redis server (each test runs on both: see ``stem_url`` in conftest.py)
are killed with SIGKILL mid-step, or stopped with SIGTERM while a run waits for an event.

The workers' app gives runs a 2 s lease, so a dead worker's runs are taken over within
seconds. Every step function appends a line to a shared runs file (one O_APPEND write
per line, so lines from several processes never interleave), which counts how often each
step ran and in which process.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from _stem_procs import StemProcesses

from stem import Stem
from stem.contracts import RunStatus

pytestmark = [pytest.mark.processes]

APP = """
import asyncio, os
from datetime import timedelta
from stem import Stem, WorkflowContext

app = Stem.from_url(os.environ["STEM_URL"])
# Short leases, so that a dead worker's runs are taken over within seconds.
app.workflows.lease = float(os.environ.get("WF_LEASE", "2"))
app.workflows.redispatch_after = float(os.environ.get("WF_REDISPATCH_AFTER", "1"))
RUNS = os.environ["RUNS_FILE"]
HOLD_STEP = os.environ.get("HOLD_STEP", "")
HOLD_AFTER = int(os.environ.get("HOLD_AFTER", "0"))
started = 0


def record(event, run_id, step):
    # One short O_APPEND write per line: lines from several processes never interleave.
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event} {run_id} {step} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)


async def work(run_id: str, step: str, n: int) -> int:
    global started
    record("start", run_id, step)
    started += 1
    if step == HOLD_STEP or (HOLD_AFTER and started > HOLD_AFTER):
        await asyncio.Event().wait()  # held in this process until it is killed
    record("end", run_id, step)
    return n * n


@app.workflow(name="wf.steps")
async def steps(wf: WorkflowContext, count: int) -> list[int]:
    return [await wf.step(f"s{i}", work, wf.run_id, f"s{i}", i) for i in range(count)]


@app.workflow(name="wf.waiter")
async def waiter(wf: WorkflowContext, topic: str) -> dict:
    await wf.step("before", work, wf.run_id, "before", 1)
    payload = await wf.wait_for_event(topic, timeout=timedelta(minutes=10))
    await wf.step("after", work, wf.run_id, "after", 2)
    return {"payload": payload}
"""


HEARTBEAT = ("--heartbeat-interval", "1")


class Workers(StemProcesses):
    """`stem worker` processes on one app module, all killed at the end."""

    def __init__(self, root: Path, url: str) -> None:
        super().__init__(
            root, "wf_app", APP, {"STEM_URL": url, "RUNS_FILE": str(root / "runs.txt")}
        )
        self.url = url
        self.runs = root / "runs.txt"

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.spawn("worker", *HEARTBEAT, *args, env=env)

    def starts(self) -> dict[tuple[str, str], list[int]]:
        """The pids that started each (run, step), in the order they did."""
        found: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
        if self.runs.exists():
            for line in self.runs.read_text().splitlines():
                event, run_id, step, pid = line.split()
                if event == "start":
                    found[run_id, step].append(int(pid))
        return found


@pytest.fixture
def workers(tmp_path: Path, stem_url: str) -> Iterator[Workers]:
    group = Workers(tmp_path, stem_url)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
async def producer(workers: Workers) -> AsyncIterator[Stem]:
    """The test's own app on the workers' stores: it starts runs and sends events, but
    runs nothing (it has no workflow registered and no worker)."""
    app = Stem.from_url(workers.url)
    yield app
    await app.aclose()


async def until(
    condition: Callable[[], Awaitable[bool]],
    what: str,
    workers: Workers,
    *,
    timeout: float = 60.0,
    every: float = 0.05,
) -> None:
    """Poll shared state (other processes cannot send us events) until ``condition``
    holds; fail naming ``what`` and showing the workers' logs if it does not in time."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not so after {timeout:g} s\n{workers.logs()}")
        await asyncio.sleep(every)


async def test_a_run_killed_mid_step_is_taken_over_and_completed_by_another_worker(
    workers: Workers, producer: Stem
) -> None:
    # Given a worker running a five-step script, held in its third step
    victim = workers.start("-c", "4", env={"HOLD_STEP": "s2"})
    run_id = await producer.start_workflow("wf.steps", {"count": 5})

    async def victim_in_step_2() -> bool:
        return workers.starts().get((run_id, "s2")) == [victim.pid]

    await until(victim_in_step_2, "the first worker starting step s2", workers)
    run = await producer.workflows.store.get_run(run_id)
    assert run is not None and run.status is RunStatus.RUNNING and run.cursor == 2
    assert run.lease_owner is not None

    # When it is killed with SIGKILL there, and a second worker starts
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = workers.start("-c", "4")

    # Then the second worker takes the run over after the lease, and completes it
    result = await producer.wait_for_workflow(run_id, timeout=60)
    assert not result.timed_out, f"the run was not taken over in 60 s\n{workers.logs()}"
    assert result.status is RunStatus.COMPLETED, result.error
    assert result.value == [0, 1, 4, 9, 16]
    # every completed step ran once, the interrupted one twice (killed, then again)
    assert workers.starts() == {
        (run_id, "s0"): [victim.pid],
        (run_id, "s1"): [victim.pid],
        (run_id, "s2"): [victim.pid, survivor.pid],
        (run_id, "s3"): [survivor.pid],
        (run_id, "s4"): [survivor.pid],
    }
    steps = await producer.workflows.store.list_steps(run_id)
    assert [(s.position, s.name, s.value) for s in steps] == [(i, f"s{i}", i * i) for i in range(5)]
    assert survivor.poll() is None


async def test_a_worker_stopped_mid_step_hands_its_run_back_at_once(
    workers: Workers, producer: Stem
) -> None:
    # Given a worker held in a script's third step, with leases of ten minutes (so
    # only a hand-back, not a lease's end, lets another worker have the run soon)
    long_lease = {"WF_LEASE": "600"}
    first = workers.start("-c", "4", "--grace-period", "0.5", env={**long_lease, "HOLD_STEP": "s2"})
    run_id = await producer.start_workflow("wf.steps", {"count": 5})

    async def first_in_step_2() -> bool:
        return workers.starts().get((run_id, "s2")) == [first.pid]

    await until(first_in_step_2, "the first worker starting step s2", workers)

    # When it is stopped with SIGTERM, its grace period too short for the step
    first.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 60) == 0, workers.logs()

    # Then a second worker takes the run over at once (not in ten minutes) and completes it
    second = workers.start("-c", "4", env=long_lease)
    result = await producer.wait_for_workflow(run_id, timeout=15)
    assert not result.timed_out, (
        f"the run was not handed back on SIGTERM: {result.run}\n{workers.logs()}"
    )
    assert result.status is RunStatus.COMPLETED, result.error
    assert result.value == [0, 1, 4, 9, 16]
    assert workers.starts() == {
        (run_id, "s0"): [first.pid],
        (run_id, "s1"): [first.pid],
        (run_id, "s2"): [first.pid, second.pid],
        (run_id, "s3"): [second.pid],
        (run_id, "s4"): [second.pid],
    }


@pytest.mark.parametrize("how", ["emit_event", "send_event"])
async def test_an_event_given_while_no_worker_runs_resumes_the_run_when_one_starts(
    workers: Workers, producer: Stem, how: str
) -> None:
    # Given a run suspended on a topic, and its worker stopped with SIGTERM
    topic = f"orders.paid.{uuid.uuid4().hex[:8]}"
    first = workers.start("-c", "4")
    run_id = await producer.start_workflow("wf.waiter", {"topic": topic})
    store = producer.workflows.store

    async def waiting() -> bool:
        return await store.runs_waiting_on(topic) == [run_id]

    await until(waiting, f"the run waiting on {topic}", workers)
    first.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 60) == 0, workers.logs()
    run = await store.get_run(run_id)
    assert run is not None and run.status is RunStatus.SUSPENDED and run.lease_owner is None

    # When the event comes while no worker runs
    payload = {"order": 7, "paid": True}
    if how == "emit_event":
        assert await producer.emit_event(topic, payload) == [run_id]
    else:
        assert await producer.send_event(run_id, topic, payload) is True
    run = await store.get_run(run_id)
    assert run is not None and run.status is RunStatus.PENDING
    assert run.resume is not None and run.resume.payload == payload
    assert await store.runs_waiting_on(topic) == []

    # Then a worker started afterwards resumes the run with that payload, to its end
    second = workers.start("-c", "4")
    result = await producer.wait_for_workflow(run_id, timeout=60)
    assert not result.timed_out, f"the run did not resume in 60 s\n{workers.logs()}"
    assert result.status is RunStatus.COMPLETED, result.error
    assert result.value == {"payload": payload}
    assert workers.starts() == {
        (run_id, "before"): [first.pid],
        (run_id, "after"): [second.pid],
    }
    steps = await store.list_steps(run_id)
    assert [(s.name, s.kind) for s in steps] == [
        ("before", "step"),
        (topic_label(topic), "event"),
        ("after", "step"),
    ]
    assert steps[1].value == {"payload": payload}


def topic_label(topic: str) -> str:
    return f"event:{topic}"


async def test_an_event_sent_to_a_run_before_any_worker_runs_is_taken_at_its_wait(
    workers: Workers, producer: Stem
) -> None:
    # Given a run started while no worker runs, and an event sent to it at once
    topic = f"orders.paid.{uuid.uuid4().hex[:8]}"
    run_id = await producer.start_workflow("wf.waiter", {"topic": topic})
    payload = {"order": 8}
    assert await producer.send_event(run_id, topic, payload) is True
    store = producer.workflows.store
    run = await store.get_run(run_id)
    assert run is not None and run.status is RunStatus.PENDING and run.cursor == 0
    assert await store.runs_waiting_on(topic) == []

    # When a worker starts
    proc = workers.start("-c", "4")

    # Then the run's wait takes the kept event when it gets there, and the run completes
    result = await producer.wait_for_workflow(run_id, timeout=60)
    assert not result.timed_out, f"the run did not complete in 60 s\n{workers.logs()}"
    assert result.status is RunStatus.COMPLETED, result.error
    assert result.value == {"payload": payload}
    assert workers.starts() == {
        (run_id, "before"): [proc.pid],
        (run_id, "after"): [proc.pid],
    }
    steps = await store.list_steps(run_id)
    assert [s.name for s in steps] == ["before", topic_label(topic), "after"]
    assert steps[1].value == {"payload": payload}


async def test_many_runs_survive_the_kill_of_one_of_two_workers(
    workers: Workers, producer: Stem
) -> None:
    # Given two workers running many ten-step scripts; the first one holds every step it
    # starts after its share of a quarter of them, until it is killed (so it surely dies
    # mid-step, however loaded the machine is). -c 10 to 200 all take 4 to 6 s a backend
    # here; at 50 the victim's in-flight runs are a twentieth of all.
    runs, count, concurrency = 1000, 10, 50
    hold_after = runs * count // 4
    t0 = time.monotonic()
    victim = workers.start("-c", str(concurrency), env={"HOLD_AFTER": str(hold_after)})
    survivor = workers.start("-c", str(concurrency))
    ids: list[str] = []
    for first in range(0, runs, 100):
        ids += await asyncio.gather(
            *(
                producer.start_workflow("wf.steps", {"count": count})
                for _ in range(first, min(first + 100, runs))
            )
        )
    t_started = time.monotonic()

    async def victim_mid_step() -> bool:
        return sum(victim.pid in pids for pids in workers.starts().values()) > hold_after

    # When it is killed with SIGKILL midway
    await until(victim_mid_step, "the first worker holding a step", workers, every=0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    t_killed = time.monotonic()
    store = producer.workflows.store
    done_at_kill = len(await store.list_runs(status=RunStatus.COMPLETED, limit=runs + 1))

    async def all_completed() -> bool:
        done = await store.list_runs(
            workflow="wf.steps", status=RunStatus.COMPLETED, limit=runs + 1
        )
        return len(done) == runs

    # Then every run completes, with the right result
    await until(all_completed, f"all {runs} runs completed", workers, timeout=90, every=0.5)
    t_done = time.monotonic()
    expected = [i * i for i in range(count)]
    for run_id in ids:
        result = await producer.wait_for_workflow(run_id, timeout=0)
        assert (result.status, result.value) == (RunStatus.COMPLETED, expected), run_id
    # with each step checkpointed once: ten distinct positions per run, in order
    for run_id in ids:
        steps = await store.list_steps(run_id)
        assert [(s.position, s.name, s.value) for s in steps] == [
            (i, f"s{i}", i * i) for i in range(count)
        ], run_id
    # and every step's function ran once, but those the killed worker was in: twice,
    # first there and then in the survivor
    starts = workers.starts()
    assert set(starts) == {(r, f"s{i}") for r in ids for i in range(count)}
    twice = {key: pids for key, pids in starts.items() if len(pids) > 1}
    assert 1 <= len(twice) <= concurrency
    assert all(pids == [victim.pid, survivor.pid] for pids in twice.values()), twice
    assert survivor.poll() is None
    print(
        f"{runs} runs x {count} steps: started in {t_started - t0:.1f}s, killed at "
        f"{t_killed - t0:.1f}s ({done_at_kill} runs done), all done at {t_done - t0:.1f}s; "
        f"{len(twice)} steps ran twice"
    )
