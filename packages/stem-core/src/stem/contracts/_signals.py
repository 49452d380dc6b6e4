"""The EventBus (workflow events) and ControlChannel (remote control) contracts."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import Any

import msgspec

__all__ = ["ControlChannel", "ControlMessage", "EventBus"]


class EventBus(abc.ABC):
    """Delivers workflow event topics to waiting runtimes; persistence is the store's job."""

    @abc.abstractmethod
    async def publish(self, topic: str, payload: Any) -> None: ...

    @abc.abstractmethod
    def subscribe(self, pattern: str) -> AsyncIterator[tuple[str, Any]]: ...

    async def aclose(self) -> None:
        """Release connections."""


class ControlMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A remote-control command or reply; ``destination`` None means every worker."""

    id: str
    command: str
    args: dict[str, Any] = {}
    destination: str | None = None
    reply_to: str | None = None
    sent_at: float = 0.0


class ControlChannel(abc.ABC):
    """Carries remote-control commands to workers and their replies back."""

    @abc.abstractmethod
    async def send(self, message: ControlMessage) -> None: ...

    @abc.abstractmethod
    def listen(self, worker_id: str) -> AsyncIterator[ControlMessage]: ...

    @abc.abstractmethod
    async def reply(self, reply_to: str, message: ControlMessage) -> None: ...

    @abc.abstractmethod
    def replies(self, reply_to: str) -> AsyncIterator[ControlMessage]: ...

    async def aclose(self) -> None:
        """Release connections."""
