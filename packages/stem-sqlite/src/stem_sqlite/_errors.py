"""SQLite and file-system errors, translated at the boundary into Stem's own."""

from __future__ import annotations

import sqlite3

from stem import AdapterError

__all__ = ["translate", "translate_os_error"]


def translate(exc: sqlite3.Error, path: str, busy_timeout: float) -> AdapterError:
    """An AdapterError naming the file and what to do; the caller raises it ``from exc``."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return AdapterError(
            f"the SQLite database {path} is locked: another process has held a write lock on it "
            f"for longer than the busy timeout ({busy_timeout:g}s). Find the process that keeps "
            "a transaction open (a sqlite3 shell, a backup, a stuck program), or wait longer "
            "with ?busy_timeout=SECONDS in the sqlite:// URL"
        )
    if name == "SQLITE_NOTADB":
        return AdapterError(
            f"{path} is not a SQLite database (or it is encrypted): point the sqlite:// URL at "
            "another file, or move this one away. Stem did not change it"
        )
    if name.startswith("SQLITE_CANTOPEN"):
        return AdapterError(
            f"cannot open or create the SQLite database {path}: check that the path names a file "
            "(not a directory) and that its directory exists and is writable by this user"
        )
    if name.startswith("SQLITE_READONLY"):
        return AdapterError(
            f"the SQLite database {path} is read-only: make the file and its directory writable "
            f"by this user (SQLite also writes {path}-wal and {path}-shm beside it)"
        )
    if name.startswith("SQLITE_CORRUPT"):
        return AdapterError(
            f"the SQLite database {path} is corrupt: restore it from a backup, or try "
            f"`sqlite3 {path} .recover` into a new file"
        )
    if name.startswith("SQLITE_FULL"):
        return AdapterError(f"the disk holding the SQLite database {path} is full: free some space")
    if name.startswith("SQLITE_IOERR"):
        return AdapterError(
            f"I/O error on the SQLite database {path} ({exc}): check the disk; note that SQLite "
            "must not be used on a network file system"
        )
    return AdapterError(f"SQLite error on {path}: {exc}")


def translate_os_error(exc: OSError, path: str) -> AdapterError:
    """A failure to create the database's directory."""
    return AdapterError(
        f"cannot create the directory for the SQLite database {path}: {exc.strerror or exc}. "
        "Check that every parent of the path is a directory (not a file) and is writable"
    )
