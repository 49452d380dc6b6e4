"""One execution of a run: what it recorded, what woke it, and its fenced writes.

A run executes from its top each time a worker claims it; calls whose position is
below the run's cursor return their checkpoints instead of running (replay). The
first call at the cursor may consume what woke the run (``resume``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from .._codec import enc_hook, encode_problem, plain_problem
from .._errors import NonDeterminismError, SerializationError, StemError
from .._execute import task_error
from .._messages import TaskError
from ..contracts import Resume, StepCheckpoint, WorkflowRun, WorkflowStore
from ._records import StepRetry

if TYPE_CHECKING:
    from .._app import Stem

__all__ = [
    "Execution",
    "PolicyExceeded",
    "StepFailedError",
    "Suspended",
    "non_determinism",
    "return_hint",
    "storable",
    "typed",
]


class Suspended(BaseException):
    """Unwinds a workflow's code once its run is suspended in the store.

    A BaseException, so that ``except Exception`` in workflow code does not swallow it.
    """


class PolicyExceeded(Exception):
    """A run went past ``max_run_duration`` or ``max_suspend_duration``: cancel it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepFailedError(StemError):
    """A workflow step raised on its last try.

    Raised by ``await wf.step(...)``: uncaught, it fails the run with the step's own
    error. The failure is recorded, so a replay raises it again instead of running the
    step, and a script that catches it takes the same path on every execution.

    Attributes:
        step: the step's name (with its occurrence, ``charge#1``).
        attempts: how many tries it had.
        error: the step's error record (its ``type`` is the exception's class, e.g.
            ``"ValueError"``, its ``traceback`` the step's).
    """

    def __init__(self, step: str, attempts: int, error: TaskError) -> None:
        tries = f"{attempts} attempts" if attempts > 1 else "1 attempt"
        super().__init__(f"step {step!r} failed after {tries}: {error.message}")
        self.step, self.attempts, self.error = step, attempts, error


def storable(value: Any, what: str) -> Any:
    """``value`` as the plain data a store keeps (what a replay will return).

    Raises:
        SerializationError: it cannot be stored exactly (naming ``what``).
    """
    try:
        plain = msgspec.to_builtins(value, enc_hook=enc_hook)
    except Exception as exc:
        raise SerializationError(f"{what} cannot be stored: {encode_problem(exc)}") from None
    problem = plain_problem(plain)
    if problem is not None:
        raise SerializationError(f"{what} cannot be stored: {problem}")
    return plain


def typed(value: Any, hint: Any) -> Any:
    """A stored value converted to ``hint`` (as it was the first time, on every replay)."""
    if hint is None or hint is Any or value is None:
        return value
    try:
        return msgspec.convert(value, hint, strict=False)
    except (msgspec.ValidationError, TypeError):
        return value


@functools.lru_cache(maxsize=1024)
def return_hint(fn: Callable[..., Any]) -> Any:
    """``fn``'s return annotation (cached: every step of every replay asks)."""
    try:
        return inspect.signature(fn, eval_str=True).return_annotation
    except Exception:
        return None


class Execution:
    """The state of one execution of a run, held by the worker that claimed it."""

    def __init__(
        self,
        app: Stem,
        store: WorkflowStore,
        run: WorkflowRun,
        steps: list[StepCheckpoint],
    ) -> None:
        self.app, self.store, self.run = app, store, run
        self.fence = run.fence
        self.started_cursor = run.cursor
        self._resume: Resume | None = run.resume
        self._steps: dict[int, list[StepCheckpoint]] = {}
        for step in steps:
            self._steps.setdefault(step.position, []).append(step)

    def now(self) -> float:
        return self.app.clock.now()

    # -- what was recorded ---------------------------------------------------------------

    def recorded(self, position: int) -> StepCheckpoint | None:
        """The checkpoint a replay returns at ``position`` (its latest version)."""
        if position >= self.run.cursor:
            return None
        found = self._steps.get(position)
        return found[-1] if found else None

    def versions(self, position: int) -> list[StepCheckpoint]:
        """Every checkpoint at ``position``, kept versions included."""
        return list(self._steps.get(position, ()))

    def take_resume(self, position: int) -> Resume | None:
        """What woke the run, for the call at the cursor it woke at (once)."""
        if position != self.started_cursor or self._resume is None:
            return None
        resume, self._resume = self._resume, None
        return resume

    def peek_resume(self, position: int) -> Resume | None:
        return self._resume if position == self.started_cursor else None

    def take_event_resume(self, topic: str) -> Resume | None:
        """What woke the run, if it was an event (or a timeout) on ``topic``: for the
        first wait on the topic that the run has not recorded (once)."""
        if self._resume is None or self._resume.topic != topic:
            return None
        resume, self._resume = self._resume, None
        return resume

    def new_ground(self) -> None:
        """The code is about to do something the run has not recorded (a replay check
        stops here)."""

    # -- fenced writes -------------------------------------------------------------------

    async def save(
        self,
        position: int,
        name: str,
        value: Any,
        kind: str,
        *,
        attempts: int = 1,
        started_at: float | None = None,
        error: TaskError | None = None,
    ) -> None:
        now = self.now()
        checkpoint = StepCheckpoint(
            run_id=self.run.id,
            position=position,
            name=name,
            value=value,
            kind=kind,
            attempts=attempts,
            error=error,
            started_at=now if started_at is None else started_at,
            completed_at=now,
        )
        await self.store.save_step(self.run.id, self.fence, checkpoint)
        self._steps.setdefault(position, []).append(checkpoint)
        self.run.cursor = max(self.run.cursor, position + 1)

    async def suspend(
        self,
        *,
        wake_at: float | None,
        resume_at: float | None = None,
        topic: str | None = None,
        deadline: float | None = None,
    ) -> Resume:
        """Suspend the run (and unwind its code), or return the event kept for it."""
        self.check_policy()
        found = await self.store.suspend(
            self.run.id,
            self.fence,
            wake_at=self._capped(wake_at),
            resume_at=resume_at,
            topic=topic,
            deadline=deadline,
        )
        if found is None:
            raise Suspended()
        return found

    def _capped(self, wake_at: float | None) -> float | None:
        """The wake time, brought forward to where a policy would cancel the run."""
        policy, now = self.run.policy, self.now()
        caps = [wake_at] if wake_at is not None else []
        if policy is not None:
            if policy.max_run_duration is not None:
                caps.append(self.run.created_at + policy.max_run_duration)
            if policy.max_suspend_duration is not None:
                caps.append(now + policy.max_suspend_duration)
        return min(caps) if caps else None

    def check_policy(self) -> None:
        """Raise :class:`PolicyExceeded` if the run has gone past a limit."""
        policy = self.run.policy
        if policy is None:
            return
        now = self.now()
        limit = policy.max_run_duration
        if limit is not None and now >= self.run.created_at + limit:
            raise PolicyExceeded(f"the run went past its max_run_duration ({limit:g} s)")
        limit = policy.max_suspend_duration
        suspended = self.run.suspended_at
        if limit is not None and suspended is not None and now >= suspended + limit:
            raise PolicyExceeded(
                f"the run stayed suspended past max_suspend_duration ({limit:g} s)"
            )

    # -- calling user code ---------------------------------------------------------------

    async def call(
        self,
        step: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: StepRetry,
    ) -> tuple[Any, int, float]:
        """Run a step's function with its retries: (value, attempts, started_at).

        Raises:
            StepFailedError: the last try raised.
        """
        started = self.now()
        attempt = 0
        while True:
            attempt += 1
            try:
                if inspect.iscoroutinefunction(fn):
                    value = await fn(*args, **kwargs)
                else:
                    value = await asyncio.to_thread(fn, *args, **kwargs)
                    if inspect.isawaitable(value):  # a plain function returning a coroutine
                        value = await value
                return value, attempt, started
            except Exception as exc:
                if not retry.retries(exc, attempt):
                    raise StepFailedError(step, attempt, task_error(exc)) from exc
                await self.app.clock.sleep(max(0.0, retry.backoff(attempt)))
                self.check_policy()


def non_determinism(
    run_id: str, position: int, recorded: StepCheckpoint, kind: str, name: str
) -> NoReturn:
    raise NonDeterminismError(
        f"replay mismatch in run {run_id} at position {position}: it recorded {recorded.kind} "
        f"{recorded.name!r} there, but the code now calls {kind} {name!r}. The workflow's "
        "code changed under this run: guard the change with `if await wf.patched(...)`, "
        "or rewind the run to a step before the change"
    )
