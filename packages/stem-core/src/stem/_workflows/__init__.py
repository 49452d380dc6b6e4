"""Durable workflows: scripts and flows whose progress survives crashes (DESIGN section 5)."""

from __future__ import annotations

from ._context import ChildWorkflowError, FlowContext, WorkflowContext
from ._definitions import Flow, Workflow, policy_of
from ._engine import RUN_TASK, Workflows
from ._execution import StepFailedError
from ._records import StepRetry, WorkflowRef, WorkflowResult
from ._replay import replay_check

__all__ = [
    "RUN_TASK",
    "ChildWorkflowError",
    "Flow",
    "FlowContext",
    "StepFailedError",
    "StepRetry",
    "Workflow",
    "WorkflowContext",
    "WorkflowRef",
    "WorkflowResult",
    "Workflows",
    "policy_of",
    "replay_check",
]

# Public errors are named from the package (``stem.StepFailedError``), as in _errors.
for _error in (ChildWorkflowError, StepFailedError):
    _error.__module__ = "stem"
del _error
