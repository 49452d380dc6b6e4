"""What users write: ``group``, ``chain``, ``chord`` and partial calls, typed.

Two kinds of pieces make a canvas:

* a **signature** produces a value with nothing given: a complete call
  (``task.call(...)``), a group of signatures, a chain or a chord whose first part is
  a signature. Apply one to run it.
* a **link** takes the previous result as its first argument: a task itself, a partial
  call (``task.partial(...)``, the other arguments given), or a group, chain or chord
  of links. Links follow the first part of a chain, and are a chord's callback and
  error callback.

Types follow the values where mypy can: a group of ``TaskCall[..., int]`` is a
``Group[int]`` whose handle gives ``list[int]``, a chain's type is its last link's.
What a link's first parameter accepts is not checked statically (mypy cannot take the
first parameter off a task's signature); the worker converts the value to its
annotation, as it does every argument.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, overload

import msgspec

from .._errors import ArgumentError, ConfigurationError
from .._ids import new_task_id
from .._options import seconds
from .._task import EnqueueOptions, NamedTask, Task, TaskCall, check_call_shape
from ._nodes import CallNode, ChainNode, GroupNode, Node

if TYPE_CHECKING:
    from .._app import Stem
    from ._handles import CanvasHandle, GroupHandle

__all__ = [
    "Canvas",
    "Chain",
    "Chord",
    "Group",
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

R = TypeVar("R")
S = TypeVar("S")
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")
E = TypeVar("E")

#: A task's result is kept this long when the task is not registered in the process
#: that applies the canvas (TaskOptions.result_ttl's default).
DEFAULT_RESULT_TTL = 86400.0


class Canvas(Generic[R]):
    """A signature made of tasks: ``await canvas.apply(app)`` runs it and returns a handle
    whose ``await handle.result()`` is the value of type ``R``."""

    def _node(self, builder: Builder, takes_input: bool) -> Node:
        raise NotImplementedError

    def _tasks(self) -> list[Task[Any, Any] | NamedTask]:
        raise NotImplementedError

    async def apply(self, app: Stem | None = None) -> CanvasHandle[R]:
        """Send the first tasks (in one publish) and return a handle on the result.

        ``app`` defaults to the app of the first task in the canvas.
        """
        return await (app or _app_of(self))._canvas.apply(self)


class Link(Generic[R]):
    """A piece that takes the previous result as its first argument and produces ``R``."""

    def _node(self, builder: Builder, takes_input: bool) -> Node:
        raise NotImplementedError

    def _tasks(self) -> list[Task[Any, Any] | NamedTask]:
        raise NotImplementedError


#: Something that produces an ``R`` with nothing given: a complete call or a canvas.
Signature: TypeAlias = TaskCall[Any, R] | Canvas[R]
#: Something that produces an ``R`` from the previous result: a task, a partial call,
#: or a group, chain or chord of those.
LinkLike: TypeAlias = Link[R] | Task[Any, R]


class Partial(Link[R]):
    """A call of a task whose first argument is the previous result (``task.partial(...)``)."""

    def __init__(
        self,
        task: Task[Any, R] | NamedTask,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        overrides: dict[str, Any] | None = None,
    ) -> None:
        check_call_shape(args, kwargs)
        if isinstance(task, Task):
            try:
                # The first argument comes later: bind a stand-in, for the shape only.
                task.signature.bind(None, *args, **kwargs)
            except TypeError as exc:
                raise ArgumentError(
                    f"arguments do not fit {task.kind} {task.name!r} once the previous "
                    f"result is put first: {exc}"
                ) from None
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self.overrides = dict(overrides or {})

    def options(self, **overrides: typing.Unpack[EnqueueOptions]) -> Partial[R]:
        """The same call with enqueue options (queue, priority, delay, ...)."""
        return Partial(self.task, self.args, self.kwargs, {**self.overrides, **overrides})

    def __repr__(self) -> str:
        return f"<Partial {self.task.name}(<previous result>, ...)>"

    def _node(self, builder: Builder, takes_input: bool) -> Node:
        if not takes_input:
            raise ConfigurationError(
                f"{self.task.name}.partial(...) waits for a previous result, but nothing "
                "comes before it: make it a later link of a chain, or give all its "
                "arguments with .call(...)"
            )
        return builder.call(self.task, self.args, self.kwargs, self.overrides, takes_input=True)

    def _tasks(self) -> list[Task[Any, Any] | NamedTask]:
        return [self.task]


class Group(Canvas[list[R]]):
    """Signatures run in parallel; the result is the list of their results, in order."""

    def __init__(self, members: Sequence[Signature[R]], group_id: str | None = None) -> None:
        self.members = tuple(members)
        self.group_id = group_id
        _check_members(self.members)

    async def apply(self, app: Stem | None = None) -> GroupHandle[R]:
        handle = await (app or _app_of(self))._canvas.apply(self)
        return typing.cast("GroupHandle[R]", handle)

    def _node(self, builder: Builder, takes_input: bool) -> Node:
        return builder.group(self.members, self.group_id, takes_input)

    def _tasks(self) -> list[Task[Any, Any] | NamedTask]:
        return [t for m in self.members for t in _tasks_of(m)]


class PartialGroup(Link[list[R]]):
    """Links run in parallel, each given the previous result; the result is the list of theirs."""

    def __init__(self, members: Sequence[LinkLike[R]], group_id: str | None = None) -> None:
        self.members = tuple(members)
        self.group_id = group_id
        _check_members(self.members)

    def _node(self, builder: Builder, takes_input: bool) -> Node:
        return builder.group(self.members, self.group_id, takes_input)

    def _tasks(self) -> list[Task[Any, Any] | NamedTask]:
        return [t for m in self.members for t in _tasks_of(m)]


class _ChainParts:
    links: tuple[Any, ...]

    def _node(self, builder: Builder, takes_input: bool) -> Node:
        return ChainNode(
            links=[
                builder.node(link, takes_input if i == 0 else True)
                for i, link in enumerate(self.links)
            ]
        )

    def _tasks(self) -> list[Task[Any, Any] | NamedTask]:
        return [t for link in self.links for t in _tasks_of(link)]


class Chain(_ChainParts, Canvas[R]):
    """Signatures run one after another, each result given to the next as its first
    argument; the result is the last one's."""

    def __init__(self, links: Sequence[Any]) -> None:
        if not links:
            raise ConfigurationError("a chain needs at least one link")
        self.links = tuple(links)


class PartialChain(_ChainParts, Link[R]):
    """A chain whose first link takes the previous result."""

    def __init__(self, links: Sequence[Any]) -> None:
        if not links:
            raise ConfigurationError("a chain needs at least one link")
        self.links = tuple(links)


class _ChordParts:
    header: Group[Any] | PartialGroup[Any]
    body: LinkLike[Any]
    on_error: LinkLike[Any] | None

    def _node(self, builder: Builder, takes_input: bool) -> Node:
        return ChainNode(
            links=[builder.node(self.header, takes_input), builder.node(self.body, True)],
            on_error=[] if self.on_error is None else [builder.node(self.on_error, True)],
        )

    def _tasks(self) -> list[Task[Any, Any] | NamedTask]:
        found = [*self.header._tasks(), *_tasks_of(self.body)]
        return found + ([] if self.on_error is None else _tasks_of(self.on_error))


class Chord(_ChordParts, Canvas[R]):
    """A group, then a callback given the list of its results; ``on_error`` runs instead
    if a branch (or the callback) fails."""

    def __init__(
        self, header: Group[Any], body: LinkLike[R], on_error: LinkLike[Any] | None = None
    ) -> None:
        self.header, self.body, self.on_error = header, body, on_error


class PartialChord(_ChordParts, Link[R]):
    """A chord whose branches take the previous result (a later link of a chain)."""

    def __init__(
        self, header: PartialGroup[Any], body: LinkLike[R], on_error: LinkLike[Any] | None = None
    ) -> None:
        self.header, self.body, self.on_error = header, body, on_error


# -- the constructors ------------------------------------------------------------------


@overload
def group(*members: Signature[R], group_id: str | None = None) -> Group[R]: ...
@overload
def group(*members: LinkLike[R], group_id: str | None = None) -> PartialGroup[R]: ...
def group(*members: Any, group_id: str | None = None) -> Any:
    """Run ``members`` in parallel; the result is the list of their results, in order.

    Members are complete calls (``task.call(...)``) or other canvases; in a chain after
    the first link they are links instead (each gets the previous result). ``group_id``
    chooses the group's id (applying a group with an id in use starts that group afresh).
    """
    if members and all(_takes_input(m) for m in members):
        return PartialGroup(members, group_id)
    return Group(members, group_id)


@overload
def chain(a: Signature[Any], b: LinkLike[R], /) -> Chain[R]: ...
@overload
def chain(a: Signature[Any], b: LinkLike[Any], c: LinkLike[R], /) -> Chain[R]: ...
@overload
def chain(a: Signature[Any], b: LinkLike[Any], c: LinkLike[Any], d: LinkLike[R], /) -> Chain[R]: ...
@overload
def chain(
    a: Signature[Any], b: LinkLike[Any], c: LinkLike[Any], d: LinkLike[Any], e: LinkLike[R], /
) -> Chain[R]: ...
@overload
def chain(a: Signature[R], /) -> Chain[R]: ...
@overload
def chain(a: LinkLike[Any], b: LinkLike[R], /) -> PartialChain[R]: ...
@overload
def chain(a: LinkLike[Any], b: LinkLike[Any], c: LinkLike[R], /) -> PartialChain[R]: ...
@overload
def chain(a: Signature[Any], /, *links: LinkLike[Any]) -> Chain[Any]: ...
@overload
def chain(a: LinkLike[Any], /, *links: LinkLike[Any]) -> PartialChain[Any]: ...
def chain(*links: Any) -> Any:
    """Run ``links`` one after another: each result is the next link's first argument
    (Celery's semantics); the result is the last link's.

    The first link is a signature (``task.call(...)``, a group, ...); the others are
    links (a task, ``task.partial(...)``, a group of those). A group in the middle gives
    the next link the list of its results.
    """
    if not links:
        raise ConfigurationError("a chain needs at least one link")
    for position, link in enumerate(links[1:], 2):
        if not _takes_input(link):
            raise ConfigurationError(
                f"link {position} of the chain ({_describe(link)}) is a complete call, but "
                "it gets the previous result as its first argument: write "
                "task.partial(...) with the other arguments, or the task itself"
            )
    if _takes_input(links[0]):
        return PartialChain(links)
    return Chain(links)


@overload
def chord(
    header: Group[R] | Sequence[Signature[R]],
    body: LinkLike[S],
    *,
    on_error: LinkLike[Any] | None = None,
) -> Chord[S]: ...
@overload
def chord(
    header: PartialGroup[R], body: LinkLike[S], *, on_error: LinkLike[Any] | None = None
) -> PartialChord[S]: ...
def chord(header: Any, body: Any, *, on_error: Any = None) -> Any:
    """Run the ``header`` group, then ``body`` with the list of its results as its first
    argument. The worker that stores the last branch's result sends ``body`` (exactly
    once, with no producer alive and no polling task).

    If a branch fails (after its retries) or is revoked, the chord fails with that
    branch's error, ``body`` never runs, and ``on_error`` (a link) runs with a
    :class:`CanvasFailure` as its first argument; it runs too if ``body`` fails.
    """
    if isinstance(header, Group | PartialGroup):
        grouped: Group[Any] | PartialGroup[Any] = header
    elif isinstance(header, Sequence) and not isinstance(header, str | bytes):
        grouped = group(*header)
    else:
        raise ConfigurationError(
            f"a chord's header is a group or a list of calls, not {type(header).__name__}"
        )
    for what, link in (("callback", body), ("error callback", on_error)):
        if link is not None and not _takes_input(link):
            raise ConfigurationError(
                f"the chord's {what} ({_describe(link)}) is a complete call, but it gets "
                f"{'the list of results' if what == 'callback' else 'the failure'} as its "
                "first argument: write task.partial(...) with the other arguments, or the "
                "task itself"
            )
    if isinstance(grouped, PartialGroup):
        return PartialChord(grouped, body, on_error)
    return Chord(grouped, body, on_error)


# -- building the nodes -----------------------------------------------------------------


class Builder:
    """Turns a canvas into nodes for one apply: every id fixed, every message built."""

    def __init__(self, app: Stem, now: float) -> None:
        self.app = app
        self.now = now

    def node(self, piece: Any, takes_input: bool) -> Node:
        if isinstance(piece, TaskCall):
            if takes_input:
                raise ConfigurationError(
                    f"{_describe(piece)} is a complete call, but it gets the previous result "
                    "as its first argument: write task.partial(...) or the task itself"
                )
            return self.call(piece.task, piece.args, piece.kwargs, piece.overrides, False)
        if isinstance(piece, Task):
            if not takes_input:
                raise ConfigurationError(
                    f"task {piece.name!r} stands for a call with the previous result, but "
                    "nothing comes before it: give its arguments with .call(...)"
                )
            return self.call(piece, (), {}, {}, True)
        if isinstance(piece, Canvas | Link):
            return piece._node(self, takes_input)
        raise ConfigurationError(
            f"{piece!r} is not part of a canvas: use task.call(...), task.partial(...), "
            "a task, group(...), chain(...) or chord(...)"
        )

    def call(
        self,
        task: Task[Any, Any] | NamedTask,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        overrides: dict[str, Any],
        takes_input: bool,
    ) -> CallNode:
        app = self.app
        opts = app.tasks[task.name].options_ if task.name in app.tasks else None
        if "unique_key" in overrides or (opts is not None and opts.unique):
            raise ConfigurationError(
                f"task {task.name!r} is unique, which a canvas cannot use: a duplicate "
                "would take another task's place and its result would never come. "
                "Leave unique_key out, or enqueue the task on its own"
            )
        envelope, opts, _ = app._build(task.name, args, kwargs, overrides, self.now)
        delay = seconds(overrides.get("delay"), "delay")
        expires = overrides.get("expires", opts.expires if opts else None)
        expires_in = None if isinstance(expires, datetime) else seconds(expires, "expires")
        if delay:  # counted from the dispatch
            envelope = msgspec.structs.replace(envelope, eta=None)
        if expires_in is not None:
            envelope = msgspec.structs.replace(envelope, expires=None)
        return CallNode(
            envelope=envelope,
            takes_input=takes_input,
            delay=delay or None,
            expires_in=expires_in,
            ttl=opts.result_ttl if opts is not None else DEFAULT_RESULT_TTL,
        )

    def group(self, members: Sequence[Any], group_id: str | None, takes_input: bool) -> GroupNode:
        nodes = [self.node(m, takes_input) for m in members]
        return GroupNode(id=group_id or new_task_id(), members=nodes, ttl=_longest(nodes))


def _longest(nodes: list[Node]) -> float | None:
    """The longest result TTL in the nodes (None, kept for ever, is the longest)."""
    longest = 0.0
    for node in nodes:
        ttl = node.ttl if isinstance(node, CallNode | GroupNode) else _longest(list(node.links))
        if ttl is None:
            return None
        longest = max(longest, ttl)
    return longest


def _takes_input(piece: Any) -> bool:
    return isinstance(piece, Link | Task)


def _check_members(members: tuple[Any, ...]) -> None:
    if not members:
        raise ConfigurationError("a group needs at least one member")
    kinds = {_takes_input(m) for m in members}
    if len(kinds) > 1:
        raise ConfigurationError(
            "a group mixes complete calls (task.call(...)) with links (task.partial(...), "
            "tasks): in a chain after the first link every member gets the previous "
            "result, so all are links; elsewhere all are complete calls"
        )


def _describe(piece: Any) -> str:
    if isinstance(piece, TaskCall | Partial):
        return f"{piece.task.name}(...)"
    if isinstance(piece, Task):
        return piece.name
    return type(piece).__name__


def _tasks_of(piece: Any) -> list[Task[Any, Any] | NamedTask]:
    if isinstance(piece, TaskCall):
        return [piece.task]
    if isinstance(piece, Task):
        return [piece]
    if isinstance(piece, Canvas | Link):
        return piece._tasks()
    return []


def _app_of(canvas: Canvas[Any]) -> Stem:
    for task in canvas._tasks():
        return task.app
    raise ConfigurationError("this canvas has no task: pass the app, canvas.apply(app)")
