"""Handles on applied canvases: wait for the result, typed; revoke."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from .._errors import TaskTimeoutError
from .._messages import TaskState, TaskStatus
from ._failure import error_of
from ._nodes import CallNode, ChainNode, GroupNode, Node, call_ids, error_callback_ids, result_id

if TYPE_CHECKING:
    from .._app import Stem

__all__ = ["CanvasHandle", "GroupHandle"]

R = TypeVar("R")


class CanvasHandle(Generic[R]):
    """An applied canvas: every id in it is fixed, so any process can wait on it.

    ``id`` is where the canvas's result is stored: the last link's task id for a chain,
    the callback's for a chord, the group's id for a group.
    """

    def __init__(self, app: Stem, node: Node) -> None:
        self.app = app
        self.node = node
        self.id = result_id(node)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"

    @property
    def task_ids(self) -> list[str]:
        """Every task of the canvas (error callbacks left out), in order."""
        return call_ids(self.node)

    @property
    def error_callback_ids(self) -> list[str]:
        """The task id of each error callback (``on_error``): wait on one with
        ``app.wait_for_task`` to see it run. It gets a status only if it is sent."""
        return error_callback_ids(self.node)

    async def status(self) -> TaskStatus | None:
        """The stored status of the canvas's result (None until it is known)."""
        return await self.app.backend.get_status(self.id)

    async def result(self, *, timeout: float | None = None) -> R:
        """Wait for the canvas's result, decoded to the tasks' return annotations.

        Raises:
            CanvasFailedError: a task failed (or was revoked); it names the first one.
            TaskTimeoutError: no result within ``timeout`` seconds.
        """
        last: TaskStatus | None = None
        async for status in self.app.backend.watch(self.id, timeout=timeout):
            last = status
        if last is None or not last.state.is_final:
            raise TaskTimeoutError(
                f"the canvas's result ({self.id}) was not ready within {timeout} seconds; "
                "wait again, or read handle.status()"
            )
        if last.state is not TaskState.SUCCEEDED:
            raise error_of(last)
        plain = self.app.encoders.get(last.result_encoder).decode(last.value)
        value: R = self._decode(self.node, plain)
        return value

    async def revoke(self, *, terminate: bool = False, reason: str | None = None) -> None:
        """Revoke every task of the canvas (error callbacks excepted, so they run): those
        not started never run, and with ``terminate`` running ones are stopped. The
        canvas then fails, with a revoked task as its cause."""
        await self.app._canvas.revoke(
            self.task_ids, terminate=terminate, reason=reason or f"canvas {self.id} revoked"
        )

    def _decode(self, node: Node, plain: Any) -> Any:
        if isinstance(node, ChainNode):
            return self._decode(node.links[-1], plain)
        if isinstance(node, GroupNode):
            if not isinstance(plain, list) or len(plain) != len(node.members):
                return plain
            return [self._decode(m, p) for m, p in zip(node.members, plain, strict=True)]
        assert isinstance(node, CallNode)
        task = self.app.tasks.get(node.envelope.task)
        if task is None or task.return_type is Any:
            return plain
        return msgspec.convert(plain, task.return_type, strict=False)


class GroupHandle(CanvasHandle[list[R]]):
    """An applied group: ``await handle.results()`` gives its members' results in order."""

    @property
    def group_id(self) -> str:
        return self.id

    async def results(self, *, timeout: float | None = None) -> list[R]:
        """The members' results, in the order of the group (see :meth:`result`)."""
        return await self.result(timeout=timeout)
