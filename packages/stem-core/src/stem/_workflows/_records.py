"""What workflow callers hold: run references, results, and step retry policies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .._errors import ConfigurationError
from .._messages import TaskError
from .._options import ExponentialBackoff
from ..contracts import RunStatus, WorkflowRun

__all__ = ["StepRetry", "WorkflowRef", "WorkflowResult"]

R_co = TypeVar("R_co", covariant=True)
R = TypeVar("R")


class WorkflowRef(str, Generic[R_co]):
    """A workflow run id that remembers the workflow's result type, for typed
    :meth:`Stem.wait_for_workflow`."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class WorkflowResult(Generic[R]):
    """How a run ended (or where it stood when the wait ran out).

    ``value`` is the workflow's return value (converted to its annotation when the
    workflow is registered in this process) if it completed; ``error`` says why it
    failed or was cancelled; ``timed_out`` is true if the wait ended first.
    """

    run_id: str
    status: RunStatus | None
    value: R | None = None
    error: TaskError | None = None
    timed_out: bool = False
    run: WorkflowRun | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.COMPLETED


@dataclass(frozen=True, slots=True)
class StepRetry:
    """How often a step is tried, and how long to wait between tries.

    Args:
        attempts: tries in all (1: no retry).
        backoff: seconds before try ``n + 1`` after try ``n`` failed (``backoff(n)``);
            exponential with jitter by default.
        retry_for: the exceptions that are retried; others fail the step at once.

    The waits happen in the worker running the run (its lease renewed meanwhile); a
    crash in between starts the step's tries again on the next worker.
    """

    attempts: int = 1
    backoff: Callable[[int], float] = field(
        default_factory=lambda: ExponentialBackoff(base=1.0, max_delay=60.0)
    )
    retry_for: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if (
            isinstance(self.attempts, bool)
            or not isinstance(self.attempts, int)
            or self.attempts < 1
        ):
            raise ConfigurationError(f"StepRetry needs attempts >= 1, not {self.attempts!r}")

    def retries(self, exc: BaseException, attempt: int) -> bool:
        return attempt < self.attempts and isinstance(exc, self.retry_for)


NO_RETRY = StepRetry()
