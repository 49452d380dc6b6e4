"""The Lua scripts: each is one atomic step, sent by its SHA1 (loaded again if the server lost it).

The sources live in ``lua/``. A script is its libraries (files starting with ``_``)
followed by its own file; ``_args.lua`` comes first in every script, so ARGV is read
section after section (the statuses section, then the messages section, ...).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["CLUSTER_SCRIPTS", "SCRIPTS", "Script"]


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: bytes
    sha: str

    def for_cluster(self) -> Script:
        """The Redis Cluster variant: wake-ups go by ``SPUBLISH`` on the channel's slot
        (the channels share their keys' hash tag), so they reach the one node whose
        subscribers want them instead of being broadcast to every node."""
        source = self.source.replace(_NOTIFY, _SHARDED_NOTIFY, 1)
        return Script(self.name, source, hashlib.sha1(source, usedforsecurity=False).hexdigest())


_NOTIFY = b"local NOTIFY = 'PUBLISH'"
_SHARDED_NOTIFY = b"local NOTIFY = 'SPUBLISH'"


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def _script(name: str, *libraries: str) -> Script:
    source = "\n".join(_read(part) for part in ("_args", *libraries, name)).encode()
    return Script(name, source, hashlib.sha1(source, usedforsecurity=False).hexdigest())


_QUEUE = ("_queue",)
_STATUS_AND_QUEUE = ("_status", "_queue")
_DEAD = ("_queue", "_dead")
#: The workflow store's scripts (lua/wf_NAME.lua), each with the library lua/_wf.lua.
_WORKFLOW_SCRIPTS = (
    "create", "claim", "renew", "release", "save_step", "suspend", "finish",
    "emit", "send", "due", "next_wake", "cancel", "rewind", "list", "watchers",
)  # fmt: skip

#: The schedule store's scripts (lua/schedule_NAME.lua), each with lua/_schedule.lua.
_SCHEDULE_SCRIPTS = ("upsert", "due", "mark", "release", "remove", "list")

#: Every script, by name.
SCRIPTS: dict[str, Script] = {
    s.name: s
    for s in (
        _script("publish", *_QUEUE),
        _script("enqueue", *_STATUS_AND_QUEUE),
        _script("settle", *_STATUS_AND_QUEUE),
        _script("reserve", *_QUEUE),
        _script("ack", *_QUEUE),
        _script("nack", *_QUEUE),
        _script("extend", *_QUEUE),
        _script("bury", *_QUEUE),
        _script("stats", *_QUEUE),
        _script("next_due", *_QUEUE),
        _script("purge", *_QUEUE),
        _script("subscribe"),
        _script("subscriptions"),
        _script("unsubscribe"),
        _script("dead_get", *_DEAD),
        _script("dead_replay", *_DEAD),
        _script("dead_purge", *_DEAD),
        _script("statuses", "_status"),
        _script("status_get"),
        _script("expire", "_status"),
        _script("group_init", "_group"),
        _script("group_add", "_group"),
        _script("group_get", "_group"),
        _script("chord_claim", "_group"),
        _script("heartbeat_set"),
        _script("heartbeat_get"),
        _script("lock_acquire"),
        _script("lock_renew"),
        _script("lock_release"),
        _script("lock_owner"),
        _script("revoke", "_revokes"),
        _script("revoke_list", "_revokes"),
        *(_script(f"schedule_{name}", "_schedule") for name in _SCHEDULE_SCRIPTS),
        *(_script(f"wf_{name}", "_wf") for name in _WORKFLOW_SCRIPTS),
        _script("rate_reserve"),
        _script("control_send"),
    )
}

#: The same scripts, for Redis Cluster (see :meth:`Script.for_cluster`).
CLUSTER_SCRIPTS: dict[str, Script] = {name: s.for_cluster() for name, s in SCRIPTS.items()}
