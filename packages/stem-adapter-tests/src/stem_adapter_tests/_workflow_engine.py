"""The workflow engine on a store: scripts and flows run end to end through a worker.

Where :class:`WorkflowStoreContract` checks each store method, this suite runs real
workflows (steps, sleeps, events, children, patches, policies, rewind, replay checks)
on an app whose workflow store is the one under test, on a FakeClock.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from stem import (
    ArgumentError,
    ChildWorkflowError,
    Clock,
    EventTimeoutError,
    FakeClock,
    FlowContext,
    NonDeterminismError,
    SerializationError,
    Stem,
    StepFailedError,
    StepRetry,
    WorkflowContext,
)
from stem._workflows import replay_check
from stem.contracts import RunStatus, WorkflowStore
from stem.memory import MemoryBroker, MemoryResultBackend

from ._support import ContractSuite

__all__ = ["WorkflowScriptContract"]

Drive = Callable[..., Awaitable[None]]


async def status_of(app: Stem, run_id: str) -> RunStatus:
    run = await app.workflow_store.get_run(run_id)
    assert run is not None
    return run.status


def reaches(app: Stem, run_id: str, *states: RunStatus) -> Any:
    async def check() -> bool:
        return await status_of(app, run_id) in states

    return check


class WorkflowScriptContract(ContractSuite):
    """Workflows run end to end on the store under test.

    Subclass it and define a ``workflows`` fixture that builds the store on the
    ``clock`` fixture (a FakeClock: this suite moves time itself).
    """

    subject_fixture = "workflows"

    @pytest.fixture
    def workflows(self, clock: Clock) -> WorkflowStore:
        raise NotImplementedError(
            f"{type(self).__name__} must define a `workflows` fixture that builds the store"
        )

    @pytest.fixture
    async def app(self, workflows: WorkflowStore, clock: FakeClock) -> AsyncIterator[Stem]:
        stem = Stem(
            MemoryBroker(clock=clock),
            MemoryResultBackend(clock=clock),
            workflow_store=workflows,
            clock=clock,
        )
        stem.workflows.poll_interval = 0.5
        yield stem
        await stem.broker.aclose()

    @pytest.fixture
    def drive(self, clock: FakeClock) -> Drive:
        """Advance the clock in steps until a predicate holds, letting the loop (and the
        store's connections) run between steps; fails after ``max_seconds`` of fake time."""

        async def run(
            predicate: Callable[[], Any], *, step: float = 0.25, max_seconds: float = 600.0
        ) -> None:
            moved = 0.0
            while True:
                result = predicate()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                if moved > max_seconds:
                    raise AssertionError(f"still not true after {max_seconds} fake seconds")
                clock.advance(step)
                moved += step
                await asyncio.sleep(0.002)

        return run

    async def test_a_script_runs_each_step_once_through_a_sleep_and_an_event(
        self, app: Stem, clock: FakeClock, drive: Drive
    ) -> None:
        calls: Counter[str] = Counter()

        async def charge(order: str) -> dict[str, str]:
            calls["charge"] += 1
            return {"receipt": f"r-{order}"}

        def notify(receipt: dict[str, str], shipped: dict[str, str]) -> None:
            calls["notify"] += 1  # returns None: recorded all the same

        @app.workflow(name="checkout")
        async def checkout(wf: WorkflowContext, order: str) -> str:
            receipt = await wf.step("charge", charge, order)
            await wf.sleep(timedelta(minutes=5))
            shipped = await wf.wait_for_event(f"ship.{order}", timeout=timedelta(days=2))
            await wf.step("notify", notify, receipt, shipped)
            await wf.sleep(1)  # a last suspension, so every step before it is replayed
            return receipt["receipt"]

        async with app.worker(concurrency=2):
            run_id = await checkout.start("42")

            async def waiting() -> bool:
                return await app.workflow_store.runs_waiting_on("ship.42") == [run_id]

            await drive(waiting)
            assert await app.emit_event("ship.42", {"carrier": "ups"}) == [run_id]
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
            result = await app.wait_for_workflow(run_id, timeout=1)
        assert (result.status, result.value, result.ok) == (RunStatus.COMPLETED, "r-42", True)
        assert calls == {"charge": 1, "notify": 1}
        steps = await app.workflow_store.list_steps(run_id)
        assert [(s.name, s.kind) for s in steps] == [
            ("charge", "step"),
            ("sleep", "sleep"),
            ("event:ship.42", "event"),
            ("notify", "step"),
            ("sleep#1", "sleep"),
        ]
        assert steps[2].value == {"payload": {"carrier": "ups"}}

    async def test_a_step_that_fails_after_its_retries_fails_the_run(
        self, app: Stem, drive: Drive
    ) -> None:
        tries = 0

        def flaky() -> None:
            nonlocal tries
            tries += 1
            raise ValueError(f"try {tries} failed")

        @app.workflow(name="fragile")
        async def fragile(wf: WorkflowContext) -> None:
            await wf.step("call", flaky, retry=StepRetry(attempts=3, backoff=lambda n: 1.0))

        async with app.worker():
            run_id = await fragile.start()
            await drive(reaches(app, run_id, RunStatus.FAILED))
        result = await app.wait_for_workflow(run_id, timeout=1)
        assert tries == 3
        assert result.error is not None and result.error.type == "ValueError"
        assert "step 'call' failed after 3 attempts: try 3 failed" in result.error.message
        assert result.error.traceback and "flaky" in result.error.traceback

    async def test_a_caught_step_failure_is_recorded_and_not_run_again(
        self, app: Stem, drive: Drive
    ) -> None:
        tries = 0

        def declined() -> None:
            nonlocal tries
            tries += 1
            raise ValueError("card declined")

        @app.workflow(name="fallback")
        async def fallback(wf: WorkflowContext) -> str:
            try:
                await wf.step("card", declined)
            except StepFailedError as exc:
                await wf.sleep(10)  # a replay comes back through the failure
                return f"invoice after {exc.error.type}: {exc.error.message}"
            return "paid"

        async with app.worker():
            run_id = await fallback.start()
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
        assert tries == 1
        result = await app.wait_for_workflow(run_id, timeout=1)
        assert result.value == "invoice after ValueError: card declined"
        [card, _sleep] = await app.workflow_store.list_steps(run_id)
        assert card.error is not None and card.error.type == "ValueError"

    async def test_steps_run_at_once_and_a_wait_among_them_keep_their_records(
        self, app: Stem, drive: Drive
    ) -> None:
        calls: Counter[str] = Counter()

        async def fetch(name: str) -> str:
            calls[name] += 1
            return name.upper()

        @app.workflow(name="fan.out")
        async def fan_out(wf: WorkflowContext) -> list[Any]:
            values = await asyncio.gather(
                wf.step("a", fetch, "a"), wf.step("b", fetch, "b"), wf.step("c", fetch, "c")
            )
            signal = await wf.wait_for_event("go")
            return [*values, signal]

        async with app.worker():
            run_id = await fan_out.start()

            async def waiting() -> bool:
                return await app.workflow_store.runs_waiting_on("go") == [run_id]

            await drive(waiting)
            await app.emit_event("go", "now")
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
        assert (await app.wait_for_workflow(run_id, timeout=1)).value == ["A", "B", "C", "now"]
        assert calls == {"a": 1, "b": 1, "c": 1}

    async def test_a_step_longer_than_the_lease_keeps_its_run(
        self, app: Stem, clock: FakeClock, drive: Drive
    ) -> None:
        runs = 0

        async def slow() -> str:
            nonlocal runs
            runs += 1
            await clock.sleep(app.workflows.lease * 3)  # renewed meanwhile, on the clock
            return "done"

        @app.workflow(name="long.step")
        async def long_step(wf: WorkflowContext) -> str:
            return await wf.step("slow", slow)

        async with app.worker(concurrency=4):
            run_id = await long_step.start()
            await drive(reaches(app, run_id, RunStatus.COMPLETED), step=1.0)
        assert runs == 1
        assert (await app.wait_for_workflow(run_id, timeout=1)).value == "done"

    async def test_a_pending_run_is_dispatched_again_only_when_its_message_is_gone(
        self, app: Stem, clock: FakeClock
    ) -> None:
        @app.workflow(name="queued")
        async def queued(wf: WorkflowContext) -> int:
            return 1

        run_id = await queued.start()  # no worker: its message waits in the queue
        assert await app.broker.pending_count("default") == 1
        clock.advance(app.workflows.redispatch_after + 1)
        assert await app.workflows.dispatch_due() >= 1
        assert await app.broker.pending_count("default") == 1, "a busy queue got a second copy"
        # A message that was lost is sent again
        await app.broker.purge("default")
        clock.advance(app.workflows.redispatch_after + 1)
        await app.workflows.dispatch_due()
        assert await app.broker.pending_count("default") == 1
        run = await app.workflow_store.get_run(run_id)
        assert run is not None and run.status is RunStatus.PENDING

    async def test_replay_meeting_a_different_step_fails_with_both_names(
        self, app: Stem, drive: Drive
    ) -> None:
        @app.workflow(name="changing")
        async def before(wf: WorkflowContext) -> None:
            await wf.step("reserve", lambda: 1)
            await wf.sleep(60)

        async with app.worker():
            run_id = await before.start()
            await drive(reaches(app, run_id, RunStatus.SUSPENDED))

        # The code changes under the suspended run
        async def after(wf: WorkflowContext) -> None:
            await wf.step("charge", lambda: 1)

        app.workflows.registry["changing"] = type(before)(
            app, "changing", after, queue=None, policy=None
        )
        async with app.worker():
            await drive(reaches(app, run_id, RunStatus.FAILED))
        error = (await app.wait_for_workflow(run_id, timeout=1)).error
        assert error is not None and error.type == "stem.NonDeterminismError"
        assert "'reserve'" in error.message and "'charge'" in error.message

    async def test_an_event_sent_before_the_wait_is_kept_for_it(
        self, app: Stem, drive: Drive
    ) -> None:
        @app.workflow(name="approval")
        async def approval(wf: WorkflowContext) -> Any:
            await wf.sleep(10)
            return await wf.wait_for_event("approved")

        async with app.worker():
            run_id = await approval.start()
            assert await app.send_event(run_id, "approved", {"by": "ann"}) is True
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
            assert (await app.wait_for_workflow(run_id, timeout=1)).value == {"by": "ann"}
            assert await app.send_event(run_id, "approved", 1) is False  # it has ended
            assert await app.send_event("no-such-run", "approved", 1) is False

    async def test_a_wait_that_times_out_raises_in_the_script(
        self, app: Stem, drive: Drive
    ) -> None:
        @app.workflow(name="patient")
        async def patient(wf: WorkflowContext) -> str:
            try:
                await wf.wait_for_event("never", timeout=30)
            except EventTimeoutError:
                return "gave up"
            return "heard"

        async with app.worker():
            run_id = await patient.start()
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
        assert (await app.wait_for_workflow(run_id, timeout=1)).value == "gave up"
        # The timeout was recorded: a late event reaches nobody
        assert await app.emit_event("never", 1) == []

    async def test_a_flow_step_suspends_and_runs_again_from_its_top(
        self, app: Stem, drive: Drive
    ) -> None:
        flow = app.flow("polling")
        seen: list[Any] = []

        @flow.step("fetch")
        async def fetch(ctx: FlowContext) -> int:
            return int(ctx.params["n"])

        @flow.step("poll")
        async def poll(ctx: FlowContext) -> str:
            data = ctx.take_resume_data()
            seen.append(data)
            if data is None:
                await ctx.sleep(30)
            if data is True:  # back from the sleep: now wait for a signal
                await ctx.await_event("go")
            return f"{ctx.previous_result}:{data}"

        async with app.worker():
            run_id = await flow.start(n=7)

            async def waiting() -> bool:
                return await app.workflow_store.runs_waiting_on("go") == [run_id]

            await drive(waiting)
            await app.emit_event("go", "now")
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
        assert seen == [None, True, "now"]
        assert (await app.wait_for_workflow(run_id, timeout=1)).value == "7:now"

    async def test_an_auto_versioned_step_records_each_run_of_it_after_a_rewind(
        self, app: Stem, drive: Drive
    ) -> None:
        flow = app.flow("versions")
        iterations: list[int] = []

        @flow.step("work", auto_version=True)
        def work(ctx: FlowContext) -> int:
            iterations.append(ctx.iteration)
            return ctx.iteration * 10

        @flow.step("done")
        def done(ctx: FlowContext) -> Any:
            return ctx.previous_result

        async with app.worker():
            run_id = await flow.start()
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
            assert await app.rewind_workflow(run_id, "work") is True
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
        names = [s.name for s in await app.workflow_store.list_steps(run_id)]
        assert names == ["work#0", "work#1", "done"]
        assert iterations == [0, 1]
        assert (await app.wait_for_workflow(run_id, timeout=1)).value == 10

    async def test_rewind_runs_the_step_and_everything_after_it_again(
        self, app: Stem, drive: Drive
    ) -> None:
        calls: Counter[str] = Counter()

        @app.workflow(name="rewound")
        async def rewound(wf: WorkflowContext) -> int:
            a = await wf.step("a", lambda: calls.update(["a"]) or 1)
            b = await wf.step("b", lambda: calls.update(["b"]) or 2)
            return a + b

        async with app.worker():
            run_id = await rewound.start()
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
            assert await app.rewind_workflow(run_id, "b") is True
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
            assert await app.rewind_workflow(run_id, "zz") is False
        assert calls == {"a": 1, "b": 2}

    async def test_cancel_ends_a_suspended_run_and_its_children(
        self, app: Stem, drive: Drive
    ) -> None:
        @app.workflow(name="child.sleeper")
        async def sleeper(wf: WorkflowContext) -> None:
            await wf.sleep(3600)

        @app.workflow(name="parent.waiter")
        async def waiter(wf: WorkflowContext) -> Any:
            return await wf.child(sleeper)

        async with app.worker():
            run_id = await waiter.start()

            async def child_sleeps() -> bool:
                children = await app.workflow_store.list_runs(parent_id=run_id)
                return bool(children) and children[0].status is RunStatus.SUSPENDED

            await drive(child_sleeps)
            assert await app.cancel_workflow(run_id, "order withdrawn") is True
        result = await app.wait_for_workflow(run_id, timeout=1)
        assert result.status is RunStatus.CANCELLED
        assert result.error is not None and result.error.message == "order withdrawn"
        [child] = await app.workflow_store.list_runs(parent_id=run_id)
        assert child.status is RunStatus.CANCELLED
        assert await app.cancel_workflow(run_id) is False

    async def test_a_child_workflow_returns_its_result_or_raises_its_failure(
        self, app: Stem, drive: Drive
    ) -> None:
        @app.workflow(name="square")
        async def square(wf: WorkflowContext, n: int) -> int:
            if n < 0:
                raise ValueError("negative")
            return await wf.step("mul", lambda: n * n)

        @app.workflow(name="sum.of.squares")
        async def total(wf: WorkflowContext, ns: list[int]) -> Any:
            values = [await wf.child(square, n=n) for n in ns]
            try:
                await wf.child("square", n=-1)
            except ChildWorkflowError as exc:
                return {"sum": sum(values), "failed": exc.error.type if exc.error else None}
            return {"sum": sum(values)}

        async with app.worker(concurrency=4):
            run_id = await total.start([1, 2, 3])
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
        result = await app.wait_for_workflow(run_id, timeout=1)
        assert result.value == {"sum": 14, "failed": "ValueError"}
        assert len(await app.workflow_store.list_runs(parent_id=run_id)) == 4

    async def test_patched_keeps_runs_started_before_a_change_on_the_old_path(
        self, app: Stem, drive: Drive
    ) -> None:
        taken: list[str] = []

        async def old(wf: WorkflowContext) -> None:
            await wf.sleep(60)
            taken.append("old")

        async def new(wf: WorkflowContext) -> None:
            if await wf.patched("no-sleep"):
                taken.append("new")
                return
            await wf.sleep(60)
            taken.append("old")

        handle = app.workflow(name="evolving")(old)
        async with app.worker():
            before = await handle.start()
            await drive(reaches(app, before, RunStatus.SUSPENDED))
        app.workflows.registry["evolving"] = type(handle)(
            app, "evolving", new, queue=None, policy=None
        )
        async with app.worker():
            after = await app.start_workflow("evolving")
            await drive(reaches(app, after, RunStatus.COMPLETED))
            await drive(reaches(app, before, RunStatus.COMPLETED))
        assert sorted(taken) == ["new", "old"]

    async def test_max_run_duration_cancels_a_run_that_runs_too_long(
        self, app: Stem, drive: Drive
    ) -> None:
        @app.workflow(name="slow", max_run_duration=timedelta(minutes=1))
        async def slow(wf: WorkflowContext) -> None:
            await wf.sleep(timedelta(hours=1))

        async with app.worker():
            run_id = await slow.start()
            await drive(reaches(app, run_id, RunStatus.CANCELLED))
        run = await app.workflow_store.get_run(run_id)
        assert run is not None and run.error is not None
        assert "max_run_duration" in run.error.message
        # It was cancelled at its limit, not after the hour
        assert run.finished_at is not None and run.finished_at - run.created_at < 120

    async def test_max_suspend_duration_cancels_a_run_that_waits_too_long(
        self, app: Stem, drive: Drive
    ) -> None:
        @app.workflow(name="waits", max_suspend_duration=60)
        async def waits(wf: WorkflowContext) -> None:
            await wf.wait_for_event("never")

        async with app.worker():
            run_id = await waits.start()
            await drive(reaches(app, run_id, RunStatus.CANCELLED))
        run = await app.workflow_store.get_run(run_id)
        assert run is not None and run.error is not None
        assert "max_suspend_duration" in run.error.message
        assert await app.workflow_store.list_watchers("never") == []

    async def test_bad_input_is_refused_or_recorded(self, app: Stem, drive: Drive) -> None:
        @app.workflow(name="typed")
        async def typed(wf: WorkflowContext, n: int) -> Any:
            return await wf.step("bad", lambda: object())

        with pytest.raises(ArgumentError, match="'n'"):
            await typed.start("not a number")  # type: ignore[arg-type]
        with pytest.raises(SerializationError, match="parameter 'x'"):
            await app.start_workflow("other", {"x": object()})
        with pytest.raises(SerializationError, match="event"):
            await app.emit_event("t", object())
        async with app.worker():
            unserializable = await typed.start(1)
            unknown = await app.start_workflow("nobody.registered.this")
            await drive(reaches(app, unserializable, RunStatus.FAILED))
            await drive(reaches(app, unknown, RunStatus.FAILED))
        bad = await app.wait_for_workflow(unserializable, timeout=1)
        assert bad.error is not None and bad.error.type == "stem.SerializationError"
        assert "step 'bad'" in bad.error.message
        missing = await app.wait_for_workflow(unknown, timeout=1)
        assert missing.error is not None and missing.error.type == "stem.UnknownWorkflowError"

    async def test_replay_check_passes_the_same_code_and_fails_a_change(
        self, app: Stem, drive: Drive
    ) -> None:
        @app.workflow(name="checked")
        async def checked(wf: WorkflowContext) -> None:
            await wf.step("one", lambda: 1)
            await wf.sleep(60)
            await wf.step("two", lambda: 2)

        async with app.worker():
            run_id = await checked.start()
            await drive(reaches(app, run_id, RunStatus.SUSPENDED))
        run = await app.workflow_store.get_run(run_id)
        assert run is not None
        steps = await app.workflow_store.list_steps(run_id)
        await replay_check(app, run, steps)

        async def renamed(wf: WorkflowContext) -> None:
            await wf.step("uno", lambda: 1)

        app.workflows.registry["checked"] = type(checked)(
            app, "checked", renamed, queue=None, policy=None
        )
        with pytest.raises(NonDeterminismError, match=r"'one'.*'uno'"):
            await replay_check(app, run, steps)

    async def test_the_idempotency_key_is_stable_across_replays(
        self, app: Stem, drive: Drive
    ) -> None:
        keys: list[str] = []

        @app.workflow(name="keyed")
        async def keyed(wf: WorkflowContext) -> None:
            keys.append(wf.idempotency_key("charge"))
            await wf.sleep(5)

        async with app.worker():
            run_id = await keyed.start()
            await drive(reaches(app, run_id, RunStatus.COMPLETED))
        assert keys == [f"keyed/{run_id}/charge"] * 2
