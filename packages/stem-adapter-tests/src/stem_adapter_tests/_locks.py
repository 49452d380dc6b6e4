"""The LockStore contract suite."""

from __future__ import annotations

import asyncio

import pytest

from stem import Clock
from stem.contracts import LockStore

from ._support import ContractSuite, unique

__all__ = ["LockStoreContract"]

TTL = 0.5  # a lock meant to run out during the test
PAST = 0.6  # long enough for TTL to pass, clear of the boundary
KEEP = 30.0  # a lock that must not run out during the test


class LockStoreContract(ContractSuite):
    """The behaviour every :class:`stem.contracts.LockStore` must have.

    Subclass it as ``Test<YourLockStore>`` and define a ``locks`` fixture that builds
    the store on the ``clock`` fixture. Override ``other_locks`` to open a second
    connection to the same store when it is shared between processes.
    """

    subject_fixture = "locks"

    @pytest.fixture
    def locks(self, clock: Clock) -> LockStore:
        """The lock store under test, built on ``clock``; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `locks` fixture that builds the LockStore"
        )

    @pytest.fixture
    def other_locks(self, locks: LockStore) -> LockStore:
        """A second handle on the same store (by default the same object)."""
        return locks

    @pytest.fixture
    def key(self) -> str:
        return unique("lock")

    async def test_acquire_is_exclusive(self, locks: LockStore, key: str) -> None:
        assert await locks.owner_of(key) is None
        assert await locks.acquire(key, "alice", KEEP) is True
        assert await locks.acquire(key, "bob", KEEP) is False
        assert await locks.owner_of(key) == "alice"

    async def test_keys_are_independent(self, locks: LockStore, key: str) -> None:
        other_key = unique("lock")
        assert await locks.acquire(key, "alice", KEEP) is True
        assert await locks.acquire(other_key, "bob", KEEP) is True
        assert (await locks.owner_of(key), await locks.owner_of(other_key)) == ("alice", "bob")

    async def test_reacquire_by_the_owner_refreshes(
        self, locks: LockStore, clock: Clock, key: str
    ) -> None:
        assert await locks.acquire(key, "alice", TTL) is True
        await self.advance(clock, 0.3)
        # Acquiring again moves the end to 0.3 + 0.5 = 0.8
        assert await locks.acquire(key, "alice", TTL) is True
        await self.advance(clock, 0.3)  # 0.6: past the first end
        assert await locks.owner_of(key) == "alice"
        assert await locks.acquire(key, "bob", KEEP) is False
        await self.advance(clock, 0.3)  # 0.9: past the second end
        assert await locks.owner_of(key) is None

    async def test_only_the_owner_renews(self, locks: LockStore, clock: Clock, key: str) -> None:
        assert await locks.acquire(key, "alice", TTL) is True
        assert await locks.renew(key, "bob", KEEP) is False
        await self.advance(clock, 0.3)
        # Renewing moves the end to 0.3 + 0.5 = 0.8
        assert await locks.renew(key, "alice", TTL) is True
        await self.advance(clock, 0.3)  # 0.6
        assert await locks.owner_of(key) == "alice"
        await self.advance(clock, 0.3)  # 0.9
        assert await locks.owner_of(key) is None

    async def test_renew_of_a_free_key_fails(self, locks: LockStore, key: str) -> None:
        assert await locks.renew(key, "alice", KEEP) is False
        assert await locks.owner_of(key) is None

    async def test_only_the_owner_releases(self, locks: LockStore, key: str) -> None:
        assert await locks.acquire(key, "alice", KEEP) is True
        assert await locks.release(key, "bob") is False
        assert await locks.owner_of(key) == "alice"
        assert await locks.release(key, "alice") is True
        assert await locks.owner_of(key) is None
        assert await locks.release(key, "alice") is False
        assert await locks.acquire(key, "bob", KEEP) is True

    async def test_an_expired_lock_is_free(self, locks: LockStore, clock: Clock, key: str) -> None:
        assert await locks.acquire(key, "alice", TTL) is True
        await self.advance(clock, TTL / 2)
        assert await locks.owner_of(key) == "alice"
        await self.advance(clock, PAST - TTL / 2)
        assert await locks.owner_of(key) is None
        # The old owner lost it: it cannot renew it back
        assert await locks.renew(key, "alice", KEEP) is False
        assert await locks.acquire(key, "bob", KEEP) is True
        assert await locks.owner_of(key) == "bob"
        assert await locks.release(key, "alice") is False
        assert await locks.owner_of(key) == "bob"

    async def test_concurrent_acquires_have_one_winner(
        self, locks: LockStore, other_locks: LockStore, key: str
    ) -> None:
        owners = [f"owner-{i}" for i in range(16)]
        handles = [locks if i % 2 == 0 else other_locks for i in range(len(owners))]
        wins = await asyncio.gather(
            *(h.acquire(key, owner, KEEP) for h, owner in zip(handles, owners, strict=True))
        )
        assert sum(wins) == 1, f"{sum(wins)} owners acquired one lock"
        winner = owners[wins.index(True)]
        assert await locks.owner_of(key) == winner
        assert await other_locks.owner_of(key) == winner
