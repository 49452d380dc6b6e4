"""Contract test suites for Stem adapters.

Each suite is a pytest class to subclass (its name does not start with ``Test``, so
pytest collects only your subclass), taking its subject from one fixture you define::

    class TestMyBroker(BrokerContract):
        @pytest.fixture
        async def broker(self, clock, tmp_path):
            broker = MyBroker(path=tmp_path / "db", clock=clock)
            yield broker
            await broker.aclose()

See the package README for the fixtures each suite uses and for capability flags.
"""

from __future__ import annotations

from ._backend import ResultBackendContract
from ._broker import BrokerContract
from ._control import ControlChannelContract
from ._events import EventBusContract
from ._locks import LockStoreContract
from ._ratelimit import RateLimiterContract
from ._revoke import RevokeStoreContract
from ._schedule import ScheduleStoreContract
from ._support import requires
from ._workflow import WorkflowStoreContract
from ._workflow_engine import WorkflowScriptContract
from .plugin import skip_or_fail

__all__ = [
    "BrokerContract",
    "ControlChannelContract",
    "EventBusContract",
    "LockStoreContract",
    "RateLimiterContract",
    "ResultBackendContract",
    "RevokeStoreContract",
    "ScheduleStoreContract",
    "WorkflowScriptContract",
    "WorkflowStoreContract",
    "requires",
    "skip_or_fail",
]
