"""``sqlite://`` URLs: the file they name and the options they carry."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from stem import ConfigurationError

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_NAMESPACE",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_SYNCHRONOUS",
    "DEFAULT_WAKE_INTERVAL",
    "SYNCHRONOUS_LEVELS",
    "SqliteOptions",
    "check_namespace",
    "check_synchronous",
    "parse_url",
]

#: Longest an idle consumer waits before it reads its queues again (seconds).
DEFAULT_POLL_INTERVAL = 0.5
#: How long a statement waits for another process's write lock before failing (seconds).
DEFAULT_BUSY_TIMEOUT = 5.0
#: Longest gap between two checks for work committed by other processes (seconds).
DEFAULT_WAKE_INTERVAL = 0.01
#: SQLite's ``synchronous`` setting: ``normal`` survives a crash of any program using the
#: file (WAL mode); ``full`` also a power loss or a kernel crash, at an fsync per commit.
DEFAULT_SYNCHRONOUS = "normal"
SYNCHRONOUS_LEVELS = ("normal", "full")
#: The namespace of beat entries when none is given: apps sharing a file and a namespace
#: share their entries.
DEFAULT_NAMESPACE = "default"

_MEMORY_HINT = (
    "an in-memory SQLite database cannot be shared between processes; "
    "use memory:// for a store private to this process, or sqlite:///path/to/stem.db"
)
_FORM_HINT = (
    "use sqlite:///relative/path.db (from the working directory) or sqlite:////absolute/path.db"
)


@dataclass(frozen=True, slots=True)
class SqliteOptions:
    """Where the database lives and how to talk to it.

    Attributes:
        path: the database file, absolute.
        poll_interval: longest idle wait of a consumer between two reads of its queues.
        busy_timeout: how long to wait for another process's write lock.
        wake_interval: longest gap between two checks for work from other processes.
        synchronous: ``"normal"`` or ``"full"``: what a commit survives (see
            :data:`DEFAULT_SYNCHRONOUS`).
        namespace: whose beat entries the schedule store sees, and whose events the event
            bus carries (the other stores ignore it).
    """

    path: str
    poll_interval: float = DEFAULT_POLL_INTERVAL
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    wake_interval: float = DEFAULT_WAKE_INTERVAL
    synchronous: str = DEFAULT_SYNCHRONOUS
    namespace: str = DEFAULT_NAMESPACE


def resolve_path(path: str | os.PathLike[str]) -> str:
    """The absolute path of a database file; refuses in-memory databases.

    The working directory is read now, not when the file is first opened, so an app
    built at import time keeps the file it was given even if the process moves.
    """
    text = os.fspath(path)
    if not text or text == ":memory:" or text.startswith("file::memory:"):
        raise ConfigurationError(f"no SQLite database file given: {_MEMORY_HINT}")
    return os.path.abspath(text)


def check_seconds(name: str, value: float, *, allow_zero: bool = True) -> float:
    """A non-negative, finite number of seconds, or a ConfigurationError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        floor = "0 or more" if allow_zero else "more than 0"
        raise ConfigurationError(f"{name} must be {floor} seconds, not {value!r}")
    return seconds


def check_synchronous(value: object) -> str:
    """``"normal"`` or ``"full"`` (any case), or a ConfigurationError saying what each means."""
    if isinstance(value, str) and value.lower() in SYNCHRONOUS_LEVELS:
        return value.lower()
    raise ConfigurationError(
        f"synchronous must be 'normal' (the default: a commit survives a crash of any program "
        f"using the file) or 'full' (it also survives a power loss or an operating system "
        f"crash, at the cost of an fsync per commit), not {value!r}"
    )


def check_namespace(value: object) -> str:
    """A namespace of beat entries: a non-empty string, or a ConfigurationError."""
    if isinstance(value, str) and value:
        return value
    raise ConfigurationError(
        f"namespace must be a non-empty string naming the app whose beat entries these are "
        f"(apps sharing one file keep their entries apart by it), not {value!r}"
    )


def parse_url(url: str) -> SqliteOptions:
    """Parse a ``sqlite://`` URL, SQLAlchemy style.

    ``sqlite:///stem.db`` is relative to the working directory, ``sqlite:////var/lib/stem.db``
    is absolute. Query options: ``poll_interval``, ``busy_timeout``, ``wake_interval``
    (seconds), ``synchronous`` (``normal`` or ``full``) and ``namespace`` (whose beat
    entries the schedule store sees).

    Raises:
        ConfigurationError: not a sqlite URL, no file (or ``:memory:``), a host, or a bad option.
    """
    try:
        parts = urlsplit(url)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"malformed SQLite URL {url!r}: {exc}") from exc
    if parts.scheme.lower() != "sqlite" or "://" not in url:
        raise ConfigurationError(f"{url!r} is not a sqlite:// URL: {_FORM_HINT}")
    if parts.netloc:
        raise ConfigurationError(
            f"{url!r} names a host ({parts.netloc!r}), but SQLite is a local file: {_FORM_HINT}"
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path or path == ":memory:":
        raise ConfigurationError(f"{url!r} names no database file: {_MEMORY_HINT}")
    values: dict[str, float] = {}
    synchronous, namespace = DEFAULT_SYNCHRONOUS, DEFAULT_NAMESPACE
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        if key == "synchronous":
            synchronous = check_synchronous(raw)
            continue
        if key == "namespace":
            namespace = check_namespace(raw)
            continue
        if key not in ("poll_interval", "busy_timeout", "wake_interval"):
            raise ConfigurationError(
                f"unknown option {key!r} in {url!r}; sqlite:// URLs take poll_interval, "
                "busy_timeout and wake_interval (seconds), synchronous (normal or full) "
                "and namespace (whose beat entries the schedule store sees)"
            )
        try:
            number = float(raw)
        except ValueError as exc:
            raise ConfigurationError(
                f"option {key} in {url!r} must be a number of seconds, not {raw!r}"
            ) from exc
        values[key] = check_seconds(key, number, allow_zero=key == "busy_timeout")
    return SqliteOptions(
        path=resolve_path(path), synchronous=synchronous, namespace=namespace, **values
    )
