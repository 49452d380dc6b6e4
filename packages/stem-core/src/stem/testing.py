"""Helpers for testing code that uses Stem: FakeStem, eager apps and the FakeClock.

Example:
    fake = FakeStem()
    send = fake.task(name="email.send")(send_email)
    await send.enqueue(to="a@example.com")
    assert fake.enqueued[0].task == "email.send"
"""

from __future__ import annotations

from typing import Any

from ._app import Stem
from ._clock import FakeClock
from ._codec import decode_envelope
from ._messages import Envelope, Message
from .memory import MemoryBroker, MemoryResultBackend

__all__ = ["FakeClock", "FakeStem", "eager_app"]


class _RecordingBroker(MemoryBroker):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.published: list[Envelope] = []

    async def publish_many(self, messages: Any) -> None:
        batch: list[Message] = list(messages)
        self.published.extend(decode_envelope(m.body) for m in batch)
        await super().publish_many(batch)


class FakeStem(Stem):
    """A Stem on in-memory stores that records every enqueued envelope.

    ``enqueued`` lists the decoded envelopes in order, so tests check exactly what
    would have been sent (name, arguments, options), after real encoding.
    """

    def __init__(self, *, clock: Any = None, **kwargs: Any) -> None:
        broker = _RecordingBroker(clock=clock)
        super().__init__(broker, MemoryResultBackend(clock=clock), clock=clock, **kwargs)
        self._recorder = broker

    @property
    def enqueued(self) -> list[Envelope]:
        return self._recorder.published

    def enqueued_for(self, task: str) -> list[Envelope]:
        return [e for e in self._recorder.published if e.task == task]

    def clear(self) -> None:
        self._recorder.published.clear()


def eager_app(**kwargs: Any) -> Stem:
    """An in-memory app that runs each task inline when it is enqueued."""
    return Stem(MemoryBroker(clock=kwargs.get("clock")), eager=True, **kwargs)
