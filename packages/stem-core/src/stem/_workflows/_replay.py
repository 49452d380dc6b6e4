"""Replay checks: does the current code replay a recorded run the way it was recorded?

``stem wf replay-check`` runs each recorded run's code against its checkpoints without
running a step or writing anything, and stops where the history ends. A call that
does not match what the run recorded raises :class:`NonDeterminismError`: deploying
the code would fail that run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import NonDeterminismError, UnknownWorkflowError
from ..contracts import Resume, RunStatus, StepCheckpoint, WorkflowRun
from ._definitions import Flow
from ._execution import Execution, Suspended

if TYPE_CHECKING:
    from .._app import Stem

__all__ = ["replay_check"]


class _HistoryEnd(BaseException):
    """The replay reached the end of what the run recorded."""


class _Replay(Execution):
    def new_ground(self) -> None:
        raise _HistoryEnd()

    def check_policy(self) -> None:
        return None

    async def suspend(self, **where: Any) -> Resume:
        raise _HistoryEnd()


async def replay_check(app: Stem, run: WorkflowRun, steps: list[StepCheckpoint]) -> None:
    """Replay ``run`` (with its recorded ``steps``) against the app's code.

    Raises:
        UnknownWorkflowError: the app has no workflow of the run's name.
        NonDeterminismError: the code calls something other than what was recorded.
        Exception: the code raised where the recorded run did not fail.
    """
    definition = app.workflows.get(run.workflow)
    if definition is None:
        raise UnknownWorkflowError(
            f"run {run.id} is of workflow {run.workflow!r}, which the app does not register"
        )
    if isinstance(definition, Flow):
        _check_flow(definition, run, steps)
        return
    # No store: a replay that would write has reached new ground and stopped before.
    execution = _Replay(app, None, run, steps)  # type: ignore[arg-type]
    try:
        await definition.execute(execution)
    except (_HistoryEnd, Suspended):
        return
    except NonDeterminismError:
        raise
    except Exception:
        if run.status is RunStatus.FAILED:
            return  # it failed when it ran, too
        raise


def _check_flow(flow: Flow, run: WorkflowRun, steps: list[StepCheckpoint]) -> None:
    for step in steps:
        declared = flow.steps[step.position].name if step.position < len(flow.steps) else None
        base = step.name.rpartition("#")[0] or step.name
        if declared is None or (step.name != declared and base != declared):
            raise NonDeterminismError(
                f"run {run.id} recorded step {step.name!r} at position {step.position}, "
                f"but flow {flow.name!r} now has "
                + (f"step {declared!r} there" if declared else f"only {len(flow.steps)} steps")
            )
