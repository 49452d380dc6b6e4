"""Schema versions: numbered SQL files applied in order, once, whoever opens the file first.

``stem_schema`` holds the version of the newest migration applied. Migrations run
inside ``BEGIN IMMEDIATE``, so when several processes open a new file at once one
applies them and the others, once its write lock is released, find the version
already current and apply nothing.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from dataclasses import dataclass
from importlib.resources import files

from stem import SchemaVersionError

__all__ = ["Migration", "latest_version", "migrate", "migrations", "split_statements"]

_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> tuple[str, ...]:
    """The statements of a SQL script, one per line that completes a statement.

    ``executescript`` cannot be used: it commits any open transaction first, which
    would let a second process in between our version check and the migration.
    """
    statements: list[str] = []
    pending: list[str] = []
    for line in sql.splitlines(keepends=True):
        pending.append(line)
        text = "".join(pending)
        if sqlite3.complete_statement(text):
            statements.append(text.strip())
            pending.clear()
    rest = "\n".join(
        line
        for line in "".join(pending).splitlines()
        if line.strip() and not line.strip().startswith("--")
    )
    if rest:
        raise ValueError(f"incomplete SQL statement at the end of a migration: {rest[:80]!r}")
    return tuple(statements)


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """The migrations shipped in ``stem_sqlite/migrations``, in version order."""
    found: list[Migration] = []
    for entry in files("stem_sqlite").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(
            Migration(int(match.group(1)), entry.name, split_statements(entry.read_text("utf-8")))
        )
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(
            f"stem-sqlite migrations are not numbered 1..n: {[m.name for m in found]}"
        )
    return tuple(found)


def latest_version() -> int:
    """The schema version this stem-sqlite writes."""
    return migrations()[-1].version


def read_version(conn: sqlite3.Connection) -> int | None:
    """The schema version stored in the file, or None if Stem never wrote to it."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stem_schema'"
    ).fetchone()
    if exists is None:
        return None
    row = conn.execute("SELECT version FROM stem_schema WHERE id = 1").fetchone()
    return None if row is None else int(row[0])


def check_version(version: int | None, path: str) -> None:
    """Refuse a file written by a newer stem-sqlite, before anything is written to it."""
    latest = latest_version()
    if version is not None and version > latest:
        raise SchemaVersionError(
            f"the SQLite database {path} has schema version {version}, but this stem-sqlite "
            f"only knows versions up to {latest}: it was written by a newer stem-sqlite. "
            "Upgrade stem-sqlite (pip install -U stem-sqlite) in this environment, or point "
            "Stem at another file. The file was not changed."
        )


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the file's schema up to date; returns the version it is at now.

    ``conn`` must be in autocommit mode (``isolation_level=None``).

    Raises:
        SchemaVersionError: the file was written by a newer stem-sqlite.
    """
    latest = latest_version()
    current = read_version(conn)
    check_version(current, path)
    if current == latest:
        return latest  # the common case: no write lock taken at all
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS stem_schema ("
            " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
        )
        current = read_version(conn)  # another process may have migrated while we waited
        check_version(current, path)
        for migration in migrations():
            if current is not None and migration.version <= current:
                continue
            for statement in migration.statements:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO stem_schema (id, version) VALUES (1, ?)"
            " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            (latest,),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return latest
