"""Every contract suite against the SQLite adapter.

The subject opens the test's own database file; the ``other_*`` fixtures open a second
connection to the same file (``share_connection=False``), as another process would, so
the suites' concurrency tests race two connections and two SQLite threads for real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stem import Clock
from stem_adapter_tests import (
    BrokerContract,
    EventBusContract,
    LockStoreContract,
    ResultBackendContract,
    RevokeStoreContract,
    ScheduleStoreContract,
    WorkflowScriptContract,
    WorkflowStoreContract,
)
from stem_sqlite import (
    SqliteBroker,
    SqliteEventBus,
    SqliteLockStore,
    SqliteResultBackend,
    SqliteRevokeStore,
    SqliteScheduleStore,
    SqliteWorkflowStore,
)

pytestmark = pytest.mark.sqlite


class TestSqliteBroker(BrokerContract):
    @pytest.fixture
    async def broker(self, clock: Clock, tmp_path: Path) -> AsyncIterator[SqliteBroker]:
        broker = SqliteBroker(tmp_path / "stem.db", clock=clock)
        yield broker
        await broker.aclose()

    @pytest.fixture
    async def other_broker(self, broker: SqliteBroker, clock: Clock) -> AsyncIterator[SqliteBroker]:
        other = SqliteBroker(broker.path, clock=clock, share_connection=False)
        yield other
        await other.aclose()

    @pytest.fixture
    async def companion_backend(
        self, broker: SqliteBroker, clock: Clock
    ) -> AsyncIterator[SqliteResultBackend]:
        backend = SqliteResultBackend(broker.path, clock=clock)  # the same file: one transaction
        yield backend
        await backend.aclose()

    @pytest.fixture
    async def companion_locks(
        self, broker: SqliteBroker, clock: Clock
    ) -> AsyncIterator[SqliteLockStore]:
        locks = SqliteLockStore(broker.path, clock=clock)
        yield locks
        await locks.aclose()


class TestSqliteResultBackend(ResultBackendContract):
    @pytest.fixture
    async def backend(self, clock: Clock, tmp_path: Path) -> AsyncIterator[SqliteResultBackend]:
        backend = SqliteResultBackend(tmp_path / "stem.db", clock=clock)
        yield backend
        await backend.aclose()

    @pytest.fixture
    async def other_backend(
        self, backend: SqliteResultBackend, clock: Clock
    ) -> AsyncIterator[SqliteResultBackend]:
        other = SqliteResultBackend(backend.path, clock=clock, share_connection=False)
        yield other
        await other.aclose()


class TestSqliteLockStore(LockStoreContract):
    @pytest.fixture
    async def locks(self, clock: Clock, tmp_path: Path) -> AsyncIterator[SqliteLockStore]:
        locks = SqliteLockStore(tmp_path / "stem.db", clock=clock)
        yield locks
        await locks.aclose()

    @pytest.fixture
    async def other_locks(
        self, locks: SqliteLockStore, clock: Clock
    ) -> AsyncIterator[SqliteLockStore]:
        other = SqliteLockStore(locks.path, clock=clock, share_connection=False)
        yield other
        await other.aclose()


class TestSqliteRevokeStore(RevokeStoreContract):
    @pytest.fixture
    async def revokes(self, clock: Clock, tmp_path: Path) -> AsyncIterator[SqliteRevokeStore]:
        revokes = SqliteRevokeStore(tmp_path / "stem.db", clock=clock)
        yield revokes
        await revokes.aclose()

    @pytest.fixture
    async def other_revokes(
        self, revokes: SqliteRevokeStore, clock: Clock
    ) -> AsyncIterator[SqliteRevokeStore]:
        other = SqliteRevokeStore(revokes.path, clock=clock, share_connection=False)
        yield other
        await other.aclose()


class TestSqliteScheduleStore(ScheduleStoreContract):
    @pytest.fixture
    async def schedules(self, clock: Clock, tmp_path: Path) -> AsyncIterator[SqliteScheduleStore]:
        schedules = SqliteScheduleStore(tmp_path / "stem.db", clock=clock)
        yield schedules
        await schedules.aclose()

    @pytest.fixture
    async def other_schedules(
        self, schedules: SqliteScheduleStore, clock: Clock
    ) -> AsyncIterator[SqliteScheduleStore]:
        other = SqliteScheduleStore(schedules.path, clock=clock, share_connection=False)
        yield other
        await other.aclose()

    @pytest.fixture
    async def foreign_schedules(
        self, schedules: SqliteScheduleStore, clock: Clock
    ) -> AsyncIterator[SqliteScheduleStore]:
        foreign = SqliteScheduleStore(schedules.path, clock=clock, namespace="another-app")
        yield foreign
        await foreign.aclose()


class TestSqliteWorkflowStore(WorkflowStoreContract):
    @pytest.fixture
    async def workflows(self, clock: Clock, tmp_path: Path) -> AsyncIterator[SqliteWorkflowStore]:
        workflows = SqliteWorkflowStore(tmp_path / "stem.db", clock=clock)
        yield workflows
        await workflows.aclose()

    @pytest.fixture
    async def other_workflows(
        self, workflows: SqliteWorkflowStore, clock: Clock
    ) -> AsyncIterator[SqliteWorkflowStore]:
        other = SqliteWorkflowStore(workflows.path, clock=clock, share_connection=False)
        yield other
        await other.aclose()


class TestSqliteWorkflowScripts(WorkflowScriptContract):
    @pytest.fixture
    async def workflows(self, clock: Clock, tmp_path: Path) -> AsyncIterator[SqliteWorkflowStore]:
        workflows = SqliteWorkflowStore(tmp_path / "stem.db", clock=clock, poll_interval=0.05)
        yield workflows
        await workflows.aclose()


class TestSqliteEventBus(EventBusContract):
    @pytest.fixture
    async def events(self, clock: Clock, tmp_path: Path) -> AsyncIterator[SqliteEventBus]:
        events = SqliteEventBus(tmp_path / "stem.db", clock=clock)
        yield events
        await events.aclose()

    @pytest.fixture
    async def other_events(
        self, events: SqliteEventBus, clock: Clock
    ) -> AsyncIterator[SqliteEventBus]:
        other = SqliteEventBus(events.path, clock=clock, share_connection=False)
        yield other
        await other.aclose()

    @pytest.fixture
    async def foreign_events(
        self, events: SqliteEventBus, clock: Clock
    ) -> AsyncIterator[SqliteEventBus]:
        # The same file, another app: its own namespace
        foreign = SqliteEventBus(events.path, clock=clock, namespace="another-app")
        yield foreign
        await foreign.aclose()
