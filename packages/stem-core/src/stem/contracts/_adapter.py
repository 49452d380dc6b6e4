"""The Adapter contract: builds brokers and stores for the URL schemes it registers."""

from __future__ import annotations

import abc

from .._clock import Clock
from .._errors import ConfigurationError
from ._backend import ResultBackend
from ._broker import Broker
from ._locks import LockStore, RevokeStore
from ._ratelimit import RateLimiter
from ._schedule import ScheduleStore
from ._signals import ControlChannel, EventBus
from ._workflow import WorkflowStore

__all__ = ["Adapter"]


class Adapter(abc.ABC):
    """One per distribution, registered under each scheme in the ``stem.adapters`` entry-point group.

    Example (``pyproject.toml`` of a third-party adapter)::

        [project.entry-points."stem.adapters"]
        nats = "stem_nats:adapter"
    """

    #: The distribution users install to get this adapter, named in error messages.
    distribution: str = ""

    @abc.abstractmethod
    def broker(self, url: str, *, clock: Clock | None = None) -> Broker: ...

    @abc.abstractmethod
    def result_backend(self, url: str, *, clock: Clock | None = None) -> ResultBackend: ...

    @abc.abstractmethod
    def lock_store(self, url: str, *, clock: Clock | None = None) -> LockStore: ...

    @abc.abstractmethod
    def revoke_store(self, url: str, *, clock: Clock | None = None) -> RevokeStore: ...

    def workflow_store(self, url: str, *, clock: Clock | None = None) -> WorkflowStore:
        raise ConfigurationError(
            f"{self.distribution or type(self).__name__} has no workflow store"
        )

    def schedule_store(self, url: str, *, clock: Clock | None = None) -> ScheduleStore:
        raise ConfigurationError(
            f"{self.distribution or type(self).__name__} has no schedule store"
        )

    def rate_limiter(self, url: str, *, clock: Clock | None = None) -> RateLimiter | None:
        """A rate limiter shared by every worker on this store, or None (the default).

        ``Stem.from_url`` keeps it as ``app.rate_limiter``, and workers use it, so
        ``rate_limit="10/s"`` holds across a fleet; with None each worker limits alone.
        """
        return None

    def control_channel(self, url: str, *, clock: Clock | None = None) -> ControlChannel | None:
        """The channel that carries remote-control commands and replies, or None (the default).

        ``Stem.from_url`` keeps it as ``app.control_channel``.
        """
        return None

    def event_bus(self, url: str, *, clock: Clock | None = None) -> EventBus | None:
        """The bus that carries live events between the processes of an app, or None (the
        default: each app then gets a bus in its own memory, seen by that process only).

        ``Stem.from_url`` keeps the one of the workflow store's URL as ``app.event_bus``.
        """
        return None
