"""sqlite:// URLs, the entry point, the default file, and lazy opening."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import stem_sqlite
from stem import ConfigurationError, FakeClock, Stem
from stem._registry import get_adapter
from stem_sqlite import (
    SqliteBroker,
    SqliteLockStore,
    SqliteResultBackend,
    SqliteRevokeStore,
    SqliteScheduleStore,
    parse_url,
)

pytestmark = pytest.mark.sqlite


def test_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_url("sqlite:///data/stem.db").path == str(tmp_path / "data" / "stem.db")


def test_absolute_url_takes_four_slashes(tmp_path: Path) -> None:
    assert parse_url(f"sqlite:///{tmp_path}/stem.db").path == str(tmp_path / "stem.db")
    assert parse_url("sqlite:////var/lib/stem/stem.db").path == "/var/lib/stem/stem.db"


def test_url_options_are_seconds() -> None:
    options = parse_url("sqlite:////x/stem.db?poll_interval=0.2&busy_timeout=7&wake_interval=0.005")
    assert (options.poll_interval, options.busy_timeout, options.wake_interval) == (0.2, 7.0, 0.005)


def test_synchronous_comes_from_the_url_and_defaults_to_normal() -> None:
    assert parse_url("sqlite:////x/stem.db").synchronous == "normal"
    assert parse_url("sqlite:////x/stem.db?synchronous=full").synchronous == "full"
    assert parse_url("sqlite:////x/stem.db?synchronous=NORMAL").synchronous == "normal"


def test_percent_escapes_in_the_path_are_decoded() -> None:
    assert parse_url("sqlite:////tmp/my%20jobs.db").path == "/tmp/my jobs.db"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite://", "memory://"),
        ("sqlite:///", "memory://"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite://localhost/stem.db", "host"),
        ("sqlite:////x.db?timeout=3", "unknown option 'timeout'"),
        ("sqlite:////x.db?busy_timeout=soon", "number of seconds"),
        ("sqlite:////x.db?poll_interval=0", "more than 0"),
        ("sqlite:////x.db?busy_timeout=-1", "0 or more"),
        ("sqlite:////x.db?wake_interval=nan", "more than 0"),
        ("sqlite:////x.db?synchronous=off", "synchronous must be 'normal'"),
        ("sqlite:////x.db?synchronous=", "synchronous must be 'normal'"),
        ("sqlite:////x.db?synchronous=2", "or 'full'"),
        ("sqlite:////x.db?namespace=", "namespace must be a non-empty string"),
        ("redis:///x.db", "not a sqlite:// URL"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words.replace("(", r"\(")):
        parse_url(url)


def test_memory_path_refused_by_constructors_too() -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        SqliteBroker(":memory:")
    with pytest.raises(ConfigurationError, match="poll_interval"):
        SqliteBroker("x.db", poll_interval=-1)


def test_the_entry_point_gives_this_adapter() -> None:
    assert get_adapter("sqlite:///x.db") is stem_sqlite.adapter
    assert stem_sqlite.adapter.distribution == "stem-sqlite"


def test_adapter_builds_every_store_for_the_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/stem.db?busy_timeout=2&poll_interval=0.25"
    clock = FakeClock()
    adapter = stem_sqlite.adapter
    broker = adapter.broker(url, clock=clock)
    assert isinstance(broker, SqliteBroker)
    assert broker.clock is clock
    assert broker.poll_interval == 0.25
    assert isinstance(adapter.result_backend(url), SqliteResultBackend)
    assert isinstance(adapter.lock_store(url), SqliteLockStore)
    assert isinstance(adapter.revoke_store(url), SqliteRevokeStore)
    assert isinstance(adapter.schedule_store(url), SqliteScheduleStore)
    assert not (tmp_path / "stem.db").exists()  # nothing opened yet


@pytest.mark.usefixtures("no_stem_env")
async def test_no_url_at_all_uses_dot_stem_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an app built with no URL, in a fresh directory
    monkeypatch.chdir(tmp_path)
    app = Stem.from_url()
    assert isinstance(app.broker, SqliteBroker)
    assert app.broker.path == str(tmp_path / ".stem" / "stem.db")
    # Then nothing is created until it is used
    assert not (tmp_path / ".stem").exists()
    try:
        # When it is used, the directory and the file appear
        assert await app.broker.pending_count("default") == 0
        assert (tmp_path / ".stem" / "stem.db").is_file()
    finally:
        await app.aclose()


@pytest.mark.usefixtures("no_stem_env")
async def test_stores_of_one_app_share_one_connection(tmp_path: Path) -> None:
    app = Stem.from_url(f"sqlite:///{tmp_path}/stem.db")
    try:
        assert isinstance(app.broker, SqliteBroker)
        assert isinstance(app.backend, SqliteResultBackend)
        assert isinstance(app.lock_store, SqliteLockStore)
        first = await app.broker._db()
        assert await app.backend._db() is first
        assert await app.lock_store._db() is first
    finally:
        await app.aclose()


def test_relative_path_is_fixed_when_the_store_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broker = SqliteBroker("jobs.db")
    monkeypatch.chdir(os.path.dirname(tmp_path))
    assert broker.path == str(tmp_path / "jobs.db")
