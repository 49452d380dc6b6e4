"""The WorkflowStore contract: durable state of workflow runs.

Its records and methods are fixed here so adapters and the workflow runtime
(a later part of Stem) build against one shape.
"""

from __future__ import annotations

import abc
import enum
from typing import Any

import msgspec

from .._clock import Clock, SystemClock

__all__ = ["RunStatus", "StepCheckpoint", "Watcher", "WorkflowRun", "WorkflowStore"]


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkflowRun(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    workflow: str
    status: RunStatus = RunStatus.RUNNING
    params: dict[str, Any] = {}
    result: Any = None
    error: str | None = None
    cursor: int = 0
    resume_at: float | None = None
    wait_topic: str | None = None
    resume_data: Any = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    meta: dict[str, Any] = {}


class StepCheckpoint(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    name: str
    position: int
    value: Any = None
    completed_at: float = 0.0


class Watcher(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    topic: str
    step: str
    deadline: float | None = None
    created_at: float = 0.0


class WorkflowStore(abc.ABC):
    """Runs, their step checkpoints, suspensions, event watchers and leases."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()

    @abc.abstractmethod
    async def create_run(self, run: WorkflowRun) -> None: ...

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> WorkflowRun | None: ...

    @abc.abstractmethod
    async def list_runs(
        self, *, workflow: str | None = None, status: RunStatus | None = None, limit: int = 100
    ) -> list[WorkflowRun]: ...

    @abc.abstractmethod
    async def read_step(self, run_id: str, name: str) -> StepCheckpoint | None: ...

    @abc.abstractmethod
    async def save_step(self, checkpoint: StepCheckpoint) -> None:
        """Save a checkpoint; also refreshes the run's ``updated_at`` (a heartbeat)."""

    @abc.abstractmethod
    async def list_steps(self, run_id: str) -> list[StepCheckpoint]: ...

    @abc.abstractmethod
    async def suspend_until(self, run_id: str, resume_at: float, data: Any = None) -> None: ...

    @abc.abstractmethod
    async def suspend_on_topic(self, run_id: str, watcher: Watcher) -> None: ...

    @abc.abstractmethod
    async def resolve_watchers(self, topic: str, payload: Any) -> list[str]:
        """Atomically hand ``payload`` to every run waiting on ``topic``; returns their ids."""

    @abc.abstractmethod
    async def list_watchers(self, topic: str | None = None) -> list[Watcher]: ...

    @abc.abstractmethod
    async def set_status(
        self, run_id: str, status: RunStatus, *, result: Any = None, error: str | None = None
    ) -> None: ...

    @abc.abstractmethod
    async def claim_run(self, run_id: str, owner: str, ttl: float) -> bool: ...

    @abc.abstractmethod
    async def renew_run(self, run_id: str, owner: str, ttl: float) -> bool: ...

    @abc.abstractmethod
    async def release_run(self, run_id: str, owner: str) -> None: ...

    @abc.abstractmethod
    async def due_runs(self, now: float, *, limit: int = 100) -> list[str]: ...

    @abc.abstractmethod
    async def runs_waiting_on(self, topic: str) -> list[str]: ...

    @abc.abstractmethod
    async def cancel_run(self, run_id: str, reason: str | None = None) -> bool: ...

    @abc.abstractmethod
    async def rewind(self, run_id: str, step: str) -> None:
        """Drop the checkpoints from ``step`` on, so the run replays from there."""

    async def aclose(self) -> None:
        """Release connections."""
