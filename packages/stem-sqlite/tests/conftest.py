"""Fixtures for the stem-sqlite tests: a FakeClock and a fresh database path per test."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from stem import FakeClock
from stem_sqlite import SqliteBroker
from stem_sqlite._connection import Database
from stem_sqlite._schema import migrations


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "stem.db"


@pytest.fixture
async def broker(db_path: Path, clock: FakeClock) -> AsyncIterator[SqliteBroker]:
    subject = SqliteBroker(db_path, clock=clock)
    yield subject
    await subject.aclose()


@pytest.fixture
def no_stem_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STEM_URL", "STEM_BACKEND_URL", "STEM_WORKFLOW_URL"):
        monkeypatch.delenv(name, raising=False)


async def _until_sleeping(clock: FakeClock) -> None:
    for _ in range(100_000):
        if clock.sleepers:
            return
        await asyncio.sleep(0)
    raise AssertionError("nothing started sleeping on the FakeClock")


@pytest.fixture
def until_sleeping() -> Callable[[FakeClock], Awaitable[None]]:
    """Wait (yielding to the loop) until something sleeps on the FakeClock."""
    return _until_sleeping


def _run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a snippet in a fresh interpreter: another process on the same file."""
    return _run_python


@contextmanager
def _traced(db: Database) -> Iterator[list[str]]:
    """Every statement run on ``db``'s two connections (the thread's and the loop's), in order."""
    seen: list[str] = []
    connections = [c for c in (db._raw, db._direct) if c is not None]
    for conn in connections:
        conn.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        for conn in connections:
            conn.set_trace_callback(None)


Traced = Callable[[Database], AbstractContextManager[list[str]]]


@pytest.fixture
def traced() -> Traced:
    """``with traced(db) as statements:`` records every statement run on ``db``'s two
    connections (the thread's and the loop's), in order."""
    return _traced


def commits(statements: list[str]) -> int:
    """How many transactions ``statements`` committed."""
    return sum(1 for s in statements if s.strip().upper() == "COMMIT")


@pytest.fixture
def count_commits() -> Callable[[list[str]], int]:
    return commits


@contextmanager
def _file_at_version(path: Path, version: int) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "CREATE TABLE stem_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
        )
        for migration in migrations()[:version]:
            for statement in migration.statements:
                conn.execute(statement)
        conn.execute("INSERT INTO stem_schema (id, version) VALUES (1, ?)", (version,))
        yield conn
        conn.commit()
    finally:
        conn.close()


@pytest.fixture
def file_at_version() -> Callable[[Path, int], AbstractContextManager[sqlite3.Connection]]:
    """``with file_at_version(path, 2) as conn:`` makes a file as an older Stem left it,
    at that schema version, and lets the test put rows in it."""
    return _file_at_version
