"""The public surface of stem_sqlite, pinned."""

from __future__ import annotations

import pytest

import stem_sqlite
from stem.contracts import Adapter

pytestmark = pytest.mark.sqlite


def test_all_is_pinned() -> None:
    assert sorted(stem_sqlite.__all__) == [
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
    for name in stem_sqlite.__all__:
        assert getattr(stem_sqlite, name) is not None


def test_adapter_is_an_adapter() -> None:
    assert isinstance(stem_sqlite.adapter, Adapter)
    assert isinstance(stem_sqlite.adapter, stem_sqlite.SqliteAdapter)


def test_schema_version_is_the_newest_migration() -> None:
    assert stem_sqlite.SCHEMA_VERSION >= 1
