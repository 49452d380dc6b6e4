"""Every contract suite against the in-memory adapter, the reference implementation."""

from __future__ import annotations

import pytest

from stem import Clock
from stem.memory import MemoryBroker, MemoryLockStore, MemoryResultBackend, MemoryRevokeStore
from stem_adapter_tests import (
    BrokerContract,
    LockStoreContract,
    ResultBackendContract,
    RevokeStoreContract,
)

pytestmark = pytest.mark.memory


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    async def broker(self, clock: Clock) -> MemoryBroker:
        return MemoryBroker(clock=clock)


class TestMemoryResultBackend(ResultBackendContract):
    @pytest.fixture
    async def backend(self, clock: Clock) -> MemoryResultBackend:
        return MemoryResultBackend(clock=clock)


class TestMemoryLockStore(LockStoreContract):
    @pytest.fixture
    async def locks(self, clock: Clock) -> MemoryLockStore:
        return MemoryLockStore(clock=clock)


class TestMemoryRevokeStore(RevokeStoreContract):
    @pytest.fixture
    async def revokes(self, clock: Clock) -> MemoryRevokeStore:
        return MemoryRevokeStore(clock=clock)
