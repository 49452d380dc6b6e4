"""Dead letters as the app sees them: decoded for reading, and replayed as a fresh start."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from ._codec import decode_envelope, encode_envelope
from ._errors import DecodeError
from ._messages import DeadLetter, DeadLetterView, TaskState

if TYPE_CHECKING:
    from ._app import Stem

__all__ = ["DeadLetters"]

#: Letters replayed per broker call when replaying many.
_REPLAY_BATCH = 500


class DeadLetters:
    """The dead letters of an app's broker: list, show, replay and purge (``app.dead_letters``)."""

    def __init__(self, app: Stem) -> None:
        self._app = app

    async def list(
        self, queue: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetterView]:
        """Dead letters of ``queue`` (default: the app's default queue), oldest first."""
        letters = await self._app.broker.list_dead_letters(
            queue or self._app.default_queue, limit=limit, offset=offset
        )
        return [self._view(letter) for letter in letters]

    async def get(self, message_id: str, queue: str | None = None) -> DeadLetterView | None:
        """One dead letter by message id (a task's id), decoded."""
        letter = await self._app.broker.get_dead_letter(
            queue or self._app.default_queue, message_id
        )
        return None if letter is None else self._view(letter)

    async def replay(
        self,
        queue: str | None = None,
        message_ids: Sequence[str] | None = None,
        *,
        delay: float | None = None,
    ) -> int:
        """Put dead letters (all of ``queue``, or those named) back, as a fresh start.

        Each task's status goes back to ``queued`` (so :meth:`Stem.wait_for_task` waits
        for the new outcome), its retry budget and its delivery count start again.
        A letter whose body does not decode goes back as it is. Returns how many.
        """
        app = self._app
        queue = queue or app.default_queue
        letters: builtins.list[DeadLetter]
        if message_ids is None:
            letters = await self._all(queue)
        else:
            found = [await app.broker.get_dead_letter(queue, mid) for mid in message_ids]
            letters = [letter for letter in found if letter is not None]
        replayed = 0
        for start in range(0, len(letters), _REPLAY_BATCH):
            batch = letters[start : start + _REPLAY_BATCH]
            bodies: dict[str, bytes] = {}
            statuses = []
            for letter in batch:
                try:
                    envelope = decode_envelope(letter.message.body)
                except DecodeError:
                    continue
                fresh = msgspec.structs.replace(envelope, attempt=0)
                bodies[letter.message.id] = encode_envelope(fresh, app.wire_format)
                statuses.append(app.make_status(fresh, TaskState.QUEUED))
            # Statuses first: a worker may take a replayed message at once, and its
            # ``started`` must not be overwritten by our ``queued``.
            if statuses:
                await app.backend.set_statuses(statuses)
            replayed += await app.broker.replay_dead_letters(
                queue, [letter.message.id for letter in batch], delay=delay, bodies=bodies
            )
        return replayed

    async def purge(
        self, queue: str | None = None, message_ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead letters (all of ``queue``, or those named) for good; returns how many."""
        return await self._app.broker.purge_dead_letters(
            queue or self._app.default_queue, message_ids
        )

    async def _all(self, queue: str) -> builtins.list[DeadLetter]:
        letters: builtins.list[DeadLetter] = []
        while True:
            page = await self._app.broker.list_dead_letters(
                queue, limit=_REPLAY_BATCH, offset=len(letters)
            )
            letters.extend(page)
            if len(page) < _REPLAY_BATCH:
                return letters

    def _view(self, letter: DeadLetter) -> DeadLetterView:
        try:
            envelope = decode_envelope(letter.message.body)
            encoder = self._app.encoders.get(envelope.args_encoder)
            args, kwargs = (
                list(encoder.decode(envelope.args)),
                dict(encoder.decode(envelope.kwargs)),
            )
        except Exception as exc:  # any body at all may sit in a dead-letter queue
            return DeadLetterView(letter=letter, decode_error=f"{type(exc).__name__}: {exc}")
        return DeadLetterView(
            letter=letter,
            task=envelope.task,
            args=args,
            kwargs=kwargs,
            attempts=envelope.attempt + 1,
            max_retries=envelope.max_retries,
            headers=envelope.headers,
            created_at=envelope.created_at,
        )
