"""A canvas as it travels: nodes with their ids fixed, and the continuation frames.

When a canvas is applied, every task in it gets its id and every group its id at once,
and the tree is written down as these structs. A task's message carries, in
``Envelope.callbacks``, what follows it (its continuation, innermost frame first); a
group carries its own continuation in its meta. So any worker can go on with a canvas
with no producer alive, and every id a handle waits on is known from the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from .._messages import Envelope

__all__ = [
    "CallNode",
    "ChainNode",
    "Frame",
    "GroupNode",
    "MemberFrame",
    "NextFrame",
    "Node",
    "all_ids",
    "call_ids",
    "decode_frames",
    "encode_frames",
    "error_callback_ids",
    "first_id",
    "result_id",
]

#: The ``task`` of a group's own status record (its result, stored under the group id).
GROUP_TASK = "stem.group"


class CallNode(msgspec.Struct, tag="call", kw_only=True, omit_defaults=True):
    """One task run: its message, built (and checked) when the canvas was applied.

    ``takes_input``: the previous result goes first in its arguments. Times that
    count from the dispatch (``delay``, ``expires_in``) are applied when the message
    is sent, which for a later link is when the link before it has finished.
    """

    envelope: Envelope
    takes_input: bool = False
    delay: float | None = None
    expires_in: float | None = None
    #: How long its status is kept once final (its task's ``result_ttl``).
    ttl: float | None = None

    @property
    def id(self) -> str:
        return self.envelope.id


class GroupNode(msgspec.Struct, tag="group", kw_only=True, omit_defaults=True):
    """Members run in parallel; the result is the list of theirs, in order."""

    id: str
    members: list[CallNode | GroupNode | ChainNode]
    ttl: float | None = None


class ChainNode(msgspec.Struct, tag="chain", kw_only=True, omit_defaults=True):
    """Links run one after the other, each given the result of the one before.

    ``on_error``: error callbacks dispatched if a link fails (a chord's ``on_error``:
    its chain is the header group, then the callback).
    """

    links: list[CallNode | GroupNode | ChainNode]
    on_error: list[CallNode | GroupNode | ChainNode] = []


Node = CallNode | GroupNode | ChainNode


class NextFrame(msgspec.Struct, tag="next", kw_only=True, omit_defaults=True):
    """The rest of a chain: ``links`` to run after the current node, in order, and the
    error callbacks that apply while any of them (or the current node) may still fail."""

    links: list[Node] = []
    on_error: list[Node] = []


class MemberFrame(msgspec.Struct, tag="member", kw_only=True):
    """The result goes into group ``group`` as member ``index``; the group's own
    continuation (in its meta) takes over from there."""

    group: str
    index: int


Frame = NextFrame | MemberFrame

_frames_type = list[Frame]


def encode_frames(frames: list[Frame]) -> list[dict[str, Any]]:
    """Frames as ``Envelope.callbacks`` holds them: plain maps."""
    encoded: list[dict[str, Any]] = msgspec.to_builtins(frames)
    return encoded


def decode_frames(callbacks: list[dict[str, Any]]) -> list[Frame]:
    return msgspec.convert(callbacks, _frames_type)


def result_id(node: Node) -> str:
    """The id under which the node's result is stored: a task's id, a group's id, or
    for a chain its last link's."""
    while isinstance(node, ChainNode):
        node = node.links[-1]
    return node.id


def first_id(node: Node) -> str:
    """The id of a task sent when the node is dispatched (its status is stored with
    the publish): if it has a status, the node was dispatched."""
    while not isinstance(node, CallNode):
        node = node.members[0] if isinstance(node, GroupNode) else node.links[0]
    return node.id


def walk(node: Node) -> Iterator[Node]:
    """The node and every node inside it (error callbacks left out: they only run on failure)."""
    yield node
    children = (
        node.members
        if isinstance(node, GroupNode)
        else (node.links if isinstance(node, ChainNode) else [])
    )
    for child in children:
        yield from walk(child)


def error_callback_ids(node: Node) -> list[str]:
    """The first task id of every error callback in the node, in order."""
    found: list[str] = []
    for n in walk(node):
        if isinstance(n, ChainNode):
            found.extend(first_id(e) for e in n.on_error)
    return found


def call_ids(node: Node) -> list[str]:
    """Every task id in the node."""
    return [n.id for n in walk(node) if isinstance(n, CallNode)]


def all_ids(node: Node) -> list[tuple[str, str]]:
    """Every (id, task name) that gets a result in the node: tasks and groups."""
    found: list[tuple[str, str]] = []
    for n in walk(node):
        if isinstance(n, CallNode):
            found.append((n.id, n.envelope.task))
        elif isinstance(n, GroupNode):
            found.append((n.id, GROUP_TASK))
    return found
