"""Issue 7's worker defects that need a real ``stem worker`` process (items 2, 4, 10 and 12)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kill_harness import (
    RECORD,
    Pool,
    WorkerGroup,
    overlapping,
    pid_alive,
    pool_args,
    read_runs,
    wait_until,
)

from stem import Stem, TaskState, TaskStatus

pytestmark = [pytest.mark.sqlite, pytest.mark.processes]

APP = (
    """
import argparse, asyncio, os, time
from stem import Stem, TaskContext

app = Stem.from_url(os.environ["STEM_URL"])
RUNS = os.environ["RUNS_FILE"]
RELEASE = os.environ["RELEASE_FILE"]
"""
    + RECORD
    + """

@app.task(name="defect.short_lease", visibility_timeout=1)
async def short_lease(ctx: TaskContext) -> str:
    record("start", ctx.id)
    await asyncio.sleep(3)  # the work: three times the lease
    record("finish", ctx.id)
    return "done"


@app.task(name="defect.argparse_exit_async")
async def argparse_exit_async(ctx: TaskContext) -> None:
    record("start", ctx.id)
    argparse.ArgumentParser(prog="report").parse_args(["--no-such-flag"])  # SystemExit(2)


@app.task(name="defect.interrupt_async")
async def interrupt_async(ctx: TaskContext) -> None:
    record("start", ctx.id)
    raise KeyboardInterrupt


@app.task(name="defect.argparse_exit_sync")
def argparse_exit_sync(ctx: TaskContext) -> None:
    record("start", ctx.id)
    argparse.ArgumentParser(prog="report").parse_args(["--no-such-flag"])  # SystemExit(2)


@app.task(name="defect.interrupt_sync")
def interrupt_sync(ctx: TaskContext) -> None:
    record("start", ctx.id)
    raise KeyboardInterrupt


@app.task(name="defect.plain_async")
async def plain_async(ctx: TaskContext) -> str:
    record("start", ctx.id)
    return "fine"


@app.task(name="defect.plain_sync")
def plain_sync(ctx: TaskContext) -> str:
    record("start", ctx.id)
    return "fine"


@app.task(name="defect.held_at_consume", visibility_timeout=2)
async def held_at_consume(ctx: TaskContext) -> str:
    record("start", ctx.id)
    return "fine"


@app.hooks.on("on_consume")
async def hold_first_delivery(envelope, delivery) -> None:
    # Holds the worker between reserving a message and running its task, so that
    # the test can kill it there.
    if envelope.task == "defect.held_at_consume" and delivery.deliveries == 1:
        record("consumed", envelope.id)
        while not os.path.exists(RELEASE):
            await asyncio.sleep(0.01)


@app.task(name="defect.gated_sync", visibility_timeout=2)
def gated_sync(ctx: TaskContext) -> str:
    record("start", ctx.id)
    deadline = time.monotonic() + 60
    while not os.path.exists(RELEASE) and time.monotonic() < deadline:  # held until released
        time.sleep(0.01)
    record("finish", ctx.id)
    return "released"
"""
)


class Group(WorkerGroup):
    def __init__(self, root: Path) -> None:
        self.release = root / "release"
        super().__init__(root, APP, env={"RELEASE_FILE": str(root / "release")})


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Group]:
    group = Group(tmp_path)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
async def producer(workers: Group) -> AsyncIterator[Stem]:
    app = Stem.from_url(workers.url)
    yield app
    await app.aclose()


async def wait_final(
    producer: Stem,
    ids: list[str],
    timeout: float,
    *,
    unless: subprocess.Popen[bytes] | None = None,
) -> dict[str, TaskStatus]:
    """Poll the backend until every task is final (or ``unless`` exits, or the time is up)."""
    statuses: dict[str, TaskStatus] = {}
    deadline = time.monotonic() + timeout
    while True:
        statuses.update(await producer.backend.get_statuses(ids))
        if len(statuses) == len(ids) and all(s.state.is_final for s in statuses.values()):
            return statuses
        if (unless is not None and unless.poll() is not None) or time.monotonic() >= deadline:
            return statuses
        await asyncio.sleep(0.05)  # polling shared state: other processes cannot send us events


async def queue_drained(producer: Stem, timeout: float) -> bool:
    """Wait until nothing is pending, delayed or leased in the default queue."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await producer.broker.queue_stats("default")
        if stats.pending + stats.delayed + stats.inflight == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)


def delete_database(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def starts(workers: Group) -> dict[str, list[int]]:
    return {task_id: [r.pid for r in runs] for task_id, runs in read_runs(workers.runs).items()}


# -- item 2: lease renewal misses short leases ------------------------------------------------


async def test_short_lease_on_a_long_task_is_renewed_so_it_runs_once(
    workers: Group, producer: Stem
) -> None:
    # Given two workers on one file and a task whose 1 s lease is a third of its run
    for _ in range(2):
        workers.start("-c", "2", "--heartbeat-interval", "1")
    ids = [await producer.enqueue("defect.short_lease") for _ in range(2)]

    # When it runs to the end
    statuses = await wait_final(producer, ids, timeout=40)
    drained = await queue_drained(producer, timeout=20)  # a redelivered copy would still be there

    # Then each ran exactly once, succeeded, and was never dead-lettered as poison
    ran = starts(workers)
    assert {i: len(ran.get(i, [])) for i in ids} == dict.fromkeys(ids, 1), ran
    assert {statuses[i].state for i in ids} == {TaskState.SUCCEEDED}
    assert drained
    assert await producer.broker.list_dead_letters("default") == []
    again = await producer.backend.get_statuses(ids)
    assert {again[i].state for i in ids} == {TaskState.SUCCEEDED}


# -- item 4: SystemExit / KeyboardInterrupt in a handler --------------------------------------


@pytest.mark.parametrize("pool", ["async", "thread", "process"])
async def test_system_exit_and_keyboard_interrupt_are_task_failures(
    pool: Pool, workers: Group, producer: Stem
) -> None:
    # Given a worker running one task at a time, and handlers that raise SystemExit(2)
    # (argparse on bad input) and KeyboardInterrupt, followed by a plain task
    worker = workers.start(*pool_args(pool), "-c", "1", "--heartbeat-interval", "1")
    kind = "async" if pool == "async" else "sync"
    exits = await producer.enqueue(f"defect.argparse_exit_{kind}")
    interrupted = await producer.enqueue(f"defect.interrupt_{kind}")
    plain = await producer.enqueue(f"defect.plain_{kind}")

    # When it runs them
    statuses = await wait_final(producer, [exits, interrupted, plain], timeout=30, unless=worker)

    # Then the worker is still running and still consuming: the plain task succeeded
    assert worker.poll() is None, workers.log_of(worker)[-3000:]
    assert plain in statuses and statuses[plain].state is TaskState.SUCCEEDED
    # And both bad tasks ended failed, naming their exception, after one run each
    for task_id, error in ((exits, "SystemExit"), (interrupted, "KeyboardInterrupt")):
        status = statuses.get(task_id)
        assert status is not None and status.state is TaskState.FAILED, status
        assert status.error is not None and error in status.error.type, status.error
        assert len(starts(workers)[task_id]) == 1
    assert await queue_drained(producer, timeout=10)


# -- item 10: a SIGKILLed worker orphans its process-pool children ----------------------------


async def test_process_pool_children_die_with_a_killed_worker(
    workers: Group, producer: Stem
) -> None:
    # Given a process-pool worker whose child is running a long task
    first = workers.start("--pool", "process", "-c", "1", "--heartbeat-interval", "1")
    task_id = await producer.enqueue("defect.gated_sync")
    assert await wait_until(lambda: task_id in starts(workers), timeout=30), workers.log_of(first)
    (run,) = read_runs(workers.runs)[task_id]
    assert run.ppid == first.pid  # ran in a child of the worker
    child = run.pid

    # When the worker is killed with SIGKILL
    await workers.kill(first)  # SIGKILL, wait, and mark its death in the runs file

    # Then its child exits promptly instead of finishing the task on its own
    try:
        assert await wait_until(lambda: not pid_alive(child), timeout=5), (
            f"child {child} of the SIGKILLed worker {first.pid} is still running"
        )
    finally:
        if pid_alive(child):  # an orphan of this test: do not leave it running
            os.kill(child, signal.SIGKILL)

    # And the task, redelivered to another worker, runs there alone and succeeds
    second = workers.start("--pool", "process", "-c", "1", "--heartbeat-interval", "1")
    assert await wait_until(lambda: len(starts(workers)[task_id]) == 2, timeout=30)
    workers.release.touch()
    statuses = await wait_final(producer, [task_id], timeout=30)
    assert statuses[task_id].state is TaskState.SUCCEEDED
    runs = read_runs(workers.runs)[task_id]
    assert runs[0].finish is None  # the orphan never finished its copy
    assert not overlapping(runs)
    second.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(second.wait, 30) == 0


# -- found by the kill loop: a worker killed before its first lease renewal ---------------------


async def test_a_message_reserved_by_a_killed_worker_returns_after_the_tasks_visibility_timeout(
    workers: Group, producer: Stem
) -> None:
    # Given a worker that has reserved a message (its task's visibility_timeout is 2 s)
    # and is killed before the task starts
    first = workers.start("-c", "1", "--heartbeat-interval", "1")
    task_id = await producer.enqueue("defect.held_at_consume")
    consumed = f"consumed {task_id} {first.pid} "
    assert await wait_until(
        lambda: workers.runs.exists() and consumed in workers.runs.read_text(), timeout=30
    ), workers.log_of(first)
    await workers.kill(first)

    # When another worker runs
    workers.start("-c", "1", "--heartbeat-interval", "1")

    # Then it gets the message once the 2 s lease is over, not after the worker's own
    # 60 s default lease, and runs it
    statuses = await wait_final(producer, [task_id], timeout=20)
    assert task_id in statuses and statuses[task_id].state is TaskState.SUCCEEDED, (
        "the message of a killed worker was still leased 20 s later (visibility_timeout=2)"
    )


# -- item 12: the database file deleted under a running worker --------------------------------


async def test_a_worker_whose_database_file_is_deleted_stops_with_a_clear_error(
    workers: Group, producer: Stem
) -> None:
    # Given a worker that has consumed from its file
    worker = workers.start("-c", "2", "--heartbeat-interval", "1")
    first = await producer.enqueue("defect.plain_async")
    statuses = await wait_final(producer, [first], timeout=30, unless=worker)
    assert statuses[first].state is TaskState.SUCCEEDED
    await producer.aclose()
    logged_before = len(workers.log_of(worker))

    # When the file is deleted, and a producer creates a new one and enqueues to it
    delete_database(workers.db)
    late = Stem.from_url(workers.url)
    try:
        await late.enqueue("defect.plain_async")
    finally:
        await late.aclose()

    # Then the worker stops with a non-zero exit and a message naming the file
    assert await wait_until(lambda: worker.poll() is not None, timeout=20), (
        "the worker went on with a deleted database file"
    )
    assert worker.returncode != 0
    said = workers.log_of(worker)[logged_before:]
    assert os.fspath(workers.db) in said, said
