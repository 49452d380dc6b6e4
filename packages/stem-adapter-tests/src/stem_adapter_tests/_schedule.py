"""The ScheduleStore contract suite."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from stem import Clock, ScheduleConflictError
from stem.contracts import ScheduleEntry, ScheduleStore

from ._support import ContractSuite, unique

__all__ = ["ScheduleStoreContract"]

#: A claim meant to run out during the test, and enough time for it to (with a margin).
CLAIM = 0.5
PAST = 0.6
#: A claim that must not run out during the test.
HOLD = 30.0


class ScheduleStoreContract(ContractSuite):
    """The behaviour every :class:`stem.contracts.ScheduleStore` must have.

    Subclass it as ``Test<YourScheduleStore>`` and define a ``schedules`` fixture that
    builds the store on the ``clock`` fixture. Override ``other_schedules`` to open a
    second connection to the same store when it is shared between processes (several
    beat processes may run for availability).

    Due times are given by the caller (``due(now)``); claims last ``claim_ttl`` on the
    store's clock, which the suite moves with ``advance``. Override ``foreign_schedules``
    to return a store of another namespace on the same server (or file).
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

    @pytest.fixture
    def foreign_schedules(self, clock: Clock) -> ScheduleStore:
        """A store of another namespace on the same server; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `foreign_schedules` fixture: a store of "
            "another namespace (another prefix) on the same server or file"
        )

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
        self,
        store: ScheduleStore,
        now: float,
        ids: set[str],
        limit: int = 100,
        owner: str = "beat-1",
        claim_ttl: float = HOLD,
    ) -> list[str]:
        """The ids ``due(now)`` claims among ``ids``, in the order it returns them."""
        found = await store.due(now, owner=owner, claim_ttl=claim_ttl, limit=limit)
        return [e.id for e in found if e.id in ids]

    async def stored(self, store: ScheduleStore, entry: ScheduleEntry) -> ScheduleEntry:
        """Store a new entry; returns it as stored (version 1)."""
        return await store.upsert(entry)

    async def fire(
        self, store: ScheduleStore, entry: ScheduleEntry, *, owner: str = "beat-1", **fields: Any
    ) -> bool:
        """Record the firing of ``entry`` (claimed by ``owner``) at its due time."""
        assert entry.next_run_at is not None
        values: dict[str, Any] = {
            "ran_at": entry.next_run_at + 0.25,
            "next_run_at": entry.next_run_at + 60,
            "drift": 0.25,
        }
        values.update(fields)
        return await store.mark_executed(entry.id, owner=owner, due_at=entry.next_run_at, **values)

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
            options={"priority": 7, "headers": {"x": "y"}},
            enabled=True,
            jitter=2.5,
            catch_up="each",
            catch_up_limit=3,
            next_run_at=clock.now() + 0.123456,
            last_run_at=clock.now() - 59.987654,
            last_drift=0.012345,
            total_runs=7,
            last_error="unknown task",
            meta={"owner": "ops", "tags": ["a", "b"], "emoji": "⏰"},
        )
        stored = await schedules.upsert(entry)
        assert stored == msgspec.structs.replace(entry, version=1)
        assert await schedules.get(entry.id) == stored
        assert (await self.mine(schedules, {entry.id}))[entry.id] == stored
        [claimed] = [
            e
            for e in await schedules.due(entry.next_run_at or 0, owner="b", claim_ttl=HOLD)
            if e.id == entry.id
        ]
        assert claimed == msgspec.structs.replace(
            stored, claimed_by="b", claimed_until=self.near(clock, clock.now() + HOLD)
        )

    async def test_defaults_round_trip(self, schedules: ScheduleStore) -> None:
        entry = ScheduleEntry(id=unique("entry"), task="t", kind="clocked", spec={})
        stored = await schedules.upsert(entry)
        assert stored.version == 1
        assert await schedules.get(entry.id) == stored

    async def test_an_unknown_entry_is_none_and_removing_it_is_false(
        self, schedules: ScheduleStore
    ) -> None:
        entry_id = unique("entry")
        assert await schedules.get(entry_id) is None
        assert await schedules.remove(entry_id) is False
        assert await self.mine(schedules, {entry_id}) == {}

    async def test_writes_are_versioned_and_a_stale_write_conflicts(
        self, schedules: ScheduleStore, other_schedules: ScheduleStore, clock: Clock
    ) -> None:
        first = await self.stored(schedules, self.entry(next_run_at=clock.now() + 30))
        changed = msgspec.structs.replace(
            first, spec={"every": 60.0}, args=["x"], queue="other", next_run_at=clock.now() + 60
        )
        second = await schedules.upsert(changed)
        assert second == msgspec.structs.replace(changed, version=2)
        assert await other_schedules.get(first.id) == second
        # A writer holding the old version is refused, and changes nothing
        with pytest.raises(ScheduleConflictError):
            await other_schedules.upsert(msgspec.structs.replace(first, queue="stale"))
        with pytest.raises(ScheduleConflictError):  # creating one that exists
            await schedules.upsert(msgspec.structs.replace(first, version=0))
        with pytest.raises(ScheduleConflictError):  # replacing one that does not exist
            await schedules.upsert(self.entry(version=3))
        assert await schedules.get(first.id) == second
        # The due time follows the replacement
        assert await self.due_ids(schedules, clock.now() + 45, {first.id}) == []
        assert await self.due_ids(schedules, clock.now() + 60, {first.id}) == [first.id]

    async def test_concurrent_writers_of_one_version_have_one_winner(
        self, schedules: ScheduleStore, other_schedules: ScheduleStore
    ) -> None:
        entry = await self.stored(schedules, self.entry())
        results = await asyncio.gather(
            *(
                store.upsert(msgspec.structs.replace(entry, queue=f"q{i}"))
                for i, store in enumerate([schedules, other_schedules] * 3)
            ),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, ScheduleEntry)]
        assert len(won) == 1 and won[0].version == 2
        assert all(isinstance(r, ScheduleConflictError) for r in results if r not in won)
        assert await schedules.get(entry.id) == won[0]

    async def test_list_returns_every_entry(self, schedules: ScheduleStore, clock: Clock) -> None:
        entries = [
            self.entry(next_run_at=clock.now() + 10),
            self.entry(enabled=False),
            self.entry(kind="clocked", spec={"at": clock.now() + 5}, next_run_at=None),
        ]
        stored = [await schedules.upsert(entry) for entry in entries]
        assert await self.mine(schedules, {e.id for e in entries}) == {e.id: e for e in stored}

    async def test_remove_deletes_the_entry_and_its_due_time(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        kept = await self.stored(schedules, self.entry(next_run_at=clock.now()))
        gone = await self.stored(schedules, self.entry(next_run_at=clock.now()))
        assert await schedules.remove(gone.id) is True
        assert await schedules.get(gone.id) is None
        assert await schedules.remove(gone.id) is False
        ids = {kept.id, gone.id}
        assert set(await self.mine(schedules, ids)) == {kept.id}
        assert await self.due_ids(schedules, clock.now() + 1, ids) == [kept.id]

    # -- due and claims -------------------------------------------------------------------

    async def test_due_claims_enabled_entries_in_due_order(
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
        assert await self.due_ids(schedules, base, ids) == []
        # Due means next_run_at <= now, oldest first
        assert await self.due_ids(schedules, base + 5, ids) == [
            first.id,
            second.id,
            third.id,
            exactly_now.id,
        ]
        # Those are claimed now: only the later one is handed out next
        assert await self.due_ids(schedules, base + 100, ids, owner="beat-2") == [later.id]
        got = await schedules.get(first.id)
        assert got is not None and got.claimed_by == "beat-1"

    async def test_due_claims_at_most_limit_entries_the_oldest_first(
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
        assert await self.due_ids(schedules, base + 10, ids, limit=100) == by_time[2:]

    async def test_a_claim_runs_out_and_the_entry_is_due_to_another_beat(
        self, schedules: ScheduleStore, other_schedules: ScheduleStore, clock: Clock
    ) -> None:
        entry = await self.stored(schedules, self.entry(next_run_at=clock.now() - 1))
        ids = {entry.id}
        assert await self.due_ids(schedules, clock.now(), ids, claim_ttl=CLAIM) == [entry.id]
        assert await self.due_ids(other_schedules, clock.now(), ids, owner="beat-2") == []
        await self.advance(clock, PAST)
        # The first beat died: the second gets the same firing, and the first's record of
        # it is refused
        assert await self.due_ids(other_schedules, clock.now(), ids, owner="beat-2") == [entry.id]
        assert await self.fire(schedules, entry, owner="beat-1") is False
        assert await self.fire(other_schedules, entry, owner="beat-2") is True

    async def test_two_beats_never_get_the_same_firing(
        self, schedules: ScheduleStore, other_schedules: ScheduleStore, clock: Clock
    ) -> None:
        entries = [
            await self.stored(schedules, self.entry(next_run_at=clock.now() - 1)) for _ in range(20)
        ]
        ids = {e.id for e in entries}
        a, b = await asyncio.gather(
            self.due_ids(schedules, clock.now(), ids, owner="a"),
            self.due_ids(other_schedules, clock.now(), ids, owner="b"),
        )
        assert not set(a) & set(b)
        assert set(a) | set(b) == ids

    async def test_release_makes_the_entry_due_again_at_once(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        entry = await self.stored(schedules, self.entry(next_run_at=clock.now()))
        assert await self.due_ids(schedules, clock.now(), {entry.id}) == [entry.id]
        assert await schedules.release(entry.id, "someone-else") is False
        assert await schedules.release(entry.id, "beat-1") is True
        assert await self.due_ids(schedules, clock.now(), {entry.id}, owner="b2") == [entry.id]

    async def test_disabled_entries_are_never_due(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        entry = await self.stored(schedules, self.entry(next_run_at=clock.now() - 10))
        # Disabled by an admin: not due at any time, still listed
        off = await schedules.upsert(msgspec.structs.replace(entry, enabled=False))
        assert await self.due_ids(schedules, clock.now() + 1e9, {entry.id}) == []
        assert set(await self.mine(schedules, {entry.id})) == {entry.id}
        # Enabled again: due again
        await schedules.upsert(msgspec.structs.replace(off, enabled=True))
        assert await self.due_ids(schedules, clock.now(), {entry.id}) == [entry.id]

    # -- mark_executed --------------------------------------------------------------------

    async def test_mark_executed_records_the_firing_and_moves_the_due_time(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        base = clock.now()
        entry = await self.stored(
            schedules, self.entry(next_run_at=base, total_runs=3, meta={"keep": "me"})
        )
        assert await self.due_ids(schedules, base, {entry.id}) == [entry.id]
        assert await self.fire(schedules, entry) is True
        after = await schedules.get(entry.id)
        assert after == msgspec.structs.replace(
            entry,
            last_run_at=base + 0.25,
            next_run_at=base + 60,
            last_drift=0.25,
            total_runs=4,
            version=2,
        )
        # Recorded once: the same firing again is refused
        assert await self.fire(schedules, entry) is False
        assert await self.due_ids(schedules, base + 59, {entry.id}) == []
        assert await self.due_ids(schedules, base + 60, {entry.id}) == [entry.id]

    async def test_mark_executed_needs_the_claim_on_that_firing(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        entry = await self.stored(schedules, self.entry(next_run_at=clock.now()))
        assert await self.fire(schedules, entry) is False  # never claimed
        assert await self.due_ids(schedules, clock.now(), {entry.id}) == [entry.id]
        assert await self.fire(schedules, entry, owner="beat-2") is False  # not its claim
        other_time = msgspec.structs.replace(entry, next_run_at=(entry.next_run_at or 0) - 1)
        assert await self.fire(schedules, other_time) is False  # another firing
        after = await schedules.get(entry.id)
        assert after is not None and (after.total_runs, after.version) == (0, 1)

    async def test_a_failed_firing_records_its_error_and_moves_on(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        entry = await self.stored(schedules, self.entry(next_run_at=clock.now()))
        await self.due_ids(schedules, clock.now(), {entry.id})
        assert await self.fire(schedules, entry, error="task 'nope' is not registered") is True
        after = await schedules.get(entry.id)
        assert after is not None
        assert (after.last_error, after.total_runs) == ("task 'nope' is not registered", 0)
        assert after.claimed_by is None

    async def test_mark_executed_without_a_next_run_leaves_it_never_due(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        # A clocked entry runs once
        entry = await self.stored(
            schedules, self.entry(kind="clocked", spec={"at": clock.now()}, next_run_at=clock.now())
        )
        await self.due_ids(schedules, clock.now(), {entry.id})
        assert await self.fire(schedules, entry, next_run_at=None) is True
        after = await schedules.get(entry.id)
        assert after is not None and after.next_run_at is None and after.total_runs == 1
        assert await self.due_ids(schedules, clock.now() + 1e9, {entry.id}) == []

    async def test_an_entry_changed_while_claimed_is_not_recorded_over(
        self, schedules: ScheduleStore, clock: Clock
    ) -> None:
        # Disabled (or removed) while a beat was firing it: the beat's record is refused
        entry = await self.stored(schedules, self.entry(next_run_at=clock.now()))
        await self.due_ids(schedules, clock.now(), {entry.id})
        changed = await schedules.upsert(
            msgspec.structs.replace(entry, enabled=False, next_run_at=clock.now() + 3600)
        )
        assert changed.claimed_by == "beat-1"  # the claim is the beat's, not the writer's
        assert await self.fire(schedules, entry) is False
        after = await schedules.get(entry.id)
        assert after is not None and after.enabled is False and after.total_runs == 0
        gone = await self.stored(schedules, self.entry(next_run_at=clock.now()))
        await self.due_ids(schedules, clock.now(), {gone.id})
        await schedules.remove(gone.id)
        assert await self.fire(schedules, gone) is False
        assert await schedules.get(gone.id) is None

    # -- several processes ----------------------------------------------------------------

    async def test_a_second_connection_sees_every_write(
        self, schedules: ScheduleStore, other_schedules: ScheduleStore, clock: Clock
    ) -> None:
        entry = await self.stored(schedules, self.entry(next_run_at=clock.now()))
        assert await other_schedules.get(entry.id) == entry
        assert await self.due_ids(other_schedules, clock.now(), {entry.id}) == [entry.id]
        # The other beat runs it; the first sees the record
        assert await self.fire(other_schedules, entry, drift=0.5) is True
        after = await schedules.get(entry.id)
        assert after is not None and (after.total_runs, after.last_drift) == (1, 0.5)
        assert await other_schedules.remove(entry.id) is True
        assert await schedules.get(entry.id) is None

    async def test_namespaces_isolate_apps_sharing_a_store(
        self, schedules: ScheduleStore, foreign_schedules: ScheduleStore, clock: Clock
    ) -> None:
        entry = await self.stored(schedules, self.entry(next_run_at=clock.now()))
        assert await foreign_schedules.get(entry.id) is None
        assert entry.id not in {e.id for e in await foreign_schedules.list()}
        found = await foreign_schedules.due(clock.now() + 1, owner="x", claim_ttl=HOLD)
        assert entry.id not in {e.id for e in found}
        # The same id in the other namespace is another entry
        theirs = await foreign_schedules.upsert(msgspec.structs.replace(entry, version=0))
        assert theirs.version == 1
        assert await foreign_schedules.remove(entry.id) is True
        assert await schedules.get(entry.id) == entry
