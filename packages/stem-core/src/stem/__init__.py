"""Stem: background jobs and durable workflows for Python.

Quick start::

    from stem import Stem, TaskContext

    app = Stem.from_url("sqlite:///stem.db")

    @app.task(max_retries=3)
    async def add(ctx: TaskContext, a: int, b: int) -> int:
        return a + b

    ref = await add.enqueue(2, 3)
    result = await app.wait_for_task(ref, timeout=10)
"""

from __future__ import annotations

from ._app import DEFAULT_URL, Stem
from ._beat import Beat, Clocked, Cron, Interval, ScheduleDefinition, Solar
from ._canvas import (
    CanvasFailedError,
    CanvasFailure,
    CanvasHandle,
    Chain,
    Chord,
    Group,
    GroupHandle,
    Partial,
    chain,
    chord,
    group,
)
from ._clock import Clock, FakeClock, SystemClock
from ._codec import EncoderRegistry, JsonPayloadEncoder, PayloadEncoder
from ._deadletters import DeadLetters
from ._errors import (
    AdapterError,
    ArgumentError,
    ConfigurationError,
    DecodeError,
    DuplicateRunError,
    EventTimeoutError,
    LeaseLostError,
    NonDeterminismError,
    Reject,
    Retry,
    ScheduleConflictError,
    SchemaVersionError,
    SerializationError,
    SoftTimeLimitExceeded,
    StemError,
    StemWarning,
    StoreLostError,
    TaskTimeoutError,
    TimeLimitExceeded,
    UnknownSchemeError,
    UnknownTaskError,
    UnknownWorkflowError,
)
from ._hooks import Hooks
from ._messages import (
    DeadLetter,
    DeadLetterView,
    Envelope,
    TaskError,
    TaskResult,
    TaskState,
    TaskStatus,
    WorkerHeartbeat,
)
from ._options import ExponentialBackoff, RateLimit, TaskOptions
from ._registry import register_adapter
from ._task import Task, TaskCall, TaskContext, TaskRef
from ._workflows import (
    ChildWorkflowError,
    Flow,
    FlowContext,
    StepFailedError,
    StepRetry,
    Workflow,
    WorkflowContext,
    WorkflowRef,
    WorkflowResult,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "AdapterError",
    "ArgumentError",
    "Beat",
    "CanvasFailedError",
    "CanvasFailure",
    "CanvasHandle",
    "Chain",
    "ChildWorkflowError",
    "Chord",
    "Clock",
    "Clocked",
    "ConfigurationError",
    "Cron",
    "DeadLetter",
    "DeadLetterView",
    "DeadLetters",
    "DecodeError",
    "DuplicateRunError",
    "EncoderRegistry",
    "Envelope",
    "EventTimeoutError",
    "ExponentialBackoff",
    "FakeClock",
    "Flow",
    "FlowContext",
    "Group",
    "GroupHandle",
    "Hooks",
    "Interval",
    "JsonPayloadEncoder",
    "LeaseLostError",
    "NonDeterminismError",
    "Partial",
    "PayloadEncoder",
    "RateLimit",
    "Reject",
    "Retry",
    "ScheduleConflictError",
    "ScheduleDefinition",
    "SchemaVersionError",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "Solar",
    "Stem",
    "StemError",
    "StemWarning",
    "StepFailedError",
    "StepRetry",
    "StoreLostError",
    "SystemClock",
    "Task",
    "TaskCall",
    "TaskContext",
    "TaskError",
    "TaskOptions",
    "TaskRef",
    "TaskResult",
    "TaskState",
    "TaskStatus",
    "TaskTimeoutError",
    "TimeLimitExceeded",
    "UnknownSchemeError",
    "UnknownTaskError",
    "UnknownWorkflowError",
    "WorkerHeartbeat",
    "Workflow",
    "WorkflowContext",
    "WorkflowRef",
    "WorkflowResult",
    "__version__",
    "chain",
    "chord",
    "group",
    "register_adapter",
]
