"""The kill -9 harness lives with the soak tool (tools/soak/kill_harness.py); the suite runs it shorter.

``stem_url`` runs a test once per backend its workers can share: a SQLite file in the
test's directory, and a Redis server (the session's, under a key prefix of the test's own;
see ``redis_url`` in tests/conftest.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "tools" / "soak"
HERE = Path(__file__).resolve().parent  # _stem_procs.py, the process harness
for folder in (SOAK, HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def stem_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL the test's workers and producer share: ``sqlite:///<tmp>/stem.db``, or Redis."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'stem.db'}"
    url: str = request.getfixturevalue("redis_url")  # only Redis runs need a server
    return url
