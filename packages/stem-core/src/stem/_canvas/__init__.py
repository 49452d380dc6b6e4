"""Canvas: ``group``, ``chain`` and ``chord`` of tasks, carried on by the workers.

See docs/canvas.md. The user API is in _signatures (what you build), _handles (what
applying gives back) and _failure (how it fails); _runtime sends nodes and takes the
step after each task's final status; _nodes is the form a canvas travels in.
"""

from ._failure import CanvasFailedError, CanvasFailure
from ._handles import CanvasHandle, GroupHandle
from ._runtime import CanvasRuntime
from ._signatures import (
    Canvas,
    Chain,
    Chord,
    Group,
    Link,
    LinkLike,
    Partial,
    PartialChain,
    PartialChord,
    PartialGroup,
    Signature,
    chain,
    chord,
    group,
)

__all__ = [
    "Canvas",
    "CanvasFailedError",
    "CanvasFailure",
    "CanvasHandle",
    "CanvasRuntime",
    "Chain",
    "Chord",
    "Group",
    "GroupHandle",
    "Link",
    "LinkLike",
    "Partial",
    "PartialChain",
    "PartialChord",
    "PartialGroup",
    "Signature",
    "chain",
    "chord",
    "group",
]
