"""The RevokeStore contract suite."""

from __future__ import annotations

import msgspec
import pytest

from stem import Clock
from stem.contracts import RevokeEntry, RevokeStore

from ._support import ContractSuite, unique

__all__ = ["RevokeStoreContract"]

TTL = 0.5  # an entry meant to run out during the test
PAST = 0.6  # long enough for TTL to pass, clear of the boundary


class RevokeStoreContract(ContractSuite):
    """The behaviour every :class:`stem.contracts.RevokeStore` must have.

    Subclass it as ``Test<YourRevokeStore>`` and define a ``revokes`` fixture that
    builds the store on the ``clock`` fixture. Override ``other_revokes`` to open a
    second connection to the same store when it is shared between processes.
    """

    subject_fixture = "revokes"

    @pytest.fixture
    def revokes(self, clock: Clock) -> RevokeStore:
        """The revoke store under test, built on ``clock``; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `revokes` fixture that builds the RevokeStore"
        )

    @pytest.fixture
    def other_revokes(self, revokes: RevokeStore) -> RevokeStore:
        """A second handle on the same store (by default the same object)."""
        return revokes

    async def mine(
        self, store: RevokeStore, task_ids: set[str], since: int | None = None
    ) -> list[str]:
        """The listed task ids among ``task_ids``, in listed order (other tests may share the store)."""
        return [e.task_id for e in await store.list(since=since) if e.task_id in task_ids]

    async def test_revoke_then_get(self, revokes: RevokeStore, clock: Clock) -> None:
        entry = RevokeEntry(
            task_id=unique("task"), terminate=True, reason="stop it", revoked_at=clock.now()
        )
        stored = await revokes.revoke(entry)
        assert stored.seq > 0
        assert msgspec.structs.replace(stored, seq=0) == entry
        assert await revokes.get(entry.task_id) == stored
        assert await revokes.is_revoked(entry.task_id) is True

    async def test_unknown_task_is_not_revoked(self, revokes: RevokeStore) -> None:
        task_id = unique("task")
        assert await revokes.get(task_id) is None
        assert await revokes.is_revoked(task_id) is False
        assert await self.mine(revokes, {task_id}) == []

    async def test_list_is_in_commit_order_whatever_the_timestamps(
        self, revokes: RevokeStore, clock: Clock
    ) -> None:
        base = clock.now()
        # Given entries recorded in one order with timestamps in another (a clock that
        # stepped back, or a timestamp taken before a slow write)
        entries = [
            RevokeEntry(task_id=unique("task"), revoked_at=base + offset)
            for offset in (3.0, 1.0, 2.0)
        ]
        stored = [await revokes.revoke(e) for e in entries]
        ids = {e.task_id for e in entries}
        # Then they list, and number, in the order they were recorded
        assert [s.seq for s in stored] == sorted(s.seq for s in stored)
        assert len({s.seq for s in stored}) == 3
        assert await self.mine(revokes, ids) == [e.task_id for e in entries]

    async def test_since_returns_exactly_what_was_recorded_after(
        self, revokes: RevokeStore, clock: Clock
    ) -> None:
        first = await revokes.revoke(RevokeEntry(task_id=unique("task"), revoked_at=clock.now()))
        # A reader that has seen ``first`` ...
        seen = max(e.seq for e in await revokes.list())
        assert seen >= first.seq
        # ... then a revocation stamped earlier than ``first`` but recorded after it
        late = await revokes.revoke(
            RevokeEntry(task_id=unique("task"), revoked_at=clock.now() - 3600)
        )
        # is found by reading since what the reader saw; nothing it saw comes again
        after = await revokes.list(since=seen)
        assert [e.task_id for e in after] == [late.task_id]
        assert await revokes.list(since=late.seq) == []

    async def test_revoking_again_replaces_the_entry_and_lists_it_anew(
        self, revokes: RevokeStore, clock: Clock
    ) -> None:
        task_id = unique("task")
        old = await revokes.revoke(RevokeEntry(task_id=task_id, revoked_at=clock.now()))
        newer = RevokeEntry(
            task_id=task_id, terminate=True, reason="now terminate", revoked_at=clock.now()
        )
        stored = await revokes.revoke(newer)
        # A worker that saw the first revocation must see the change (terminate now set)
        assert stored.seq > old.seq
        assert await revokes.get(task_id) == stored
        assert [e.task_id for e in await revokes.list(since=old.seq)] == [task_id]
        assert await self.mine(revokes, {task_id}) == [task_id]

    async def test_entries_with_expires_at_disappear(
        self, revokes: RevokeStore, clock: Clock
    ) -> None:
        brief = RevokeEntry(
            task_id=unique("task"), revoked_at=clock.now(), expires_at=clock.now() + TTL
        )
        lasting = RevokeEntry(task_id=unique("task"), revoked_at=clock.now())
        await revokes.revoke(brief)
        lasting = await revokes.revoke(lasting)
        ids = {brief.task_id, lasting.task_id}
        assert await revokes.is_revoked(brief.task_id) is True
        assert sorted(await self.mine(revokes, ids)) == sorted(ids)

        await self.advance(clock, PAST)
        assert await revokes.get(brief.task_id) is None
        assert await revokes.is_revoked(brief.task_id) is False
        assert await self.mine(revokes, ids) == [lasting.task_id]
        assert await revokes.get(lasting.task_id) == lasting

    async def test_a_second_connection_sees_revocations(
        self, revokes: RevokeStore, other_revokes: RevokeStore, clock: Clock
    ) -> None:
        entry = await revokes.revoke(RevokeEntry(task_id=unique("task"), revoked_at=clock.now()))
        assert await other_revokes.get(entry.task_id) == entry
