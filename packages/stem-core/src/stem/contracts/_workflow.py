"""The WorkflowStore contract: the durable state of workflow runs.

A run moves through these states (``RunStatus``)::

    pending ──claim──> running ──suspend──> suspended ──(due, or an event)──> pending
       ^                 │  │                                                  │
       └──── release ────┘  └──finish──> completed | failed       cancel ──> cancelled

The store is the one place that decides who may run a run and when:

* ``claim_run`` leases a runnable run to one owner and gives it a new **fence**
  number; every write the owner makes afterwards (``save_step``, ``suspend``,
  ``finish_run``, ``renew_run``) carries that fence, and is refused with
  :class:`stem.LeaseLostError` once another claim, a cancel or a rewind has moved the
  fence on. So a worker that lost its lease can never overwrite newer state.
* ``wake_at`` says when ``due_runs`` may hand the run out (to be dispatched to a
  worker): a sleep's end, an event's deadline, a lease's end (so a crashed worker's
  run comes back), or a little after a start or resolution (so a dispatch that was
  lost is made again). ``due_runs`` moves it forward as it hands a run out, so two
  callers never get the same run in one window.
* Events resolve watchers atomically: the payload is stored in the run (``resume``)
  in the same step that removes the watcher, and stays there until the run's next
  checkpoint, so a worker that crashes after claiming the run still finds it.
  ``send_event`` keeps a payload for one run until it waits on the topic.

Times: ``claim_run``, ``renew_run``, ``due_runs`` and every ``now`` the store stamps
come from the store's clock (``self.clock``, or a server's clock in production);
``resume_at``, ``deadline`` and ``wake_at`` passed in are on the caller's clock, like
a message's ``eta``.
"""

from __future__ import annotations

import abc
import enum
from typing import Any, Literal

import msgspec

from .._clock import Clock, SystemClock
from .._messages import TaskError

__all__ = [
    "Resume",
    "RunPolicy",
    "RunStatus",
    "StepCheckpoint",
    "Watcher",
    "WorkflowRun",
    "WorkflowStore",
]


class RunStatus(enum.StrEnum):
    PENDING = "pending"  # runnable: waiting for a worker to claim it
    RUNNING = "running"  # leased to a worker
    SUSPENDED = "suspended"  # sleeping, or waiting for an event
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class RunPolicy(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Limits after which a run is cancelled, in seconds (None: no limit)."""

    max_run_duration: float | None = None
    max_suspend_duration: float | None = None


class Resume(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What woke a suspended run: its sleep ended, an event came, or its wait timed out."""

    kind: Literal["wake", "event", "timeout"]
    topic: str | None = None
    payload: Any = None


class WorkflowRun(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One run of a workflow, as the store keeps it."""

    id: str
    workflow: str
    status: RunStatus = RunStatus.PENDING
    params: dict[str, Any] = {}
    #: The queue its executions are dispatched on.
    queue: str = "default"
    result: Any = None
    error: TaskError | None = None
    #: The position of the next step to record (a rewind moves it back).
    cursor: int = 0
    #: When ``due_runs`` may hand the run out next (None: not until something happens).
    wake_at: float | None = None
    #: The end of the sleep it is suspended in.
    resume_at: float | None = None
    wait_topic: str | None = None
    wait_deadline: float | None = None
    #: What woke it, until its next checkpoint.
    resume: Resume | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    #: Moves on at every claim, cancel and rewind; writes carry the fence they claimed with.
    fence: int = 0
    policy: RunPolicy | None = None
    parent_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    #: When it last suspended; kept when its wake time comes (the engine judges
    #: ``max_suspend_duration`` by it), cleared when an event resolves it.
    suspended_at: float | None = None
    finished_at: float | None = None
    meta: dict[str, Any] = {}


class StepCheckpoint(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A step's recorded outcome. ``name`` is unique within its run; ``position`` is the
    step's place in the run (versions ``name#0``, ``name#1`` of a flow step share one)."""

    run_id: str
    position: int
    name: str
    value: Any = None
    #: "step", "sleep", "event", "patch" or "child": what kind of call recorded it.
    kind: str = "step"
    attempts: int = 1
    #: Set when the step failed on its last try (``value`` is then None): a replay
    #: raises it again instead of running the step.
    error: TaskError | None = None
    started_at: float = 0.0
    completed_at: float = 0.0


class Watcher(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A run suspended until an event on ``topic`` (or its deadline)."""

    run_id: str
    topic: str
    deadline: float | None = None
    created_at: float = 0.0


class WorkflowStore(abc.ABC):
    """Runs, their step checkpoints, suspensions, event watchers and leases.

    See the module docstring for the states, fencing and ``wake_at``. Every method is
    atomic with respect to every other on the same store.
    """

    def __init__(self, *, clock: Clock | None = None, poll_interval: float = 0.5) -> None:
        self.clock: Clock = clock or SystemClock()
        self.poll_interval = poll_interval

    # -- runs -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_run(self, run: WorkflowRun) -> None:
        """Store a new run as given.

        Raises:
            DuplicateRunError: a run with this id exists.
        """

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> WorkflowRun | None: ...

    @abc.abstractmethod
    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[WorkflowRun]:
        """Runs matching every filter given, oldest first (by ``created_at``, then id)."""

    # -- leases -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def claim_run(self, run_id: str, owner: str, ttl: float) -> WorkflowRun | None:
        """Lease a runnable run to ``owner`` for ``ttl`` seconds; returns it as claimed
        (``fence`` moved on, ``status`` running), or None if it is not runnable now.

        Runnable: pending; running with its lease ended (its worker died); suspended with
        ``wake_at`` reached, which wakes it first as ``due_runs`` does. ``wake_at``
        becomes the lease's end.
        """

    @abc.abstractmethod
    async def renew_run(self, run_id: str, fence: int, ttl: float) -> bool:
        """Extend the lease of a running run still at ``fence``; False if it is not."""

    @abc.abstractmethod
    async def release_run(self, run_id: str, fence: int) -> bool:
        """Give a running run back (pending, due now), e.g. on shutdown; False if not ours."""

    # -- progress (every write is fenced) ------------------------------------------------------

    @abc.abstractmethod
    async def save_step(self, run_id: str, fence: int, checkpoint: StepCheckpoint) -> None:
        """Record a checkpoint (replacing one of the same name), move the cursor past it
        (never back: steps run at once may be saved out of order), clear ``resume``, and
        refresh ``updated_at`` (a heartbeat).

        Raises:
            LeaseLostError: the run is not running at ``fence``.
        """

    @abc.abstractmethod
    async def list_steps(self, run_id: str) -> list[StepCheckpoint]:
        """The run's checkpoints by position (versions of one step in the order recorded)."""

    @abc.abstractmethod
    async def suspend(
        self,
        run_id: str,
        fence: int,
        *,
        wake_at: float | None,
        resume_at: float | None = None,
        topic: str | None = None,
        deadline: float | None = None,
    ) -> Resume | None:
        """Suspend a running run: sleeping until ``resume_at``, or waiting on ``topic``
        until ``deadline``; ``wake_at`` is when ``due_runs`` hands it out (the sleep's end
        or the deadline, earlier if a policy says so). The lease ends.

        With a topic, an event kept for the run by ``send_event`` is taken instead, oldest
        first: the run stays running and leased, the event becomes its ``resume`` (so a
        crash before the next checkpoint does not lose it), and is returned.

        Raises:
            LeaseLostError: the run is not running at ``fence``.
        """

    @abc.abstractmethod
    async def finish_run(
        self,
        run_id: str,
        fence: int,
        status: RunStatus,
        *,
        result: Any = None,
        error: TaskError | None = None,
    ) -> None:
        """Mark a running run completed or failed, with its result or error; its lease,
        ``wake_at`` and kept events go.

        Raises:
            LeaseLostError: the run is not running at ``fence``.
        """

    # -- events -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def emit(self, topic: str, payload: Any) -> list[str]:
        """Resolve every run waiting on ``topic``: each gets ``payload`` (``resume``) and
        becomes pending, due now, its watcher gone; returns their ids."""

    @abc.abstractmethod
    async def send_event(self, run_id: str, topic: str, payload: Any) -> bool:
        """Give ``payload`` to one run: at once if it waits on ``topic``, else kept until
        it does (several are taken oldest first). False if the run is unknown or final."""

    @abc.abstractmethod
    async def list_watchers(self, topic: str | None = None) -> list[Watcher]:
        """Runs waiting for an event (on ``topic``), oldest first."""

    async def runs_waiting_on(self, topic: str) -> list[str]:
        return [w.run_id for w in await self.list_watchers(topic)]

    # -- dispatch ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def due_runs(self, *, limit: int = 100, redispatch_after: float = 30.0) -> list[str]:
        """Hand out up to ``limit`` runs whose ``wake_at`` has come (earliest first) and
        that no live lease holds; each one's ``wake_at`` moves ``redispatch_after``
        seconds on, so it is handed out again only if no worker claims it by then.

        A suspended run handed out wakes: it becomes pending, and ``resume`` says why
        (``wake`` at a sleep's end; ``timeout``, with its watcher gone, for a wait), so
        an event emitted after that no longer reaches it.
        """

    async def next_wake(self) -> float | None:
        """The earliest ``wake_at`` of any run, on the caller's clock, if known (lets the
        dispatcher sleep until then); the default knows nothing."""
        return None

    async def wait_for_change(self, run_id: str, timeout: float) -> None:
        """Return when the run's status may have changed, or after ``timeout`` seconds
        (a checkpoint or a lease renewal need not wake it); the default sleeps a poll
        interval. Adapters that can be notified override it."""
        await self.clock.sleep(min(timeout, self.poll_interval))

    # -- operators --------------------------------------------------------------------------

    @abc.abstractmethod
    async def cancel_run(self, run_id: str, reason: str) -> bool:
        """Cancel a run that is not final: status cancelled, the reason as its error
        (type ``Cancelled``), the fence moved on, lease, watcher and ``wake_at`` gone.
        False if the run is unknown or final."""

    @abc.abstractmethod
    async def rewind(self, run_id: str, step: str) -> bool:
        """Make the run replay from the checkpoint named ``step``: the checkpoints after
        its position go, and so does ``step`` itself (other versions at its position,
        ``step#0``... when rewinding to ``step``, stay as history). The run becomes
        pending and due now, with the cursor at that position, no result, error, lease
        or wait, and its fence moved on. False if the run has no such checkpoint."""

    async def aclose(self) -> None:
        """Release connections."""
