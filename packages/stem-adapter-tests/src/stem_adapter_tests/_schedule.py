"""The ScheduleStore contract suite."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from stem import Clock
from stem.contracts import ScheduleEntry, ScheduleStore

from ._support import ContractSuite, unique

__all__ = ["ScheduleStoreContract"]


class ScheduleStoreContract(ContractSuite):
    """The behaviour every :class:`stem.contracts.ScheduleStore` must have.

    Subclass it as ``Test<YourScheduleStore>`` and define a ``schedules`` fixture that
    builds the store on the ``clock`` fixture. Override ``other_schedules`` to open a
    second connection to the same store when it is shared between processes (several
    beat processes may run for availability).

    Due times are given by the caller (``due(now)``), so the suite needs no clock
    travel; it reads ``clock.now()`` only as a base for the times it writes.
    """

    subject_fixture = "schedules"

    @pytest.fixture
    def schedules(self, clock: Clock) -> ScheduleStore:
        """The schedule store under test, built on ``clock``; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `schedules` fixture that builds the ScheduleStore"
        )

    @pytest.fixture
    def other_schedules(self, schedules: ScheduleStore) -> ScheduleStore:
        """A second handle on the same store (by default the same object)."""
        return schedules

    @staticmethod
    def entry(**fields: Any) -> ScheduleEntry:
        """A small interval entry with a fresh id; ``fields`` override any field."""
        values: dict[str, Any] = {
            "id": unique("entry"),
            "task": "reports.send",
            "kind": "interval",
            "spec": {"every": 60.0},
        }
        values.update(fields)
        return ScheduleEntry(**values)

    async def mine(self, store: ScheduleStore, ids: set[str]) -> dict[str, ScheduleEntry]:
        """The listed entries among ``ids``, by id (other tests may share the store)."""
        return {e.id: e for e in await store.list() if e.id in ids}

    async def due_ids(
        self, store: ScheduleStore, now: float, ids: set[str], limit: int = 100
    ) -> list[str]:
        """The ids ``due(now)`` returns among ``ids``, in the order it returns them."""
        return [e.id for e in await store.due(now, limit=limit) if e.id in ids]

    # -- upsert, get, list, remove ----------------------------------------------------------

    async def test_every_field_round_trips(self, schedules: ScheduleStore, clock: Clock) -> None:
        entry = ScheduleEntry(
            id=unique("日報 ✓ {beat}:"),
            task="reports.daily_digest",
            kind="cron",
            spec={
                "expr": "*/5 9-17 * * mon-fri",
                "tz": "Europe/Zürich",
                "nested": {"list": [1, 2.5, None, True, "δ"], "empty": {}, "none": None},
            },
            args=[1, "two", [3, [4]], {"five": 5}, None, 6.25, False, ""],
            kwargs={"ключ": "значение", "n": 1.25, "deep": {"a": [{"b": None}]}},
            queue="reports",
            enabled=True,
            next_run_at=clock.now() + 0.123456,
            last_run_at=clock.now() - 59.987654,
            last_drift=0.012345,
            total_runs=7,
            meta={"owner": "ops", "tags": ["a", "b"], "emoji": "⏰"},
        )
        await schedules.upsert(entry)
        assert await schedules.get(entry.id) == entry
        assert (await self.mine(schedules, {entry.id}))[entry.id] == entry
        assert [e for e in await schedules.due(entry.next_run_at or 0) if e.id == entry.id] == [
            entry
        ]

    async def test_defaults_round_trip(self, schedules: ScheduleStore) -> None:
        entry = ScheduleEntry(id=unique("entry"), task="t", kind="clocked", spec={})
        await schedules.upsert(entry)
        assert await schedules.get(entry.id) == entry

    async def test_an_unknown_entry_is_none_and_removing_it_is_false(
        self, schedules: ScheduleStore
    ) -> None:
        entry_id = unique("entry")
        assert await schedules.get(entry_id) is None
        assert await schedules.remove(entry_id) is False
        assert await self.mine(schedules, {entry_id}) == {}

    async def test_upsert_replaces_the_entry(self, schedules: ScheduleStore, clock: Clock) -> None:
        first = self.entry(next_run_at=clock.now() + 30)
        await schedules.upsert(first)
        changed = msgspec.structs.replace(
            first, spec={"every": 60.0}, args=["x"], queue="other", next_run_at=clock.now() + 60
        )
        await schedules.upsert(changed)
        assert await schedules.get(first.id) == changed
        assert list((await self.mine(schedules, {first.id})).values()) == [changed]
        # The due time follows the replacement: the old one is gone
        assert await self.due_ids(schedules, clock.now() + 45, {first.id}) == []
        assert await self.due_ids(schedules, clock.now() + 60, {first.id}) == [first.id]

    async def test_list_returns_every_entry(self, schedules: ScheduleStore, clock: Clock) -> None:
        entries = [
            self.entry(next_run_at=clock.now() + 10),
            self.entry(enabled=False),
            self.entry(kind="clocked", spec={"at": clock.now() + 5}, next_run_at=None),
        ]
        for entry in entries:
            await schedules.upsert(entry)
        assert await self.mine(schedules, {e.id for e in entries}) == {e.id: e for e in entries}

    async def test_remove_deletes_the_entry_and_its_due_time(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        kept, gone = self.entry(next_run_at=clock.now()), self.entry(next_run_at=clock.now())
        await schedules.upsert(kept)
        await schedules.upsert(gone)
        assert await schedules.remove(gone.id) is True
        assert await schedules.get(gone.id) is None
        assert await schedules.remove(gone.id) is False
        ids = {kept.id, gone.id}
        assert set(await self.mine(schedules, ids)) == {kept.id}
        assert await self.due_ids(schedules, clock.now() + 1, ids) == [kept.id]

    # -- due ------------------------------------------------------------------------------

    async def test_due_returns_enabled_entries_in_due_order(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        base = clock.now()
        third = self.entry(next_run_at=base + 3)
        first = self.entry(id=unique("ünïcode ✓"), next_run_at=base + 1)
        second = self.entry(next_run_at=base + 2)
        exactly_now = self.entry(next_run_at=base + 5)
        later = self.entry(next_run_at=base + 10)
        disabled = self.entry(next_run_at=base, enabled=False)
        never = self.entry(next_run_at=None)
        entries = [third, first, second, exactly_now, later, disabled, never]
        for entry in entries:
            await schedules.upsert(entry)
        ids = {e.id for e in entries}
        due = [e for e in await schedules.due(base + 5) if e.id in ids]
        # Due means next_run_at <= now, oldest first; whole entries come back
        assert due == [first, second, third, exactly_now]
        assert await self.due_ids(schedules, base, ids) == []
        assert await self.due_ids(schedules, base + 100, ids) == [
            first.id,
            second.id,
            third.id,
            exactly_now.id,
            later.id,
        ]

    async def test_due_returns_at_most_limit_entries_the_oldest_first(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        # Times before the clock's, so entries of other tests sharing the store are not
        # among the oldest
        base = clock.now() - 1_000_000
        entries = [self.entry(next_run_at=base + offset) for offset in (4, 2, 5, 1, 3)]
        for entry in entries:
            await schedules.upsert(entry)
        ids = {e.id for e in entries}
        by_time = [e.id for e in sorted(entries, key=lambda e: e.next_run_at or 0)]
        assert await self.due_ids(schedules, base + 10, ids, limit=2) == by_time[:2]
        assert await self.due_ids(schedules, base + 10, ids, limit=100) == by_time

    async def test_disabled_entries_are_never_due(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        entry = self.entry(next_run_at=clock.now() - 10)
        await schedules.upsert(entry)
        assert await self.due_ids(schedules, clock.now(), {entry.id}) == [entry.id]
        # Disabled by an admin: not due at any time, still listed
        await schedules.upsert(msgspec.structs.replace(entry, enabled=False))
        assert await self.due_ids(schedules, clock.now() + 1e9, {entry.id}) == []
        assert set(await self.mine(schedules, {entry.id})) == {entry.id}
        # Enabled again: due again
        await schedules.upsert(entry)
        assert await self.due_ids(schedules, clock.now(), {entry.id}) == [entry.id]

    # -- mark_executed --------------------------------------------------------------------

    async def test_mark_executed_records_the_run_and_moves_the_due_time(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        base = clock.now()
        entry = self.entry(next_run_at=base, total_runs=3, meta={"keep": "me"})
        await schedules.upsert(entry)
        await schedules.mark_executed(
            entry.id, ran_at=base + 0.25, next_run_at=base + 60, drift=0.25
        )
        after = await schedules.get(entry.id)
        assert after == msgspec.structs.replace(
            entry, last_run_at=base + 0.25, next_run_at=base + 60, last_drift=0.25, total_runs=4
        )
        assert await self.due_ids(schedules, base + 59, {entry.id}) == []
        assert await self.due_ids(schedules, base + 60, {entry.id}) == [entry.id]

    async def test_mark_executed_without_a_next_run_leaves_it_never_due(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        # A clocked entry runs once
        entry = self.entry(kind="clocked", spec={"at": clock.now()}, next_run_at=clock.now())
        await schedules.upsert(entry)
        await schedules.mark_executed(entry.id, ran_at=clock.now(), next_run_at=None, drift=0.0)
        after = await schedules.get(entry.id)
        assert after is not None and after.next_run_at is None and after.total_runs == 1
        assert await self.due_ids(schedules, clock.now() + 1e9, {entry.id}) == []

    async def test_mark_executed_keeps_a_disabled_entry_out_of_due(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        # Disabled while a beat was running it: the beat's record must not enable it
        entry = self.entry(next_run_at=clock.now(), enabled=False)
        await schedules.upsert(entry)
        await schedules.mark_executed(
            entry.id, ran_at=clock.now(), next_run_at=clock.now() + 60, drift=0.0
        )
        after = await schedules.get(entry.id)
        assert after is not None and after.enabled is False and after.total_runs == 1
        assert await self.due_ids(schedules, clock.now() + 1e9, {entry.id}) == []

    async def test_mark_executed_of_a_removed_entry_does_not_bring_it_back(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        entry = self.entry(next_run_at=clock.now())
        await schedules.upsert(entry)
        await schedules.remove(entry.id)
        await schedules.mark_executed(
            entry.id, ran_at=clock.now(), next_run_at=clock.now() + 60, drift=0.0
        )
        assert await schedules.get(entry.id) is None
        assert await self.due_ids(schedules, clock.now() + 1e9, {entry.id}) == []

    # -- several processes ----------------------------------------------------------------

    async def test_a_second_connection_sees_every_write(
        self, schedules: ScheduleStore, other_schedules: ScheduleStore, clock: Clock
    ) -> None:
        entry = self.entry(next_run_at=clock.now())
        await schedules.upsert(entry)
        assert await other_schedules.get(entry.id) == entry
        assert await self.due_ids(other_schedules, clock.now(), {entry.id}) == [entry.id]
        # The other beat runs it; the first sees the record
        await other_schedules.mark_executed(
            entry.id, ran_at=clock.now(), next_run_at=clock.now() + 60, drift=0.5
        )
        after = await schedules.get(entry.id)
        assert after is not None and (after.total_runs, after.last_drift) == (1, 0.5)
        assert await self.due_ids(schedules, clock.now(), {entry.id}) == []
        assert await other_schedules.remove(entry.id) is True
        assert await schedules.get(entry.id) is None

    async def test_concurrent_mark_executed_loses_no_run(
        self, schedules: ScheduleStore, other_schedules: ScheduleStore, clock: Clock
    ) -> None:
        """Each mark is atomic: none is lost, and no entry mixes fields of two marks.

        The contract has no compare-and-set, so two beats that both mark one due run
        both succeed (each counts); a lock keeps beats from running one entry twice.
        """
        base = clock.now()
        entry = self.entry(next_run_at=base)
        await schedules.upsert(entry)
        handles = [schedules, other_schedules] * 5
        await asyncio.gather(
            *(
                handle.mark_executed(
                    entry.id, ran_at=base + i, next_run_at=base + 60 + i, drift=float(i)
                )
                for i, handle in enumerate(handles)
            )
        )
        after = await other_schedules.get(entry.id)
        assert after is not None and after.total_runs == len(handles)
        # Every field of the run from one and the same mark
        assert after.last_run_at is not None
        i = round(after.last_run_at - base)
        assert (after.next_run_at, after.last_drift) == (base + 60 + i, float(i))
        assert await self.due_ids(schedules, base + 60 + i, {entry.id}) == [entry.id]
        assert await self.due_ids(schedules, base + 60 + i - 0.5, {entry.id}) == []
