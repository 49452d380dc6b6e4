"""The ``sqlite://`` adapter, registered in the ``stem.adapters`` entry-point group."""

from __future__ import annotations

from stem import Clock
from stem.contracts import Adapter

from ._backend import SqliteResultBackend
from ._broker import SqliteBroker
from ._events import SqliteEventBus
from ._stores import SqliteLockStore, SqliteRevokeStore, SqliteScheduleStore
from ._url import parse_url
from ._workflow import SqliteWorkflowStore

__all__ = ["SqliteAdapter"]


class SqliteAdapter(Adapter):
    """Builds SQLite brokers and stores from ``sqlite:///path`` URLs.

    Stores built from URLs naming the same file share one connection per event loop.
    The options (``poll_interval``, ``busy_timeout``, ``wake_interval``, ``synchronous``)
    apply to each store built from the URL, and ``namespace`` to the schedule store and
    the event bus; the first store to open a file sets its ``busy_timeout``, and
    ``synchronous=full`` from any store sharing it applies to all.

    Raises (from every method):
        ConfigurationError: the URL is not a usable ``sqlite://`` URL.
    """

    distribution = "stem-sqlite"

    def broker(self, url: str, *, clock: Clock | None = None) -> SqliteBroker:
        o = parse_url(url)
        return SqliteBroker(
            o.path,
            clock=clock,
            poll_interval=o.poll_interval,
            busy_timeout=o.busy_timeout,
            wake_interval=o.wake_interval,
            synchronous=o.synchronous,
        )

    def result_backend(self, url: str, *, clock: Clock | None = None) -> SqliteResultBackend:
        o = parse_url(url)
        return SqliteResultBackend(
            o.path,
            clock=clock,
            busy_timeout=o.busy_timeout,
            wake_interval=o.wake_interval,
            synchronous=o.synchronous,
        )

    def lock_store(self, url: str, *, clock: Clock | None = None) -> SqliteLockStore:
        o = parse_url(url)
        return SqliteLockStore(
            o.path, clock=clock, busy_timeout=o.busy_timeout, synchronous=o.synchronous
        )

    def revoke_store(self, url: str, *, clock: Clock | None = None) -> SqliteRevokeStore:
        o = parse_url(url)
        return SqliteRevokeStore(
            o.path, clock=clock, busy_timeout=o.busy_timeout, synchronous=o.synchronous
        )

    def schedule_store(self, url: str, *, clock: Clock | None = None) -> SqliteScheduleStore:
        o = parse_url(url)
        return SqliteScheduleStore(
            o.path,
            clock=clock,
            namespace=o.namespace,
            busy_timeout=o.busy_timeout,
            synchronous=o.synchronous,
        )

    def workflow_store(self, url: str, *, clock: Clock | None = None) -> SqliteWorkflowStore:
        o = parse_url(url)
        return SqliteWorkflowStore(
            o.path,
            clock=clock,
            poll_interval=o.poll_interval,
            busy_timeout=o.busy_timeout,
            wake_interval=o.wake_interval,
            synchronous=o.synchronous,
        )

    def event_bus(self, url: str, *, clock: Clock | None = None) -> SqliteEventBus:
        """Live events between the processes sharing the file, in the URL's ``namespace``."""
        o = parse_url(url)
        return SqliteEventBus(
            o.path,
            clock=clock,
            namespace=o.namespace,
            wake_interval=o.wake_interval,
            busy_timeout=o.busy_timeout,
            synchronous=o.synchronous,
        )
