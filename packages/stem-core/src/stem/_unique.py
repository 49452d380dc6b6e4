"""Unique tasks: one live task per canonical key, through the LockStore."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable
from typing import Any

import msgspec

from ._hooks import DONE
from ._messages import Envelope, UniqueClaim
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
    """Makes the claim of a unique task at enqueue and frees it when the task finishes.

    The claim itself is taken by :meth:`stem.contracts.Broker.enqueue`, together with
    the publish, so a claim never outlives a publish that did not happen.
    """

    def __init__(self, locks: LockStore) -> None:
        self.locks = locks
        self.duplicates = 0

    def claim_for(
        self, envelope: Envelope, options: TaskOptions | None, key: str | None
    ) -> UniqueClaim:
        """The claim ``envelope`` must hold to be published.

        The key and the claim's lifetime are recorded in ``envelope.meta`` (before the
        body is encoded) so the worker can free an until-finished claim.
        """
        key = f"stem:unique:{envelope.task}:{key or unique_key(envelope)}"
        ttl = options.unique_for if options and options.unique_for else None
        envelope.meta["stem.unique"] = {"key": key, "until": "ttl" if ttl else "finished"}
        return UniqueClaim(key=key, ttl=ttl or UNTIL_FINISHED_CAP)

    def note_duplicate(self, envelope: Envelope, existing_id: str) -> None:
        self.duplicates += 1
        log.info("task %s is a duplicate of %s", envelope.task, existing_id)

    def release(self, envelope: Envelope) -> Awaitable[Any]:
        """Free an until-finished claim once the task reached a final state."""
        claim = envelope.meta.get("stem.unique") if envelope.meta else None
        if isinstance(claim, dict) and claim.get("until") == "finished":
            return self.locks.release(str(claim.get("key")), envelope.id)
        return DONE
