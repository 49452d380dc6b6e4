"""Stem on SQLite: the embedded default, no server needed.

One file on disk holds the broker's queues, task results, locks, revocations,
beat schedules and workflow runs; the producers and workers of one machine share
it, and it survives restarts::

    from stem import Stem

    app = Stem.from_url("sqlite:///stem.db")          # relative to the working directory
    app = Stem.from_url("sqlite:////var/lib/app/stem.db?busy_timeout=10")

With no URL at all, Stem uses ``sqlite:///.stem/stem.db``. The classes can also be
built directly, from a path::

    broker = SqliteBroker("stem.db", poll_interval=0.5)
"""

from __future__ import annotations

from ._adapter import SqliteAdapter
from ._backend import SqliteResultBackend
from ._broker import SqliteBroker
from ._events import SqliteEventBus
from ._schema import latest_version
from ._stores import SqliteLockStore, SqliteRevokeStore, SqliteScheduleStore
from ._url import SqliteOptions, parse_url
from ._workflow import SqliteWorkflowStore

__all__ = [
    "SCHEMA_VERSION",
    "SqliteAdapter",
    "SqliteBroker",
    "SqliteEventBus",
    "SqliteLockStore",
    "SqliteOptions",
    "SqliteResultBackend",
    "SqliteRevokeStore",
    "SqliteScheduleStore",
    "SqliteWorkflowStore",
    "adapter",
    "parse_url",
]

#: The schema version this stem-sqlite writes (the newest migration it ships).
SCHEMA_VERSION: int = latest_version()

#: The adapter the ``stem.adapters`` entry point names for ``sqlite://``.
adapter = SqliteAdapter()
