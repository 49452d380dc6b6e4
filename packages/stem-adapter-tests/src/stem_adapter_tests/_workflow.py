"""The WorkflowStore contract suite."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stem import Clock, DuplicateRunError, LeaseLostError, TaskError
from stem.contracts import (
    Resume,
    RunPolicy,
    RunStatus,
    StepCheckpoint,
    WorkflowRun,
    WorkflowStore,
)

from ._support import ContractSuite, unique

__all__ = ["WorkflowStoreContract"]

#: A lease meant to run out during the test; PAST lets it (with a margin).
TTL = 0.5
PAST = 0.6
#: A lease that must not run out during the test.
HOLD = 30.0


class WorkflowStoreContract(ContractSuite):
    """The behaviour every :class:`stem.contracts.WorkflowStore` must have.

    Subclass it as ``Test<YourWorkflowStore>`` and define a ``workflows`` fixture that
    builds the store on the ``clock`` fixture. Override ``other_workflows`` to open a
    second connection to the same store (workers in other processes share it).
    """

    subject_fixture = "workflows"

    @pytest.fixture
    def workflows(self, clock: Clock) -> WorkflowStore:
        """The workflow store under test, built on ``clock``; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `workflows` fixture that builds the store"
        )

    @pytest.fixture
    def other_workflows(self, workflows: WorkflowStore) -> WorkflowStore:
        """A second handle on the same store (by default the same object)."""
        return workflows

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def run(clock: Clock, **fields: Any) -> WorkflowRun:
        """A pending run with a fresh id, created now; ``fields`` override any field."""
        values: dict[str, Any] = {
            "id": unique("run"),
            "workflow": "orders.checkout",
            "params": {"order": "42"},
            "created_at": clock.now(),
            "updated_at": clock.now(),
        }
        values.update(fields)
        return WorkflowRun(**values)

    async def claimed(
        self, store: WorkflowStore, clock: Clock, ttl: float = HOLD, **fields: Any
    ) -> WorkflowRun:
        """A new run, created and claimed by "w1"."""
        run = self.run(clock, **fields)
        await store.create_run(run)
        got = await store.claim_run(run.id, "w1", ttl)
        assert got is not None
        return got

    @staticmethod
    def step(
        run: WorkflowRun, position: int, name: str, value: Any = None, **fields: Any
    ) -> StepCheckpoint:
        return StepCheckpoint(run_id=run.id, position=position, name=name, value=value, **fields)

    async def must_get(self, store: WorkflowStore, run_id: str) -> WorkflowRun:
        run = await store.get_run(run_id)
        assert run is not None, f"run {run_id} is gone"
        return run

    async def due(self, store: WorkflowStore, ids: set[str], **kwargs: Any) -> list[str]:
        """The runs among ``ids`` that ``due_runs`` hands out (other tests share the store)."""
        return [i for i in await store.due_runs(**kwargs) if i in ids]

    # -- creating, reading, listing -----------------------------------------------------------

    async def test_a_run_round_trips(self, workflows: WorkflowStore, clock: Clock) -> None:
        run = self.run(
            clock,
            params={"order": "42", "items": [1, 2, {"sku": "ü"}], "big": 2**53},
            queue="orders",
            policy=RunPolicy(max_run_duration=900.0, max_suspend_duration=300.0),
            parent_id="parent-1",
            wake_at=clock.now() + 30,
            meta={"tenant": "acme"},
        )
        await workflows.create_run(run)
        assert await workflows.get_run(run.id) == run
        assert await workflows.get_run(unique("missing")) is None

    async def test_a_duplicate_id_is_refused_and_changes_nothing(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        run = self.run(clock)
        await workflows.create_run(run)
        with pytest.raises(DuplicateRunError):
            await workflows.create_run(self.run(clock, id=run.id, workflow="other"))
        assert (await self.must_get(workflows, run.id)).workflow == "orders.checkout"

    async def test_list_filters_orders_and_pages(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        name = unique("wf")
        # Ids that are prefixes of one another, and that hold LIKE and glob wildcards
        base = unique("id")
        ids = [base, base + "-1", base + "%", base + "_x", base + "*?[", "ü-" + base]
        for i, run_id in enumerate(ids):
            await workflows.create_run(
                self.run(clock, id=run_id, workflow=name, created_at=clock.now() + i)
            )
        await workflows.create_run(self.run(clock, workflow=name + "-other"))
        listed = await workflows.list_runs(workflow=name)
        assert [r.id for r in listed] == ids
        page = await workflows.list_runs(workflow=name, limit=2, offset=2)
        assert [r.id for r in page] == ids[2:4]
        claimed = await workflows.claim_run(ids[1], "w1", HOLD)
        assert claimed is not None
        running = await workflows.list_runs(workflow=name, status=RunStatus.RUNNING)
        assert [r.id for r in running] == [ids[1]]
        pending = await workflows.list_runs(workflow=name, status=RunStatus.PENDING)
        assert len(pending) == len(ids) - 1

    async def test_list_by_parent(self, workflows: WorkflowStore, clock: Clock) -> None:
        parent = unique("parent")
        child = self.run(clock, parent_id=parent)
        await workflows.create_run(child)
        await workflows.create_run(self.run(clock, parent_id=unique("parent")))
        assert [r.id for r in await workflows.list_runs(parent_id=parent)] == [child.id]

    # -- claims and fencing -------------------------------------------------------------------

    async def test_a_claim_leases_the_run_and_moves_the_fence(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        run = self.run(clock)
        await workflows.create_run(run)
        got = await workflows.claim_run(run.id, "w1", HOLD)
        assert got is not None
        assert got.status is RunStatus.RUNNING and got.lease_owner == "w1"
        assert got.fence == run.fence + 1
        assert got.lease_expires_at == self.near(clock, clock.now() + HOLD)
        assert got.wake_at == self.near(clock, clock.now() + HOLD)
        assert await workflows.get_run(run.id) == got
        # While the lease lives, nobody else gets it
        assert await workflows.claim_run(run.id, "w2", HOLD) is None
        assert await workflows.claim_run(unique("missing"), "w2", HOLD) is None

    async def test_an_ended_lease_lets_another_worker_take_over_and_fences_the_first(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        first = await self.claimed(workflows, clock, ttl=TTL)
        await self.advance(clock, PAST)
        second = await workflows.claim_run(first.id, "w2", HOLD)
        assert second is not None and second.fence == first.fence + 1
        # The first worker's writes are refused, and change nothing
        with pytest.raises(LeaseLostError):
            await workflows.save_step(first.id, first.fence, self.step(first, 0, "a", 1))
        with pytest.raises(LeaseLostError):
            await workflows.finish_run(first.id, first.fence, RunStatus.COMPLETED, result=1)
        with pytest.raises(LeaseLostError):
            await workflows.suspend(first.id, first.fence, wake_at=None, resume_at=None)
        assert await workflows.renew_run(first.id, first.fence, HOLD) is False
        assert await workflows.release_run(first.id, first.fence) is False
        assert await workflows.list_steps(first.id) == []
        assert await workflows.get_run(first.id) == second

    async def test_renew_extends_the_lease(self, workflows: WorkflowStore, clock: Clock) -> None:
        run = await self.claimed(workflows, clock, ttl=TTL)
        await self.advance(clock, TTL / 2)
        assert await workflows.renew_run(run.id, run.fence, TTL) is True
        await self.advance(clock, TTL / 2 + 0.1)  # past the first end, not the renewed one
        assert await workflows.claim_run(run.id, "w2", HOLD) is None
        got = await self.must_get(workflows, run.id)
        assert got.lease_expires_at == self.near(clock, clock.now() - 0.1 + TTL / 2)

    async def test_release_gives_the_run_back(self, workflows: WorkflowStore, clock: Clock) -> None:
        run = await self.claimed(workflows, clock)
        assert await workflows.release_run(run.id, run.fence) is True
        got = await self.must_get(workflows, run.id)
        assert got.status is RunStatus.PENDING and got.lease_owner is None
        assert run.id in await self.due(workflows, {run.id})
        again = await workflows.claim_run(run.id, "w2", HOLD)
        assert again is not None and again.fence == run.fence + 1

    async def test_two_claims_at_once_have_one_winner(
        self, workflows: WorkflowStore, other_workflows: WorkflowStore, clock: Clock
    ) -> None:
        runs = [self.run(clock) for _ in range(10)]
        for run in runs:
            await workflows.create_run(run)
        for run in runs:
            a, b = await asyncio.gather(
                workflows.claim_run(run.id, "a", HOLD), other_workflows.claim_run(run.id, "b", HOLD)
            )
            assert (a is None) != (b is None), "exactly one claim must win"

    # -- checkpoints ------------------------------------------------------------------------

    async def test_steps_are_saved_in_order_and_move_the_cursor(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        run = await self.claimed(workflows, clock)
        await self.advance(clock, 1.0)
        first = self.step(
            run, 0, "charge", {"receipt": "r-1"}, attempts=2, started_at=1.0, completed_at=2.0
        )
        await workflows.save_step(run.id, run.fence, first)
        got = await self.must_get(workflows, run.id)
        assert got.cursor == 1
        # Saving is the run's heartbeat
        assert got.updated_at == self.near(clock, clock.now())
        nothing = self.step(run, 1, "notify", None, kind="step", completed_at=3.0)
        await workflows.save_step(run.id, run.fence, nothing)
        sleep = self.step(run, 2, "sleep", {"until": 99.0}, kind="sleep", completed_at=4.0)
        await workflows.save_step(run.id, run.fence, sleep)
        # A step whose value is None is recorded like any other
        assert await workflows.list_steps(run.id) == [first, nothing, sleep]
        assert (await self.must_get(workflows, run.id)).cursor == 3
        # A failed step is recorded with its error; an earlier position saved late (steps
        # run at once) does not move the cursor back
        failed = self.step(
            run, 5, "flaky", None, error=TaskError(type="ValueError", message="no"), attempts=3
        )
        await workflows.save_step(run.id, run.fence, failed)
        late = self.step(run, 4, "late", 4, completed_at=6.0)
        await workflows.save_step(run.id, run.fence, late)
        assert (await self.must_get(workflows, run.id)).cursor == 6
        assert (await workflows.list_steps(run.id))[-2:] == [late, failed]
        # The same name again replaces its checkpoint
        replaced = self.step(run, 2, "sleep", {"until": 100.0}, kind="sleep", completed_at=5.0)
        await workflows.save_step(run.id, run.fence, replaced)
        assert [s for s in await workflows.list_steps(run.id) if s.name == "sleep"] == [replaced]
        assert await workflows.list_steps(unique("missing")) == []

    async def test_a_step_value_that_cannot_be_stored_changes_nothing(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        run = await self.claimed(workflows, clock)
        with pytest.raises((TypeError, ValueError)):
            await workflows.save_step(run.id, run.fence, self.step(run, 0, "bad", object()))
        assert await workflows.list_steps(run.id) == []
        assert (await self.must_get(workflows, run.id)).cursor == 0

    # -- sleeping and dispatch ----------------------------------------------------------------

    async def test_a_sleeping_run_is_due_at_its_wake_time_once_per_window(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        run = await self.claimed(workflows, clock)
        until = clock.now() + TTL
        assert await workflows.suspend(run.id, run.fence, wake_at=until, resume_at=until) is None
        got = await self.must_get(workflows, run.id)
        assert got.status is RunStatus.SUSPENDED and got.lease_owner is None
        assert got.resume_at == until and got.wake_at == until
        assert got.suspended_at == self.near(clock, clock.now())
        # Not before its time
        assert await self.due(workflows, {run.id}) == []
        assert await workflows.claim_run(run.id, "w2", HOLD) is None
        await self.advance(clock, PAST)
        # Then handed out once, and again only after the redispatch window
        assert await self.due(workflows, {run.id}, redispatch_after=TTL) == [run.id]
        assert await self.due(workflows, {run.id}, redispatch_after=TTL) == []
        await self.advance(clock, PAST)
        assert await self.due(workflows, {run.id}, redispatch_after=HOLD) == [run.id]
        # The claim says why it woke
        woken = await workflows.claim_run(run.id, "w2", HOLD)
        assert woken is not None and woken.resume == Resume(kind="wake")
        assert woken.status is RunStatus.RUNNING and woken.resume_at is None
        # When it went to sleep stays known (policies judge a suspension by it)
        assert woken.suspended_at == got.suspended_at

    async def test_due_runs_come_earliest_first_and_the_limit_leaves_the_rest(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        now = clock.now()
        runs = [self.run(clock, wake_at=now - 10 + i) for i in (3, 1, 2)]
        for run in runs:
            await workflows.create_run(run)
        ids = {r.id for r in runs}
        order = [runs[1].id, runs[2].id, runs[0].id]
        first = await self.due(workflows, ids, limit=2)
        rest = await self.due(workflows, ids, limit=100)
        # Other tests' runs may take places within the limit; ours keep their order
        assert first + rest == order

    async def test_a_leased_run_is_not_due_until_its_lease_ends(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        run = await self.claimed(workflows, clock, ttl=TTL)
        assert await self.due(workflows, {run.id}) == []
        await self.advance(clock, PAST)
        # Its worker died: the run comes back
        assert await self.due(workflows, {run.id}) == [run.id]

    async def test_next_wake_is_no_later_than_the_earliest_wake(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        run = self.run(clock, wake_at=clock.now() + 5)
        await workflows.create_run(run)
        wake = await workflows.next_wake()
        assert run.wake_at is not None
        assert wake is None or wake <= run.wake_at + (0.001 if self.is_fake(clock) else 2.0)

    # -- events ---------------------------------------------------------------------------

    async def test_an_emitted_event_resolves_every_waiting_run_once(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        topic, other = unique("topic"), unique("topic")
        a = await self.claimed(workflows, clock)
        b = await self.claimed(workflows, clock)
        c = await self.claimed(workflows, clock)
        for run, on in ((a, topic), (b, topic), (c, other)):
            assert await workflows.suspend(run.id, run.fence, wake_at=None, topic=on) is None
        watchers = await workflows.list_watchers(topic)
        assert sorted(w.run_id for w in watchers) == sorted([a.id, b.id])
        assert {w.topic for w in watchers} == {topic}
        assert sorted(await workflows.runs_waiting_on(topic)) == sorted([a.id, b.id])
        payload = {"carrier": "ups", "n": [1, 2]}
        assert sorted(await workflows.emit(topic, payload)) == sorted([a.id, b.id])
        # Exactly once: a second emit finds nobody
        assert await workflows.emit(topic, {"late": True}) == []
        for run in (a, b):
            got = await self.must_get(workflows, run.id)
            assert got.status is RunStatus.PENDING
            assert got.resume == Resume(kind="event", topic=topic, payload=payload)
            assert got.wait_topic is None
        assert await workflows.list_watchers(topic) == []
        assert [w.run_id for w in await workflows.list_watchers(other)] == [c.id]
        assert set(await self.due(workflows, {a.id, b.id})) == {a.id, b.id}
        # The payload stays until the run's next checkpoint, whoever claims it
        claimed = await workflows.claim_run(a.id, "w2", HOLD)
        assert claimed is not None and claimed.resume is not None
        assert claimed.resume.payload == payload
        await workflows.save_step(
            a.id, claimed.fence, self.step(a, 0, "wait", payload, kind="event")
        )
        assert (await self.must_get(workflows, a.id)).resume is None

    async def test_a_wait_times_out_at_its_deadline(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        topic = unique("topic")
        run = await self.claimed(workflows, clock)
        deadline = clock.now() + TTL
        await workflows.suspend(run.id, run.fence, wake_at=deadline, topic=topic, deadline=deadline)
        [watcher] = await workflows.list_watchers(topic)
        assert watcher.deadline == deadline
        await self.advance(clock, PAST)
        assert await self.due(workflows, {run.id}) == [run.id]
        claimed = await workflows.claim_run(run.id, "w2", HOLD)
        assert claimed is not None and claimed.resume == Resume(kind="timeout", topic=topic)
        # It no longer waits: a late event does not reach it
        assert await workflows.list_watchers(topic) == []
        assert await workflows.emit(topic, 1) == []

    async def test_an_event_and_a_deadline_racing_give_one_outcome(
        self, workflows: WorkflowStore, other_workflows: WorkflowStore, clock: Clock
    ) -> None:
        for _ in range(5):
            topic = unique("topic")
            run = await self.claimed(workflows, clock)
            deadline = clock.now() + TTL
            await workflows.suspend(
                run.id, run.fence, wake_at=deadline, topic=topic, deadline=deadline
            )
            await self.advance(clock, PAST)
            resolved, claimed = await asyncio.gather(
                workflows.emit(topic, "payload"), other_workflows.claim_run(run.id, "w2", HOLD)
            )
            got = await self.must_get(workflows, run.id)
            if resolved:  # the event won: the run has it, and a claim gets it
                assert got.resume == Resume(kind="event", topic=topic, payload="payload")
                assert claimed is None or claimed.resume == got.resume
            else:  # the deadline won
                assert claimed is not None and claimed.resume == Resume(kind="timeout", topic=topic)

    async def test_an_event_sent_to_a_run_waits_until_it_waits(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        topic = unique("topic")
        run = await self.claimed(workflows, clock)
        assert await workflows.send_event(run.id, topic, {"n": 1}) is True
        assert await workflows.send_event(run.id, topic, {"n": 2}) is True
        assert await workflows.send_event(run.id, unique("other"), {"n": 0}) is True
        # A wait on the topic takes the oldest at once: the run keeps running and its lease
        taken = await workflows.suspend(run.id, run.fence, wake_at=None, topic=topic)
        assert taken == Resume(kind="event", topic=topic, payload={"n": 1})
        got = await self.must_get(workflows, run.id)
        assert got.status is RunStatus.RUNNING and got.fence == run.fence
        # It is the run's resume until the next checkpoint, so a crash does not lose it
        assert got.resume == taken
        taken = await workflows.suspend(run.id, run.fence, wake_at=None, topic=topic)
        assert taken == Resume(kind="event", topic=topic, payload={"n": 2})
        # Then it waits, and the next one sent resolves it
        assert await workflows.suspend(run.id, run.fence, wake_at=None, topic=topic) is None
        assert await workflows.send_event(run.id, topic, {"n": 3}) is True
        got = await self.must_get(workflows, run.id)
        assert got.status is RunStatus.PENDING
        assert got.resume == Resume(kind="event", topic=topic, payload={"n": 3})

    async def test_send_event_to_an_unknown_or_final_run_is_refused(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        assert await workflows.send_event(unique("missing"), "t", 1) is False
        run = await self.claimed(workflows, clock)
        await workflows.finish_run(run.id, run.fence, RunStatus.COMPLETED, result=1)
        assert await workflows.send_event(run.id, "t", 1) is False

    async def test_an_event_that_cannot_be_stored_changes_nothing(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        topic = unique("topic")
        run = await self.claimed(workflows, clock)
        await workflows.suspend(run.id, run.fence, wake_at=None, topic=topic)
        with pytest.raises((TypeError, ValueError)):
            await workflows.emit(topic, object())
        with pytest.raises((TypeError, ValueError)):
            await workflows.send_event(run.id, topic, object())
        assert await workflows.runs_waiting_on(topic) == [run.id]

    # -- endings ------------------------------------------------------------------------------

    async def test_finish_records_the_result_or_the_error(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        done = await self.claimed(workflows, clock)
        await workflows.finish_run(done.id, done.fence, RunStatus.COMPLETED, result={"ok": [1]})
        got = await self.must_get(workflows, done.id)
        assert (got.status, got.result, got.error) == (RunStatus.COMPLETED, {"ok": [1]}, None)
        assert got.lease_owner is None and got.wake_at is None
        assert got.finished_at == self.near(clock, clock.now())
        failed = await self.claimed(workflows, clock)
        error = TaskError(type="ValueError", message="bad order", traceback="Traceback ...")
        await workflows.finish_run(failed.id, failed.fence, RunStatus.FAILED, error=error)
        got = await self.must_get(workflows, failed.id)
        assert (got.status, got.error) == (RunStatus.FAILED, error)
        # A final run is neither claimed nor due, and its fence takes no more writes
        for run in (done, failed):
            assert await workflows.claim_run(run.id, "w2", HOLD) is None
            assert await self.due(workflows, {run.id}) == []
            with pytest.raises(LeaseLostError):
                await workflows.save_step(run.id, run.fence, self.step(run, 0, "late"))

    async def test_cancel_stops_a_run_in_any_state_but_a_final_one(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        pending = self.run(clock)
        await workflows.create_run(pending)
        running = await self.claimed(workflows, clock)
        waiting = await self.claimed(workflows, clock)
        topic = unique("topic")
        await workflows.suspend(waiting.id, waiting.fence, wake_at=None, topic=topic)
        for run in (pending, running, waiting):
            assert await workflows.cancel_run(run.id, "customer asked") is True
            got = await self.must_get(workflows, run.id)
            assert got.status is RunStatus.CANCELLED
            assert got.error == TaskError(type="Cancelled", message="customer asked")
            assert got.lease_owner is None and got.wake_at is None
            assert await self.due(workflows, {run.id}) == []
            assert await workflows.cancel_run(run.id, "again") is False
        # The worker that held it cannot write any more; nobody waits on the topic
        with pytest.raises(LeaseLostError):
            await workflows.save_step(running.id, running.fence, self.step(running, 0, "a"))
        assert await workflows.list_watchers(topic) == []
        assert await workflows.cancel_run(unique("missing"), "x") is False

    # -- rewind -------------------------------------------------------------------------------

    async def test_rewind_drops_the_step_and_every_later_one(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        run = await self.claimed(workflows, clock)
        steps = [self.step(run, i, name, i) for i, name in enumerate(["a", "b", "c"])]
        for step in steps:
            await workflows.save_step(run.id, run.fence, step)
        await workflows.finish_run(run.id, run.fence, RunStatus.COMPLETED, result="done")
        assert await workflows.rewind(run.id, "b") is True
        assert await workflows.list_steps(run.id) == steps[:1]
        got = await self.must_get(workflows, run.id)
        assert got.status is RunStatus.PENDING and got.cursor == 1
        assert got.result is None and got.finished_at is None and got.fence == run.fence + 1
        assert run.id in await self.due(workflows, {run.id})
        assert await workflows.rewind(run.id, "zz") is False
        assert await workflows.rewind(unique("missing"), "a") is False

    async def test_rewind_keeps_the_earlier_versions_of_a_versioned_step(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        run = await self.claimed(workflows, clock)
        saved = [
            self.step(run, 0, "fetch", 1),
            self.step(run, 1, "poll#0", "first", completed_at=1.0),
            self.step(run, 2, "notify", 3),
        ]
        for step in saved:
            await workflows.save_step(run.id, run.fence, step)
        # Versions of one step count as one position
        assert await workflows.rewind(run.id, "poll") is True
        assert await workflows.list_steps(run.id) == saved[:2]
        got = await self.must_get(workflows, run.id)
        assert got.cursor == 1
        claimed = await workflows.claim_run(run.id, "w1", HOLD)
        assert claimed is not None
        second = self.step(run, 1, "poll#1", "second", completed_at=2.0)
        await workflows.save_step(run.id, claimed.fence, second)
        assert await workflows.list_steps(run.id) == [*saved[:2], second]
        # Naming one version drops that version (and what follows)
        assert await workflows.rewind(run.id, "poll#1") is True
        assert await workflows.list_steps(run.id) == saved[:2]

    async def test_rewind_ends_a_wait_and_fences_the_holder(
        self, workflows: WorkflowStore, clock: Clock
    ) -> None:
        topic = unique("topic")
        run = await self.claimed(workflows, clock)
        await workflows.save_step(run.id, run.fence, self.step(run, 0, "a"))
        await workflows.suspend(run.id, run.fence, wake_at=None, topic=topic)
        assert await workflows.rewind(run.id, "a") is True
        assert await workflows.list_watchers(topic) == []
        assert await workflows.emit(topic, 1) == []
        assert (await self.must_get(workflows, run.id)).status is RunStatus.PENDING

    # -- sharing ------------------------------------------------------------------------------

    async def test_a_second_connection_sees_every_write(
        self, workflows: WorkflowStore, other_workflows: WorkflowStore, clock: Clock
    ) -> None:
        run = await self.claimed(workflows, clock)
        await workflows.save_step(run.id, run.fence, self.step(run, 0, "a", [1]))
        assert await other_workflows.get_run(run.id) == await workflows.get_run(run.id)
        assert await other_workflows.list_steps(run.id) == await workflows.list_steps(run.id)
        await other_workflows.finish_run(run.id, run.fence, RunStatus.COMPLETED, result=7)
        assert (await self.must_get(workflows, run.id)).result == 7

    async def test_concurrent_dispatchers_share_out_due_runs(
        self, workflows: WorkflowStore, other_workflows: WorkflowStore, clock: Clock
    ) -> None:
        runs = [self.run(clock, wake_at=clock.now() - 1) for _ in range(20)]
        for run in runs:
            await workflows.create_run(run)
        ids = {r.id for r in runs}
        got: list[str] = []
        while True:
            a, b = await asyncio.gather(
                self.due(workflows, ids, limit=3), self.due(other_workflows, ids, limit=3)
            )
            if not a and not b:
                break
            got += a + b
        assert sorted(got) == sorted(ids), "each due run handed out exactly once"

    async def test_wait_for_change_returns_after_a_change(
        self, workflows: WorkflowStore, other_workflows: WorkflowStore, clock: Clock
    ) -> None:
        run = self.run(clock)
        await workflows.create_run(run)
        waiting = asyncio.ensure_future(workflows.wait_for_change(run.id, HOLD))
        await asyncio.sleep(0)
        await other_workflows.claim_run(run.id, "w1", HOLD)
        await self.finish(clock, waiting, nudge=workflows.poll_interval, what="wait_for_change")
