"""How a canvas moves on: sending nodes, and the step after a task's final status.

The step runs where the final status was stored, before the task's message is
acknowledged (see stem/worker/_outcomes.py), so a worker killed in between leaves the
message to be delivered again, and the step runs again. Every part of it can run twice:

* a group result is recorded once per member (``add_group_result`` keeps the first);
* a group's continuation is sent by the member that wins ``claim_chord``, whose owner
  is the member's result id: that member's message, delivered again, finds its own
  claim and finishes the job (``claimed_by`` is itself), while every other member
  finds another's claim and leaves it;
* a node sent again after a crash is sent only if its first task has no status (a
  status is stored with its publish, in one transaction where the adapter allows).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from .._messages import Envelope, TaskError, TaskState, TaskStatus
from ._failure import CanvasFailure, cause_of
from ._nodes import (
    GROUP_TASK,
    CallNode,
    ChainNode,
    Frame,
    GroupNode,
    MemberFrame,
    NextFrame,
    Node,
    all_ids,
    call_ids,
    decode_frames,
    encode_frames,
    first_id,
    result_id,
)

if TYPE_CHECKING:
    from .._app import Stem
    from ._handles import CanvasHandle
    from ._signatures import Signature

__all__ = ["CanvasRuntime"]

log = logging.getLogger("stem.canvas")

#: Stands for "no previous result": the node's first task takes its arguments as given.
_NOTHING: Any = object()


class _Plan:
    """What sending some nodes takes: groups to create, then messages in one publish."""

    def __init__(self) -> None:
        self.groups: list[tuple[str, int, dict[str, object], float | None]] = []
        self.envelopes: list[Envelope] = []


class CanvasRuntime:
    """The canvas machinery of one app: apply, the step after a final status, revoke."""

    def __init__(self, app: Stem) -> None:
        self.app = app

    # -- the producer's side ----------------------------------------------------------------

    async def apply(self, canvas: Signature[Any]) -> CanvasHandle[Any]:
        from ._handles import CanvasHandle, GroupHandle
        from ._signatures import Builder

        app = self.app
        node = Builder(app, app.clock.now()).node(canvas, False)
        await self.dispatch([(node, _NOTHING, [])], recovering=False)
        if isinstance(node, GroupNode):
            return GroupHandle(app, node)
        return CanvasHandle(app, node)

    async def revoke_group(
        self, group_id: str, *, terminate: bool = False, reason: str | None = None
    ) -> list[str]:
        """Revoke every task of a group (those inside its members' chains and groups
        too); returns their ids, or [] if the group is unknown."""
        state = await self.app.backend.get_group(group_id)
        if state is None:
            return []
        ids = [str(i) for i in state.meta.get("tasks", [])]
        await self.revoke(ids, terminate=terminate, reason=reason or f"group {group_id} revoked")
        return ids

    async def revoke(self, ids: list[str], *, terminate: bool, reason: str | None) -> None:
        for task_id in ids:
            await self.app.revoke(task_id, terminate=terminate, reason=reason)

    # -- sending nodes ----------------------------------------------------------------------

    async def dispatch(
        self, items: list[tuple[Node, Any, list[Frame]]], *, recovering: bool
    ) -> None:
        """Send each node with its input and continuation; when ``recovering``, skip a
        node already sent (an earlier try of the same step sent it, then crashed)."""
        plan = _Plan()
        now = self.app.clock.now()
        for node, value, frames in items:
            if recovering and await self.app.backend.get_status(first_id(node)) is not None:
                continue
            self._plan(node, value, frames, plan, now)
        backend = self.app.backend
        for group_id, size, meta, ttl in plan.groups:
            # Created before any member is sent, so no member finds it missing; it expires
            # with the result TTL, counted from the last write to it.
            await backend.init_group(group_id, size, meta=meta, ttl=ttl)
        if plan.envelopes:
            await self.app._send(plan.envelopes)

    def _plan(self, node: Node, value: Any, frames: list[Frame], plan: _Plan, now: float) -> None:
        if isinstance(node, CallNode):
            plan.envelopes.append(self._envelope(node, value, frames, now))
        elif isinstance(node, GroupNode):
            meta: dict[str, object] = {
                "stem.canvas": "group",
                "members": [result_id(m) for m in node.members],
                "tasks": [i for m in node.members for i in call_ids(m)],
                "then": encode_frames(frames),
                "ttl": node.ttl,
            }
            plan.groups.append((node.id, len(node.members), meta, node.ttl))
            for index, member in enumerate(node.members):
                self._plan(member, value, [MemberFrame(group=node.id, index=index)], plan, now)
        else:
            rest = NextFrame(links=node.links[1:], on_error=node.on_error)
            inner: list[Frame] = [rest] if rest.links or rest.on_error else []
            self._plan(node.links[0], value, inner + frames, plan, now)

    def _envelope(self, node: CallNode, value: Any, frames: list[Frame], now: float) -> Envelope:
        template = node.envelope
        changes: dict[str, Any] = {
            "created_at": now,
            "callbacks": encode_frames(frames) if frames else [],
            "group_id": next((f.group for f in frames if isinstance(f, MemberFrame)), None),
        }
        if node.takes_input:
            encoder = self.app.encoders.get(template.args_encoder)
            changes["args"] = list(encoder.encode([value, *encoder.decode(template.args)]))
        if node.delay:
            changes["eta"] = now + node.delay
        if node.expires_in is not None:
            changes["expires"] = now + node.expires_in
        return msgspec.structs.replace(template, **changes)

    # -- after a final status -----------------------------------------------------------------

    async def after_final(
        self, envelope: Envelope, status: TaskStatus, *, recovering: bool = False
    ) -> None:
        """Go on with the canvas ``envelope`` belongs to, now that its task ended with
        ``status`` (stored): send the next link, or record the result in its group and,
        for the last member, go on with the group; on a failure, mark what will not run
        and send the error callbacks.

        ``recovering``: an earlier try of this step may have done part of it (the message
        was delivered before), so nothing it sent is sent again.
        """
        if not envelope.callbacks:
            return
        await self._go_on(status, decode_frames(envelope.callbacks), recovering, _NOTHING)

    async def _go_on(
        self, status: TaskStatus, frames: list[Frame], recovering: bool, value: Any
    ) -> str | None:
        """Continue after the node whose result is ``status``; returns the id of the task
        sent next (the next link's first, or the first error callback's), if any."""
        if status.state is TaskState.SUCCEEDED:
            for index, frame in enumerate(frames):
                if isinstance(frame, MemberFrame):
                    await self._report(status, frame, recovering)
                    return None
                if not frame.links:
                    continue  # a chain that ended: its error callbacks no longer apply
                rest = NextFrame(links=frame.links[1:], on_error=frame.on_error)
                after: list[Frame] = [rest] if rest.links or rest.on_error else []
                if value is _NOTHING:
                    value = self._plain(status)
                nxt = frame.links[0]
                await self.dispatch(
                    [(nxt, value, after + frames[index + 1 :])], recovering=recovering
                )
                return first_id(nxt)
            return None
        return await self._fail(status, frames, recovering)

    async def _fail(self, status: TaskStatus, frames: list[Frame], recovering: bool) -> str | None:
        """A node failed: the links after it will not run (each gets a failed status that
        names the cause), the error callbacks in scope are sent, and the failure goes on
        into the group the chain is a member of."""
        cause = cause_of(status)
        now = self.app.clock.now()
        markers: dict[str, tuple[TaskStatus, float | None]] = {}
        errbacks: list[Node] = []
        current = status  # what stands for the result of the chain so far
        member: MemberFrame | None = None
        for frame in frames:
            if isinstance(frame, MemberFrame):
                member = frame
                break
            for link in frame.links:
                markers.update(_markers(link, cause, now))
            if frame.links:
                current = markers[result_id(frame.links[-1])][0]
            errbacks.extend(frame.on_error)
        if markers:
            await self.app.backend.set_statuses(list(markers.values()))
        sent = None
        if errbacks:
            failure = msgspec.to_builtins(
                CanvasFailure(
                    task_id=cause["id"],
                    task=cause["task"],
                    error=TaskError(type=cause["type"], message=cause["message"]),
                )
            )
            await self.dispatch([(e, failure, []) for e in errbacks], recovering=recovering)
            sent = first_id(errbacks[0])
        if member is not None:
            await self._report(current, member, recovering)
        return sent

    async def _report(self, status: TaskStatus, frame: MemberFrame, recovering: bool) -> None:
        """Record a member's result; the member that completes the group (or fails it
        first) claims it, and goes on with the group's continuation."""
        backend = self.app.backend
        state = await backend.add_group_result(frame.group, status)
        if state is None:
            log.warning(
                "group %s expired or never existed (its result TTL passed since its last "
                "member finished): the result of %s[%s] is refused and its canvas stops here",
                frame.group,
                status.task,
                status.id,
            )
            return
        stored = state.results.get(status.id, status)  # the first result recorded stands
        if stored.state is TaskState.SUCCEEDED and not state.complete:
            return
        # What the group ended with, worked out before the claim so that the claim can
        # record the task it leads to (a chord's callback, say).
        outcome, values = self._outcome(frame.group, state.meta, state.results, stored)
        frames = decode_frames(state.meta.get("then", []))
        callback = _next_id(outcome, frames)
        claim_meta: dict[str, object] = {} if callback is None else {"callback": callback}
        if await backend.claim_chord(frame.group, stored.id, meta=claim_meta):
            recovering = False  # nobody went on with this group before
        elif state.chord_claimed_by == stored.id:
            recovering = True  # this member claimed it on an earlier delivery, then stopped
        else:
            return  # another member goes on with the group
        await self._go_on(outcome, frames, recovering, values)
        ttl = state.meta.get("ttl")
        await backend.set_status(outcome, ttl=None if ttl is None else float(ttl))

    def _outcome(
        self,
        group_id: str,
        meta: dict[str, Any],
        results: dict[str, TaskStatus],
        claimer: TaskStatus,
    ) -> tuple[TaskStatus, Any]:
        """The group's own result (stored under its id), with the members' values (or
        _NOTHING if it failed)."""
        members = [str(m) for m in meta.get("members", [])]
        now = self.app.clock.now()
        failed = claimer if claimer.state is not TaskState.SUCCEEDED else None
        if failed is None:
            failed = next(
                (
                    r
                    for m in members
                    if (r := results.get(m)) is not None and r.state is not TaskState.SUCCEEDED
                ),
                None,
            )
        info: dict[str, Any] = {"stem.canvas": "group"}
        if failed is None:
            try:
                values = [self._plain(results[m]) for m in members]
                encoder_id = next(
                    (
                        results[m].result_encoder
                        for m in members
                        if results[m].result_encoder != "json"
                    ),
                    "json",
                )
                encoded = self.app.encoders.get(encoder_id).encode(values)
            except Exception as exc:  # a member's result does not decode here
                failed = TaskStatus(
                    id=group_id,
                    state=TaskState.FAILED,
                    task=GROUP_TASK,
                    error=TaskError(
                        type=type(exc).__name__,
                        message=f"the results of group {group_id} cannot be read: {exc}",
                    ),
                    updated_at=now,
                )
            else:
                succeeded = TaskStatus(
                    id=group_id,
                    state=TaskState.SUCCEEDED,
                    task=GROUP_TASK,
                    value=encoded,
                    result_encoder=encoder_id,
                    meta=info,
                    updated_at=now,
                )
                return succeeded, values
        cause = cause_of(failed)
        info["stem.cause"] = cause
        status = TaskStatus(
            id=group_id,
            state=failed.state if failed.state.is_final else TaskState.FAILED,
            task=GROUP_TASK,
            error=TaskError(type=cause["type"], message=cause["message"]),
            meta=info,
            updated_at=now,
        )
        return status, _NOTHING

    def _plain(self, status: TaskStatus) -> Any:
        """A stored result as plain data, decoded by the encoder that wrote it."""
        return self.app.encoders.get(status.result_encoder).decode(status.value)


def _markers(
    node: Node, cause: dict[str, str], now: float
) -> dict[str, tuple[TaskStatus, float | None]]:
    """The failed statuses of everything in ``node``, which will not run because of ``cause``."""
    ttls = _ttls(node)
    error = TaskError(
        type=cause["type"],
        message=f"not run: {cause['task']}[{cause['id']}] failed before it: {cause['message']}",
    )
    return {
        task_id: (
            TaskStatus(
                id=task_id,
                state=TaskState.FAILED,
                task=name,
                error=error,
                meta={"stem.cause": cause, "stem.not_run": True},
                updated_at=now,
            ),
            ttls.get(task_id),
        )
        for task_id, name in all_ids(node)
    }


def _ttls(node: Node) -> dict[str, float | None]:
    found: dict[str, float | None] = {}
    if isinstance(node, CallNode):
        found[node.id] = node.ttl
    elif isinstance(node, GroupNode):
        found[node.id] = node.ttl
        for member in node.members:
            found.update(_ttls(member))
    elif isinstance(node, ChainNode):
        for link in node.links:
            found.update(_ttls(link))
    return found


def _next_id(status: TaskStatus, frames: list[Frame]) -> str | None:
    """The id of the task that going on after ``status`` sends first (as ``_go_on`` does):
    the next link's, or on a failure the first error callback's; None if none."""
    if status.state is TaskState.SUCCEEDED:
        for frame in frames:
            if isinstance(frame, MemberFrame):
                return None
            if frame.links:
                return first_id(frame.links[0])
        return None
    for frame in frames:
        if isinstance(frame, MemberFrame):
            return None
        if frame.on_error:
            return first_id(frame.on_error[0])
    return None
