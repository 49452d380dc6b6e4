"""The pytest plugin of stem-adapter-tests, loaded through its ``pytest11`` entry point.

It registers the backend markers (so ``-m redis`` works under ``--strict-markers`` in
any project that runs the suites) and gives server fixtures :func:`skip_or_fail`:
on a laptop without a Redis or PostgreSQL server their tests skip, saying how to get
one; in CI, with ``STEM_TEST_REQUIRE_ALL=1``, the same tests fail instead.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["MARKERS", "REQUIRE_ALL_ENV", "require_all", "skip_or_fail"]

#: Markers that select a backend, by name.
MARKERS = {
    "memory": "runs against the in-memory adapter",
    "sqlite": "runs against the SQLite adapter",
    "redis": "needs a Redis server",
    "postgres": "needs a PostgreSQL server",
}

#: The environment variable that turns a missing server from a skip into a failure.
REQUIRE_ALL_ENV = "STEM_TEST_REQUIRE_ALL"


def require_all() -> bool:
    """Whether a test whose server is missing must fail rather than skip."""
    return os.environ.get(REQUIRE_ALL_ENV, "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the current test because something it needs is missing, or fail it in CI.

    For fixtures that start or find a server. Capability skips
    (:func:`stem_adapter_tests.requires`) do not use this: an adapter that lacks a
    feature is not a broken environment.

    Raises:
        pytest.skip.Exception: normally.
        pytest.fail.Exception: when ``STEM_TEST_REQUIRE_ALL`` is set (to anything but 0).
    """
    if require_all():
        pytest.fail(
            f"{reason} ({REQUIRE_ALL_ENV} is set, so this fails instead of skipping)", pytrace=False
        )
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    # The workspace's own pyproject registers these too; registering a marker twice
    # would list it twice in `pytest --markers`, so only add the missing ones.
    registered = {
        line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")
    }
    for name, description in MARKERS.items():
        if name not in registered:
            config.addinivalue_line("markers", f"{name}: {description}")


def pytest_report_header(config: pytest.Config) -> str | None:
    if require_all():
        return f"stem: {REQUIRE_ALL_ENV} is set: tests whose server is missing fail"
    return None
