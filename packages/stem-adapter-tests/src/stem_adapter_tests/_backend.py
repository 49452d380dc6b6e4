"""The ResultBackend contract suite."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stem import Clock, TaskError
from stem.contracts import ResultBackend, TaskState, TaskStatus, WorkerHeartbeat

from ._support import ContractSuite, unique

__all__ = ["ResultBackendContract"]

TTL = 0.5  # a time to live meant to run out during the test
PAST = 0.6  # long enough for TTL to pass, clear of the boundary
KEEP = 30.0  # a time to live that must not run out during the test


def status(task_id: str, state: TaskState, **fields: Any) -> TaskStatus:
    return TaskStatus(id=task_id, state=state, **fields)


class ResultBackendContract(ContractSuite):
    """The behaviour every :class:`stem.contracts.ResultBackend` must have.

    Subclass it as ``Test<YourBackend>`` and define a ``backend`` fixture that builds
    the backend on the ``clock`` fixture. Override ``other_backend`` to open a second
    connection to the same store when the backend is shared between processes.
    """

    subject_fixture = "backend"

    @pytest.fixture
    def backend(self, clock: Clock) -> ResultBackend:
        """The result backend under test, built on ``clock``; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `backend` fixture that builds the ResultBackend"
        )

    @pytest.fixture
    def other_backend(self, backend: ResultBackend) -> ResultBackend:
        """A second handle on the same store (by default the same object)."""
        return backend

    @pytest.fixture
    def task_id(self) -> str:
        return unique("task")

    @pytest.fixture
    def task_name(self) -> str:
        """A task name of this test's own, so listing by task sees only this test's statuses."""
        return unique("tasks.name")

    # -- statuses -------------------------------------------------------------------------

    async def test_set_then_get_round_trips(
        self, backend: ResultBackend, clock: Clock, task_id: str, task_name: str
    ) -> None:
        stored = status(
            task_id,
            TaskState.FAILED,
            task=task_name,
            queue="q",
            value={"answer": [1, 2.5, "three", None]},
            error=TaskError(type="ValueError", message="bad", traceback="Traceback..."),
            attempt=2,
            progress=0.5,
            progress_data={"step": 3},
            worker="w1",
            meta={"k": "v"},
            updated_at=clock.now(),
        )
        await backend.set_status(stored)
        got = await backend.get_status(task_id)
        assert got is not None
        for name in ("id", "state", "task", "queue", "value", "error", "attempt", "progress"):
            assert getattr(got, name) == getattr(stored, name), name
        assert (got.progress_data, got.worker, got.meta) == ({"step": 3}, "w1", {"k": "v"})
        assert got.updated_at == self.near(clock, clock.now())
        assert got.expires_at is None

    async def test_get_of_an_unknown_task_is_none(self, backend: ResultBackend) -> None:
        assert await backend.get_status(unique("unknown")) is None

    async def test_set_replaces_the_stored_status(
        self, backend: ResultBackend, task_id: str, task_name: str
    ) -> None:
        await backend.set_status(status(task_id, TaskState.STARTED, task=task_name))
        await backend.set_status(status(task_id, TaskState.SUCCEEDED, task=task_name, value=42))
        got = await backend.get_status(task_id)
        assert got is not None
        assert (got.state, got.value) == (TaskState.SUCCEEDED, 42)
        assert [s.id for s in await backend.list_statuses(task=task_name)] == [task_id]

    async def test_set_statuses_stores_each_in_order_with_its_ttl(
        self, backend: ResultBackend, clock: Clock, task_name: str
    ) -> None:
        # Given one batch holding two writes of one task (a worker's flush) and a brief one
        kept, brief = unique("kept"), unique("brief")
        await backend.set_statuses(
            [
                (status(kept, TaskState.STARTED, task=task_name), None),
                (status(brief, TaskState.SUCCEEDED, task=task_name), TTL),
                (status(kept, TaskState.SUCCEEDED, task=task_name, value=7), KEEP),
            ]
        )
        # Then the later write of a task wins, and each status has its own ttl
        got = await backend.get_statuses([kept, brief])
        assert (got[kept].state, got[kept].value) == (TaskState.SUCCEEDED, 7)
        assert got[brief].state is TaskState.SUCCEEDED
        await self.advance(clock, PAST)
        assert await backend.get_status(brief) is None
        assert [s.id for s in await backend.list_statuses(task=task_name)] == [kept]
        await backend.set_statuses([])

    async def test_stored_status_is_a_snapshot(self, backend: ResultBackend, task_id: str) -> None:
        # Given a stored status
        mine = status(task_id, TaskState.STARTED)
        await backend.set_status(mine)
        # When the caller changes its object afterwards, or the one it read back
        mine.state = TaskState.FAILED
        read = await backend.get_status(task_id)
        assert read is not None
        read.value = "changed"
        # Then the stored status is unchanged: a store keeps values, not references
        again = await backend.get_status(task_id)
        assert again is not None
        assert (again.state, again.value) == (TaskState.STARTED, None)

    async def test_status_with_ttl_expires(
        self, backend: ResultBackend, clock: Clock, task_id: str, task_name: str
    ) -> None:
        await backend.set_status(status(task_id, TaskState.SUCCEEDED, task=task_name), ttl=TTL)
        got = await backend.get_status(task_id)
        assert got is not None
        assert got.expires_at == self.near(clock, clock.now() + TTL)
        await self.advance(clock, PAST)
        assert await backend.get_status(task_id) is None
        assert await backend.get_statuses([task_id]) == {}
        assert await backend.list_statuses(task=task_name) == []
        assert await backend.expire(task_id, KEEP) is False

    async def test_status_without_ttl_stays(
        self, backend: ResultBackend, clock: Clock, task_id: str
    ) -> None:
        await backend.set_status(status(task_id, TaskState.SUCCEEDED), ttl=KEEP)
        # Replacing without a ttl drops the earlier ttl
        await backend.set_status(status(task_id, TaskState.SUCCEEDED))
        await self.advance(clock, PAST)
        got = await backend.get_status(task_id)
        assert got is not None
        assert got.expires_at is None

    async def test_expire_sets_a_time_to_live(
        self, backend: ResultBackend, clock: Clock, task_id: str
    ) -> None:
        await backend.set_status(status(task_id, TaskState.SUCCEEDED))
        assert await backend.expire(task_id, TTL) is True
        await self.advance(clock, TTL / 2)
        assert await backend.get_status(task_id) is not None
        await self.advance(clock, PAST - TTL / 2)
        assert await backend.get_status(task_id) is None
        assert await backend.expire(unique("unknown"), TTL) is False

    async def test_list_statuses_filters_and_orders_newest_first(
        self, backend: ResultBackend, clock: Clock, task_name: str
    ) -> None:
        other_name = unique("tasks.other")
        # Given statuses stored one after another, time passing in between
        plan = [
            ("a", TaskState.SUCCEEDED, task_name),
            ("b", TaskState.FAILED, task_name),
            ("c", TaskState.SUCCEEDED, other_name),
            ("d", TaskState.SUCCEEDED, task_name),
            ("e", TaskState.FAILED, task_name),
        ]
        ids: dict[str, str] = {}
        for label, state, name in plan:
            ids[label] = unique(label)
            await backend.set_status(status(ids[label], state, task=name, updated_at=clock.now()))
            await self.advance(clock, 0.01)

        def listed(statuses: list[TaskStatus]) -> list[str]:
            return [s.id for s in statuses]

        # Then filters combine, and the most recently updated come first
        assert listed(await backend.list_statuses(task=task_name)) == [
            ids["e"],
            ids["d"],
            ids["b"],
            ids["a"],
        ]
        assert listed(await backend.list_statuses(task=task_name, state=TaskState.SUCCEEDED)) == [
            ids["d"],
            ids["a"],
        ]
        assert listed(await backend.list_statuses(task=task_name, limit=2)) == [ids["e"], ids["d"]]
        assert await backend.list_statuses(task=task_name, state=TaskState.REVOKED) == []
        # A state filter alone: only that state (other tests' statuses may be there too)
        failed = await backend.list_statuses(state=TaskState.FAILED, limit=10_000)
        assert {s.state for s in failed} == {TaskState.FAILED}
        assert {ids["b"], ids["e"]} <= {s.id for s in failed}

    async def test_get_statuses_leaves_out_unknown_ids(self, backend: ResultBackend) -> None:
        known = [unique("known") for _ in range(3)]
        for task_id in known:
            await backend.set_status(status(task_id, TaskState.STARTED))
        found = await backend.get_statuses([*known, unique("unknown")])
        assert set(found) == set(known)
        assert all(found[i].id == i for i in known)
        assert await backend.get_statuses([]) == {}

    async def test_a_second_connection_reads_the_same_statuses(
        self, backend: ResultBackend, other_backend: ResultBackend, task_id: str
    ) -> None:
        await backend.set_status(status(task_id, TaskState.SUCCEEDED, value="done"))
        got = await other_backend.get_status(task_id)
        assert got is not None
        assert got.value == "done"

    # -- watch ----------------------------------------------------------------------------

    async def test_watch_yields_each_change_until_final(
        self, backend: ResultBackend, clock: Clock, task_id: str
    ) -> None:
        seen: asyncio.Queue[TaskState] = asyncio.Queue()

        async def watcher() -> None:
            async for s in backend.watch(task_id, timeout=3600):
                seen.put_nowait(s.state)

        task = asyncio.create_task(watcher())
        try:
            for state in (TaskState.RECEIVED, TaskState.STARTED, TaskState.SUCCEEDED):
                await backend.set_status(status(task_id, state))
                # A polling backend sees the change on its next poll: let that time pass
                got = await self.finish(
                    clock,
                    asyncio.ensure_future(seen.get()),
                    nudge=backend.poll_interval,
                    what="watch()",
                )
                assert got == state
            # The final state ends the watch
            await self.finish(
                clock, task, nudge=backend.poll_interval, what="watch() after a final state"
            )
        finally:
            task.cancel()
        assert seen.empty()

    async def test_watch_sees_a_change_made_while_its_caller_was_busy(
        self, backend: ResultBackend, clock: Clock, task_id: str
    ) -> None:
        # Given a watcher whose caller is busy with the first status it got
        await backend.set_status(status(task_id, TaskState.STARTED))
        got_first, busy = asyncio.Event(), asyncio.Event()
        seen: list[TaskState] = []

        async def slow_caller() -> None:
            async for s in backend.watch(task_id, timeout=3600):
                seen.append(s.state)
                got_first.set()
                await busy.wait()

        task = asyncio.create_task(slow_caller())
        await asyncio.wait_for(got_first.wait(), self.wait_limit)
        # When the task finishes meanwhile, and the caller then asks for more
        await backend.set_status(status(task_id, TaskState.SUCCEEDED))
        busy.set()
        # Then the watch still sees the change (on its next poll, for a polling backend)
        try:
            await self.finish(clock, task, nudge=backend.poll_interval, what="watch()")
        finally:
            task.cancel()
        assert seen == [TaskState.STARTED, TaskState.SUCCEEDED]

    async def test_watch_of_a_final_status_yields_it_once(
        self, backend: ResultBackend, clock: Clock, task_id: str
    ) -> None:
        await backend.set_status(status(task_id, TaskState.FAILED))

        async def collect() -> list[TaskState]:
            return [s.state async for s in backend.watch(task_id, timeout=3600)]

        states = await self.finish(clock, asyncio.create_task(collect()), what="watch()")
        assert states == [TaskState.FAILED]

    async def test_watch_stops_at_its_timeout(
        self, backend: ResultBackend, clock: Clock, task_id: str
    ) -> None:
        await backend.set_status(status(task_id, TaskState.STARTED))

        async def collect() -> list[TaskState]:
            return [s.state async for s in backend.watch(task_id, timeout=TTL)]

        task = asyncio.create_task(collect())
        await asyncio.sleep(0)
        await self.advance(clock, PAST)
        states = await self.finish(
            clock, task, nudge=backend.poll_interval, what="watch(timeout=...)"
        )
        assert states == [TaskState.STARTED]

    # -- groups and chords ------------------------------------------------------------------

    async def test_group_collects_results_until_complete(self, backend: ResultBackend) -> None:
        group_id = unique("group")
        await backend.init_group(group_id, 2, meta={"callback": "tasks.sum"})
        group = await backend.get_group(group_id)
        assert group is not None
        assert (group.id, group.size, group.results, group.meta) == (
            group_id,
            2,
            {},
            {"callback": "tasks.sum"},
        )
        assert group.complete is False
        assert group.chord_claimed_by is None

        first, second = unique("member"), unique("member")
        after_one = await backend.add_group_result(
            group_id, status(first, TaskState.SUCCEEDED, value=1)
        )
        assert after_one is not None
        assert set(after_one.results) == {first}
        assert after_one.complete is False

        after_two = await backend.add_group_result(group_id, status(second, TaskState.FAILED))
        assert after_two is not None
        assert set(after_two.results) == {first, second}
        assert after_two.complete is True
        assert after_two.results[first].value == 1
        assert after_two.results[second].state is TaskState.FAILED

        stored = await backend.get_group(group_id)
        assert stored is not None
        assert set(stored.results) == {first, second}
        assert stored.complete is True

    async def test_add_group_result_is_idempotent_per_task_id(self, backend: ResultBackend) -> None:
        group_id, member = unique("group"), unique("member")
        await backend.init_group(group_id, 2)
        await backend.add_group_result(group_id, status(member, TaskState.SUCCEEDED, value="first"))
        # The same member again (a redelivered task finishing twice) does not count twice
        again = await backend.add_group_result(
            group_id, status(member, TaskState.SUCCEEDED, value="second")
        )
        assert again is not None
        assert list(again.results) == [member]
        assert again.complete is False
        assert again.results[member].value == "first"

    async def test_unknown_group(self, backend: ResultBackend) -> None:
        group_id = unique("group")
        assert await backend.get_group(group_id) is None
        assert (
            await backend.add_group_result(group_id, status(unique("m"), TaskState.SUCCEEDED))
            is None
        )
        assert await backend.get_group(group_id) is None

    async def test_claim_chord_is_won_by_exactly_one_caller(
        self, backend: ResultBackend, other_backend: ResultBackend
    ) -> None:
        group_id = unique("group")
        await backend.init_group(group_id, 1)
        owners = [f"worker-{i}" for i in range(16)]
        handles = [backend if i % 2 == 0 else other_backend for i in range(len(owners))]
        wins = await asyncio.gather(
            *(h.claim_chord(group_id, owner) for h, owner in zip(handles, owners, strict=True))
        )
        assert sum(wins) == 1, f"{sum(wins)} callers claimed the chord"
        winner = owners[wins.index(True)]
        group = await other_backend.get_group(group_id)
        assert group is not None
        assert group.chord_claimed_by == winner
        # Later claims, even by the winner, are refused
        assert await backend.claim_chord(group_id, "late") is False
        assert await backend.claim_chord(group_id, winner) is False

    async def test_a_group_expires_with_its_ttl_and_refuses_late_results(
        self, backend: ResultBackend, other_backend: ResultBackend, clock: Clock
    ) -> None:
        group_id, early, late = unique("group"), unique("member"), unique("member")
        await backend.init_group(group_id, 2, ttl=TTL)
        assert await backend.add_group_result(group_id, status(early, TaskState.SUCCEEDED))
        await self.advance(clock, PAST)
        assert await other_backend.get_group(group_id) is None
        refused = await backend.add_group_result(group_id, status(late, TaskState.SUCCEEDED))
        assert refused is None
        assert await backend.claim_chord(group_id, "late") is False
        assert await other_backend.get_group(group_id) is None  # nothing was stored

    async def test_each_write_to_a_group_refreshes_its_expiry(
        self, backend: ResultBackend, clock: Clock
    ) -> None:
        group_id = unique("group")
        members = [unique("member") for _ in range(3)]
        await backend.init_group(group_id, 3, ttl=TTL)
        # Each write comes before the TTL runs out, though together they take longer
        for member in members[:2]:
            await self.advance(clock, TTL * 0.6)
            added = await backend.add_group_result(group_id, status(member, TaskState.SUCCEEDED))
            assert added is not None
        await self.advance(clock, TTL * 0.6)
        assert await backend.claim_chord(group_id, "owner") is True
        await self.advance(clock, TTL * 0.6)
        last = await backend.add_group_result(group_id, status(members[2], TaskState.SUCCEEDED))
        assert last is not None and last.complete
        # A group without a ttl never expires
        forever = unique("group")
        await backend.init_group(forever, 1)
        await self.advance(clock, PAST)
        assert await backend.get_group(forever) is not None

    async def test_init_group_again_starts_it_afresh(
        self, backend: ResultBackend, other_backend: ResultBackend, clock: Clock
    ) -> None:
        group_id, member = unique("group"), unique("member")
        await backend.init_group(group_id, 1, meta={"round": 1}, ttl=TTL)
        await backend.add_group_result(group_id, status(member, TaskState.SUCCEEDED))
        assert await backend.claim_chord(group_id, "first", meta={"callback": "cb-1"})
        await backend.init_group(group_id, 2, meta={"round": 2})
        group = await other_backend.get_group(group_id)
        assert group is not None
        assert (group.size, group.results, group.meta) == (2, {}, {"round": 2})
        assert (group.chord_claimed_by, group.chord_claimed_at, group.chord_meta) == (
            None,
            None,
            {},
        )
        await self.advance(clock, PAST)  # the new group has no ttl: it stays
        assert await other_backend.get_group(group_id) is not None
        assert await backend.claim_chord(group_id, "second") is True

    async def test_the_chord_claim_records_its_meta_and_time(
        self, backend: ResultBackend, other_backend: ResultBackend, clock: Clock
    ) -> None:
        group_id = unique("group")
        await backend.init_group(group_id, 1, ttl=KEEP)
        fresh = await backend.get_group(group_id)
        assert fresh is not None
        assert (fresh.chord_claimed_at, fresh.chord_meta) == (None, {})
        claimed_at = clock.now()
        assert await backend.claim_chord(group_id, "owner", meta={"callback": "cb-1"})
        assert await other_backend.claim_chord(group_id, "other", meta={"callback": "x"}) is False
        group = await other_backend.get_group(group_id)
        assert group is not None
        assert group.chord_claimed_by == "owner"
        assert group.chord_meta == {"callback": "cb-1"}
        assert group.chord_claimed_at == self.near(clock, claimed_at)

    # -- heartbeats -----------------------------------------------------------------------------

    def heartbeat(self, clock: Clock, worker_id: str, **fields: Any) -> WorkerHeartbeat:
        return WorkerHeartbeat(
            worker_id=worker_id,
            host="host-1",
            pid=4242,
            queues=["default", "mail"],
            concurrency=4,
            started_at=clock.now(),
            sent_at=clock.now(),
            **fields,
        )

    async def test_heartbeats_are_stored_listed_and_expire(
        self, backend: ResultBackend, clock: Clock
    ) -> None:
        brief, lasting = self.heartbeat(clock, unique("w")), self.heartbeat(clock, unique("w"))
        await backend.set_heartbeat(brief, ttl=TTL)
        await backend.set_heartbeat(lasting, ttl=KEEP)
        assert await backend.get_heartbeat(brief.worker_id) == brief
        live = {hb.worker_id: hb for hb in await backend.list_heartbeats()}
        assert live[brief.worker_id] == brief
        assert live[lasting.worker_id] == lasting

        await self.advance(clock, PAST)
        assert await backend.get_heartbeat(brief.worker_id) is None
        live = {hb.worker_id: hb for hb in await backend.list_heartbeats()}
        assert brief.worker_id not in live
        assert live[lasting.worker_id] == lasting

    async def test_heartbeat_set_replaces_and_renews(
        self, backend: ResultBackend, clock: Clock
    ) -> None:
        worker_id = unique("w")
        await backend.set_heartbeat(self.heartbeat(clock, worker_id), ttl=TTL)
        await self.advance(clock, TTL / 2)
        newer = self.heartbeat(clock, worker_id, processed=5, last_consumed_at=clock.now())
        await backend.set_heartbeat(newer, ttl=TTL)
        # The first ttl has passed, the second not yet
        await self.advance(clock, TTL / 2 + 0.1)
        assert await backend.get_heartbeat(worker_id) == newer
        assert [
            hb.processed for hb in await backend.list_heartbeats() if hb.worker_id == worker_id
        ] == [5]

    async def test_unknown_heartbeat_is_none(self, backend: ResultBackend) -> None:
        assert await backend.get_heartbeat(unique("w")) is None
