"""Unique tasks: one live task per canonical key, through the LockStore."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable
from typing import Any

import msgspec

from ._hooks import DONE
from ._messages import Envelope
from ._options import TaskOptions
from .contracts import LockStore

__all__ = ["UNTIL_FINISHED_CAP", "UniqueCoordinator", "unique_key"]

log = logging.getLogger("stem.unique")

#: Without ``unique_for`` a unique task's lock lasts until the task finishes; this cap
#: frees it anyway if the task is lost in a way no worker can report.
UNTIL_FINISHED_CAP = 86400.0

_canonical = msgspec.json.Encoder(order="sorted")


def unique_key(envelope: Envelope) -> str:
    """A hash of name, queue, arguments, headers and metadata (keys starting ``stem.`` left out)."""
    meta = {k: v for k, v in envelope.meta.items() if not k.startswith("stem.")}
    material: list[Any] = [
        envelope.task,
        envelope.queue,
        envelope.args,
        envelope.kwargs,
        envelope.headers,
        meta,
    ]
    return hashlib.sha256(_canonical.encode(material)).hexdigest()


class UniqueCoordinator:
    """Claims a unique key at enqueue and frees it when the task finishes (or the TTL ends)."""

    def __init__(self, locks: LockStore) -> None:
        self.locks = locks
        self.duplicates = 0

    async def claim(
        self, envelope: Envelope, options: TaskOptions | None, key: str | None, now: float
    ) -> str | None:
        """Claim uniqueness for ``envelope``; returns the existing task id if it is a duplicate.

        On success the key and its lifetime are recorded in ``envelope.meta`` so the
        worker can free an until-finished lock.
        """
        key = f"stem:unique:{envelope.task}:{key or unique_key(envelope)}"
        ttl = options.unique_for if options and options.unique_for else None
        for _ in range(5):
            if await self.locks.acquire(key, envelope.id, ttl or UNTIL_FINISHED_CAP):
                envelope.meta["stem.unique"] = {"key": key, "until": "ttl" if ttl else "finished"}
                return None
            owner = await self.locks.owner_of(key)
            if owner is not None:
                self.duplicates += 1
                log.info("task %s is a duplicate of %s (unique key %s)", envelope.task, owner, key)
                return owner
        # The lock kept expiring between our two reads: claim it on the next enqueue.
        envelope.meta["stem.unique"] = {"key": key, "until": "ttl" if ttl else "finished"}
        return None

    def release(self, envelope: Envelope) -> Awaitable[Any]:
        """Free an until-finished lock once the task reached a final state."""
        claim = envelope.meta.get("stem.unique") if envelope.meta else None
        if isinstance(claim, dict) and claim.get("until") == "finished":
            return self.locks.release(str(claim.get("key")), envelope.id)
        return DONE
