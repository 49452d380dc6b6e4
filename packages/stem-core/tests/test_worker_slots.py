"""The worker's slots and its pipeline (issue 8): jobs run inline in a fixed set of slot
tasks, reads overlap with the writing of results, and nothing a task did leaks into the
next one run by the same slot."""

from __future__ import annotations

import asyncio
import contextvars
import gc
from typing import Any

import pytest

from stem import AdapterError, Stem, TaskContext, TaskState

Until = Any

_var: contextvars.ContextVar[str] = contextvars.ContextVar("_var", default="unset")


class _Gate:
    """Holds every ``broker.settle`` until opened."""

    def __init__(self, app: Stem) -> None:
        self.open = asyncio.Event()
        self.waiting = 0
        settle = app.broker.settle

        async def held_settle(*args: Any) -> None:
            self.waiting += 1
            await self.open.wait()
            self.waiting -= 1
            await settle(*args)

        app.broker.settle = held_settle  # type: ignore[method-assign]


async def test_a_read_goes_out_while_results_are_being_written(app: Stem, until: Until) -> None:
    ran: list[int] = []

    @app.task(name="t")
    async def t(n: int) -> int:
        ran.append(n)
        return n

    gate = _Gate(app)
    refs = await app.enqueue_many([t.call(n) for n in range(8)])
    async with app.worker(concurrency=4) as worker:
        # The first four ran; their results wait to be written. Their slots are free
        # (the handlers are done), so the next four are read and run meanwhile.
        await until(lambda: len(ran) == 8)
        assert gate.waiting == 1
        assert worker.counters["processed"] == 0  # nothing acked before its result is stored
        gate.open.set()
        await until(lambda: worker.counters["processed"] == 8)
    for ref in refs:
        assert (await app.wait_for_task(ref, timeout=1)).succeeded


async def test_results_waiting_to_be_written_bound_what_is_read(app: Stem, until: Until) -> None:
    ran = 0

    @app.task(name="t")
    async def t() -> None:
        nonlocal ran
        ran += 1

    gate = _Gate(app)
    await app.enqueue_many([t.call() for _ in range(10)])
    async with app.worker(concurrency=2) as worker:
        # Up to concurrency + prefetch results may wait for their write beyond the
        # free slots; then the worker reads no more until the store catches up.
        await until(lambda: ran == 4 and worker.inflight == 4)
        for _ in range(50):
            await asyncio.sleep(0)
        assert ran == 4 and (await app.broker.queue_stats("default")).pending == 6
        gate.open.set()
        await until(lambda: worker.counters["processed"] == 10)


async def test_stop_waits_for_the_results_being_written(app: Stem, until: Until) -> None:
    @app.task(name="t")
    async def t(n: int) -> int:
        return n

    gate = _Gate(app)
    refs = await app.enqueue_many([t.call(n) for n in range(3)])
    worker = app.worker()
    await worker.start()
    await until(lambda: gate.waiting == 1)
    stopping = asyncio.ensure_future(worker.stop())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not stopping.done()
    gate.open.set()
    await stopping
    assert worker.counters["succeeded"] == 3
    for n, ref in enumerate(refs):
        assert (await app.wait_for_task(ref, timeout=1)).value == n
    stats = await app.broker.queue_stats("default")
    assert (stats.pending, stats.inflight) == (0, 0)


async def test_context_variables_do_not_leak_from_one_job_to_the_next(app: Stem) -> None:
    @app.task(name="set")
    async def set_it(value: str) -> str:
        _var.set(value)
        return value

    @app.task(name="read")
    async def read_it() -> str:
        return _var.get()

    first = await set_it.enqueue("leaked")
    second = await read_it.enqueue()
    async with app.worker(concurrency=1):  # one slot runs both, one after the other
        assert (await app.wait_for_task(first, timeout=10)).value == "leaked"
        assert (await app.wait_for_task(second, timeout=10)).value == "unset"


async def test_a_handler_that_cancels_itself_leaves_its_slot_sound(app: Stem, until: Until) -> None:
    runs = 0

    @app.task(name="quits")
    async def quits() -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)
        return "second run"

    @app.task(name="raises", max_retries=0)
    async def raises() -> None:
        raise asyncio.CancelledError("raised by the handler, not a cancellation")

    async with app.worker(concurrency=1) as worker:
        first = await quits.enqueue()
        await until(lambda: runs == 2)
        # The slot's task was cancelled once: that must not make a later handler's
        # own CancelledError look like the worker cancelling it (it would be redelivered).
        second = await raises.enqueue()
        result = await app.wait_for_task(second, timeout=10)
        assert result.failed and result.error is not None
        assert result.error.type.endswith("CancelledError")
        assert (await app.wait_for_task(first, timeout=10)).value == "second run"
        await until(lambda: worker.counters["processed"] == 2)
    assert runs == 2


async def test_a_result_the_store_refuses_fails_alone(app: Stem, until: Until) -> None:
    runs: dict[int, int] = {}
    settle = app.broker.settle

    async def picky_settle(deliveries: Any, statuses: Any, backend: Any) -> None:
        # A store that cannot hold one value that JSON can (a column type, say).
        if any(status.value == "refused" for status, _ in statuses):
            raise TypeError("this store cannot hold 'refused'")
        await settle(deliveries, statuses, backend)

    app.broker.settle = picky_settle  # type: ignore[method-assign]

    @app.task(name="t")
    async def t(n: int) -> str:
        runs[n] = runs.get(n, 0) + 1
        return "refused" if n == 3 else f"ok {n}"

    refs = await app.enqueue_many([t.call(n) for n in range(10)])
    async with app.worker(concurrency=10) as worker:
        await until(lambda: worker.counters["processed"] == 10)
    assert runs == {n: 1 for n in range(10)}
    for n, ref in enumerate(refs):
        result = await app.wait_for_task(ref, timeout=1)
        if n == 3:
            assert result.failed and result.error is not None
            assert "cannot be stored" in result.error.message
        else:
            assert result.value == f"ok {n}"
    assert {d.message.id: d.reason for d in await app.broker.list_dead_letters("default")} == {
        refs[3]: "unserializable-result"
    }
    assert (worker.counters["succeeded"], worker.counters["failed"]) == (9, 1)


async def test_a_failed_write_gives_quick_successes_back_to_the_queue(
    app: Stem, until: Until
) -> None:
    runs = 0
    failures = 3  # the batch and both halves: the store is down, not one entry at fault
    settle = app.broker.settle

    async def flaky_settle(*args: Any) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise AdapterError("the database is down")
        await settle(*args)

    app.broker.settle = flaky_settle  # type: ignore[method-assign]

    @app.task(name="t")
    async def t(n: int) -> int:
        nonlocal runs
        runs += 1
        return n

    refs = await app.enqueue_many([t.call(n) for n in range(4)])
    async with app.worker(concurrency=4) as worker:
        await until(lambda: worker.counters["succeeded"] == 4)
    assert runs == 8  # each ran again: its result was never stored, its message came back
    for n, ref in enumerate(refs):
        assert (await app.wait_for_task(ref, timeout=1)).value == n
    assert worker.counters["processed"] == 4


async def test_a_hook_added_while_the_worker_runs_is_called(app: Stem, until: Until) -> None:
    seen: list[Any] = []

    @app.task(name="t")
    async def t(n: int) -> int:
        return n

    async with app.worker() as worker:
        await t.enqueue(1)
        await until(lambda: worker.counters["processed"] == 1)
        app.hooks.on("on_success")(lambda ctx, value: seen.append(value))
        await t.enqueue(2)
        await until(lambda: worker.counters["processed"] == 2)
    assert seen == [2]


async def test_a_quick_task_never_has_its_started_status_written_after_its_result(
    app: Stem, until: Until
) -> None:
    written: list[tuple[str, TaskState]] = []
    settle = app.broker.settle

    async def recording_settle(deliveries: Any, statuses: Any, backend: Any) -> None:
        written.extend((status.id, status.state) for status, _ in statuses)
        await settle(deliveries, statuses, backend)

    app.broker.settle = recording_settle  # type: ignore[method-assign]
    release = asyncio.Event()

    @app.task(name="quick")
    async def quick() -> None: ...

    @app.task(name="slow")
    async def slow() -> None:
        await release.wait()

    slow_ref = await slow.enqueue()
    quick_refs = await app.enqueue_many([quick.call() for _ in range(5)])
    async with app.worker(concurrency=6) as worker:
        await until(lambda: worker.counters["processed"] == 5)
        assert (await app.get_status(slow_ref)).state is TaskState.STARTED  # type: ignore[union-attr]
        release.set()
        await until(lambda: worker.counters["processed"] == 6)
    for ref in [slow_ref, *quick_refs]:
        states = [state for task_id, state in written if task_id == ref]
        assert states[-1] is TaskState.SUCCEEDED and TaskState.STARTED not in states[1:]
    assert [s for t, s in written if t == slow_ref] == [TaskState.STARTED, TaskState.SUCCEEDED]


async def test_a_slot_that_fails_is_replaced(
    app: Stem, until: Until, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="t", max_retries=0)
    async def t(n: int) -> int:
        if n == 0:
            raise ValueError("a failure: its job ends in the slot, not in a batch")
        return n

    async with app.worker(concurrency=2) as worker:
        release = worker._release
        broken = True

        def release_once_broken(job: Any) -> None:
            nonlocal broken
            release(job)
            if broken:
                broken = False
                raise RuntimeError("a bug in the worker")

        worker._release = release_once_broken  # type: ignore[method-assign]
        await t.enqueue(0)
        await until(lambda: worker.counters["processed"] == 1)
        refs = await app.enqueue_many([t.call(n) for n in range(1, 6)])
        await until(lambda: worker.counters["processed"] == 6)
        assert len(worker._slots) == 2
    assert "a slot of worker" in caplog.text and "a bug in the worker" in caplog.text
    for n, ref in enumerate(refs, start=1):
        assert (await app.wait_for_task(ref, timeout=1)).value == n


async def test_jobs_leave_no_reference_cycles(app: Stem, until: Until) -> None:
    # A job and its handler's context refer to each other; a cycle left behind per task
    # would be freed only by the cycle collector, and make a busy worker pay for it.
    @app.task(name="t")
    async def t(ctx: TaskContext, n: int) -> int:
        return n

    app.hooks.on("on_success")(lambda ctx, value: None)
    async with app.worker(concurrency=10) as worker:
        await t.enqueue(0)
        await until(lambda: worker.counters["processed"] == 1)
        gc.collect()
        gc.disable()
        try:
            await app.enqueue_many([t.call(n) for n in range(200)])
            await until(lambda: worker.counters["processed"] == 201)
            assert gc.collect() == 0
        finally:
            gc.enable()
