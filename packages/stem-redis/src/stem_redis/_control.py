"""The Redis control channel: remote-control commands to workers, and their replies.

Commands go to one short stream per namespace, ``{P:control}:commands``, and replies to
a stream per ``reply_to``, ``{P:control}:replies:ID``; each write publishes on the
channel of the stream's name, which wakes its readers (one subscriber connection per
process, shared with every other waiter: see ``_notify.py``). The streams carry the
messages, so a reader misses nothing published while its connection was down for a
moment, and a sender that starts reading replies after the first ones came gets them.
Every key and channel carries the hash tag ``{P:control}``: one slot on a cluster.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from stem import AdapterError, Clock, SystemClock
from stem.contracts import ControlChannel, ControlMessage

from ._client import RedisClient, RedisStore
from ._url import RedisOptions

__all__ = ["RedisControlChannel"]

log = logging.getLogger("stem.redis")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ControlMessage)

#: Entries read per round trip.
READ_BATCH = 100


def _entries(reply: Any) -> list[tuple[str, bytes | None]]:
    """(entry id, message) from an XRANGE or XREVRANGE reply, however redis-py parsed it."""
    out: list[tuple[str, bytes | None]] = []
    for entry_id, fields in reply or ():
        if isinstance(fields, dict):
            data = fields.get(b"m")
        else:
            pairs = dict(zip(fields[::2], fields[1::2], strict=False))
            data = pairs.get(b"m")
        out.append((entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), data))
    return out


class RedisControlChannel(RedisStore, ControlChannel):
    """Remote control through Redis (see the module docstring for the keys).

    * ``send`` appends the message to the namespace's command stream; each listener
      reads every command written after it started and keeps those for its worker id
      (``destination``) or for everyone (None), in the order they were sent.
    * ``reply`` appends to the stream of ``reply_to``, kept ``reply_ttl`` seconds after
      the last reply; ``replies`` reads it from the start.
    * Entries that are not Stem control messages are logged and skipped.

    Args:
        url: a ``redis://`` URL (or its parsed options); its ``prefix`` names the keys.
        clock: the clock waits run on (``poll_interval`` of the URL bounds how late a
            wake-up lost in a reconnect is noticed).
        command_backlog: about how many commands the stream keeps; a listener that falls
            further behind than that misses the oldest.
        reply_ttl: seconds the replies to one ``reply_to`` are kept after the last one.
        share_connection: False to take a client of its own instead of sharing the
            pool of every store of this server in this event loop.
    """

    def __init__(
        self,
        url: str | RedisOptions = "redis://localhost:6379/0",
        *,
        clock: Clock | None = None,
        command_backlog: int = 1000,
        reply_ttl: float = 300.0,
        share_connection: bool = True,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        options = self._open(
            url, clock=clock, server_clock=False, share_connection=share_connection
        )
        self.command_backlog = command_backlog
        self.reply_ttl = reply_ttl
        self._base = f"{{{options.prefix}:control}}"
        self._commands = f"{self._base}:commands"

    def _replies_key(self, reply_to: str) -> str:
        return f"{self._base}:replies:{reply_to}"

    async def send(self, message: ControlMessage) -> None:
        await self._client().script(
            "control_send",
            [self._commands],
            [_encoder.encode(message), self.command_backlog, ""],
        )

    async def reply(self, reply_to: str, message: ControlMessage) -> None:
        await self._client().script(
            "control_send",
            [self._replies_key(reply_to)],
            [_encoder.encode(message), 10 * self.command_backlog, int(self.reply_ttl * 1000)],
        )

    async def listen(self, worker_id: str) -> AsyncIterator[ControlMessage]:
        async for message in self._read(self._commands, start_at_end=True):
            if message.destination is None or message.destination == worker_id:
                yield message

    async def replies(self, reply_to: str) -> AsyncIterator[ControlMessage]:
        async for message in self._read(self._replies_key(reply_to), start_at_end=False):
            yield message

    async def _read(self, key: str, *, start_at_end: bool) -> AsyncIterator[ControlMessage]:
        """Every message of the stream ``key`` (or those written after now), for ever.

        It subscribes to the stream's wake-up channel before its first read, so nothing
        written after that read goes unnoticed. Errors on the first reads are raised
        (a wrong URL, a wrong password); later ones are logged once per outage and the
        reads go on after ``poll_interval``.
        """
        client = self._client()
        channels, _ = await client.hub.subscribe([key.encode()], sticky=False)
        try:
            last = await self._newest(client, key) if start_at_end else "0-0"
            outage = False
            while True:
                marks = client.hub.marks(channels)
                try:
                    reply = await client.command(
                        "XRANGE", key, f"({last}", "+", "COUNT", READ_BATCH
                    )
                except AdapterError as exc:
                    if not outage:
                        outage = True
                        log.warning("cannot read control messages (%s); trying again", exc)
                    await self.clock.sleep(self.options.poll_interval)
                    continue
                if outage:
                    outage = False
                    log.warning("reading control messages again")
                entries = _entries(reply)
                for entry_id, data in entries:
                    last = entry_id
                    message = self._decode(key, entry_id, data)
                    if message is not None:
                        yield message
                if len(entries) < READ_BATCH:
                    await client.hub.wait(channels, marks, self.clock, self.options.poll_interval)
        finally:
            await client.hub.release(channels)

    @staticmethod
    async def _newest(client: RedisClient, key: str) -> str:
        found = _entries(await client.command("XREVRANGE", key, "+", "-", "COUNT", 1))
        return found[0][0] if found else "0-0"

    def _decode(self, key: str, entry_id: str, data: bytes | None) -> ControlMessage | None:
        try:
            if data is None:
                raise msgspec.DecodeError("no field 'm'")
            message: ControlMessage = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            log.warning(
                "skipped entry %s of %s at %s: not a Stem control message (%s)",
                entry_id,
                key,
                self.options.masked_url,
                exc,
            )
            return None
        return message
