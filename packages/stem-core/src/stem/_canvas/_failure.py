"""How a canvas fails: the cause it carries along, what error callbacks get, what
handles raise."""

from __future__ import annotations

import msgspec

from .._errors import StemError
from .._messages import TaskError, TaskState, TaskStatus

__all__ = ["CanvasFailedError", "CanvasFailure", "cause_of"]


class CanvasFailure(msgspec.Struct, frozen=True, kw_only=True):
    """What an error callback gets as its first argument: the task that failed first
    and its error. Annotate the parameter ``failure: CanvasFailure`` to get this struct
    (the worker converts it, as any argument)."""

    task_id: str
    task: str
    error: TaskError


class CanvasFailedError(StemError):
    """A canvas failed: raised by a handle's ``result()`` (a group's ``results()``).

    Attributes:
        task_id, task: the task that failed first (the cause: a later link that did
            not run, or a chord's callback, names it too).
        error: that task's error (``type`` is its exception's class, e.g. ``"ValueError"``).
        result_id: the id whose status the handle read (the canvas's result).
    """

    def __init__(self, task_id: str, task: str, error: TaskError, result_id: str) -> None:
        super().__init__(f"{task}[{task_id}] failed: {error.type}: {error.message}")
        self.task_id, self.task, self.error, self.result_id = task_id, task, error, result_id


CanvasFailedError.__module__ = CanvasFailure.__module__ = "stem"


def cause_of(status: TaskStatus) -> dict[str, str]:
    """The first failure behind a failed (or revoked) status: the status itself, or the
    cause it carries if it only failed because of another task."""
    carried = status.meta.get("stem.cause") if status.meta else None
    if isinstance(carried, dict) and {"id", "task", "type", "message"} <= carried.keys():
        return {k: str(carried[k]) for k in ("id", "task", "type", "message")}
    error = status.error
    if error is None:
        kind = "Revoked" if status.state is TaskState.REVOKED else "Failed"
        error = TaskError(type=kind, message=f"{status.task} ended {status.state}")
    return {"id": status.id, "task": status.task, "type": error.type, "message": error.message}


def error_of(status: TaskStatus) -> CanvasFailedError:
    """What a handle raises for a failed result ``status``."""
    cause = cause_of(status)
    traceback = status.error.traceback if status.error and cause["id"] == status.id else None
    return CanvasFailedError(
        cause["id"],
        cause["task"],
        TaskError(type=cause["type"], message=cause["message"], traceback=traceback),
        status.id,
    )
