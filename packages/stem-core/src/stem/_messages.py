"""The records Stem moves and stores: envelopes, deliveries, statuses, dead letters.

All are msgspec Structs, so they encode to JSON or MessagePack quickly and decode
with validation. Times are seconds since the epoch (floats, UTC).
"""

from __future__ import annotations

import enum
from typing import Any, Generic, TypeVar

import msgspec

__all__ = [
    "DeadLetter",
    "DeadLetterView",
    "Delivery",
    "Envelope",
    "GroupState",
    "Message",
    "QueueStats",
    "RevokeEntry",
    "Subscription",
    "TaskError",
    "TaskResult",
    "TaskState",
    "TaskStatus",
    "UniqueClaim",
    "WorkerHeartbeat",
]

T = TypeVar("T")

# Envelope, Delivery and TaskStatus are made by the thousand per second and some are
# kept a long time (statuses in a backend's memory), so they are not tracked by the
# cycle collector (gc=False): they cannot be part of a reference cycle, since they hold
# decoded data, other records or a caller's arguments, none of which refers back to
# them. Reference counting frees them as usual; only full collections get cheaper.


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """One task message: what to run, with what, and how.

    ``args`` and ``kwargs`` hold values already passed through the payload encoder
    named by ``args_encoder``; ``result_encoder`` names the encoder the worker uses
    for the stored result.
    """

    id: str
    task: str
    queue: str = "default"
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    headers: dict[str, str] = {}
    meta: dict[str, Any] = {}
    attempt: int = 0
    max_retries: int = 0
    eta: float | None = None
    expires: float | None = None
    priority: int = 0
    created_at: float = 0.0
    args_encoder: str = "json"
    result_encoder: str = "json"
    trace_context: dict[str, str] = {}
    signature: str | None = None
    signature_key_id: str | None = None
    group_id: str | None = None
    callbacks: list[dict[str, Any]] = []


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """What a broker stores and hands out: an opaque body plus the routing fields.

    Brokers never decode ``body``; the worker does, so a body that does not decode
    reaches the worker and is dead-lettered with reason ``malformed``.
    """

    id: str
    queue: str
    body: bytes
    priority: int = 0
    eta: float | None = None


class Delivery(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One hand-out of a message to one consumer, valid while its lease holds.

    ``receipt`` identifies this hand-out: ack, nack, extend_lease and dead_letter
    act only while the message has not been handed to another consumer since.
    ``deliveries`` counts hand-outs of the message, this one included.
    """

    message: Message
    receipt: str
    deliveries: int
    lease_expires_at: float


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A message set aside, with why."""

    message: Message
    reason: str
    error: str | None = None
    traceback: str | None = None
    deliveries: int = 0
    dead_at: float = 0.0


class DeadLetterView(msgspec.Struct, frozen=True, kw_only=True):
    """A dead letter as a person reads it: the raw letter and, if its body decodes, the task.

    ``task``, ``args``, ``kwargs``, ``attempts`` and ``headers`` are None when the body
    is not a Stem envelope; ``decode_error`` then says why. ``attempts`` counts the
    runs the task had (its last attempt number plus one).
    """

    letter: DeadLetter
    task: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    attempts: int | None = None
    max_retries: int | None = None
    headers: dict[str, str] | None = None
    created_at: float | None = None
    decode_error: str | None = None

    @property
    def message_id(self) -> str:
        return self.letter.message.id

    @property
    def queue(self) -> str:
        return self.letter.message.queue

    @property
    def reason(self) -> str:
        return self.letter.reason

    @property
    def error(self) -> str | None:
        return self.letter.error

    @property
    def traceback(self) -> str | None:
        return self.letter.traceback

    @property
    def deliveries(self) -> int:
        return self.letter.deliveries

    @property
    def dead_at(self) -> float:
        return self.letter.dead_at


class Subscription(msgspec.Struct, frozen=True, kw_only=True):
    """A subscriber of a broadcast queue, and how long its subscription has left.

    ``expires_in`` is in seconds on the broker's clock: positive while the subscription
    is live, zero or negative once it has ended (minus how long ago).
    """

    subscriber: str
    expires_in: float

    @property
    def live(self) -> bool:
        return self.expires_in > 0


class QueueStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counts for one queue: ready now, delayed until later, leased, dead-lettered."""

    queue: str
    pending: int = 0
    delayed: int = 0
    inflight: int = 0
    dead: int = 0


class TaskState(enum.StrEnum):
    """Where a task is in its life. The last three are final.

    ``queued`` is stored at enqueue, in the same write as the publish where the
    adapter allows, so a task is visible from the moment its id is returned.
    """

    PENDING = "pending"
    QUEUED = "queued"
    RECEIVED = "received"
    STARTED = "started"
    RETRIED = "retried"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REVOKED = "revoked"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STATES


_FINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.REVOKED})


class TaskError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Why a task failed: the exception type, its message and the traceback text."""

    type: str
    message: str
    traceback: str | None = None


class TaskStatus(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """The stored state of one task, as a result backend keeps it."""

    id: str
    state: TaskState
    task: str = ""
    queue: str = ""
    value: Any = None
    result_encoder: str = "json"
    error: TaskError | None = None
    attempt: int = 0
    progress: float | None = None
    progress_data: Any = None
    worker: str | None = None
    meta: dict[str, Any] = {}
    updated_at: float = 0.0
    expires_at: float | None = None


class TaskResult(msgspec.Struct, Generic[T], kw_only=True):
    """What :meth:`Stem.wait_for_task` returns: the status, the decoded value, the error.

    ``timed_out`` is true when the wait ended before the task reached a final state;
    ``status`` is then the last state seen (or None if the task is unknown).
    """

    id: str
    status: TaskStatus | None
    value: T | None = None
    timed_out: bool = False

    @property
    def state(self) -> TaskState | None:
        return self.status.state if self.status else None

    @property
    def succeeded(self) -> bool:
        return self.state is TaskState.SUCCEEDED

    @property
    def failed(self) -> bool:
        return self.state is TaskState.FAILED

    @property
    def error(self) -> TaskError | None:
        return self.status.error if self.status else None


class GroupState(msgspec.Struct, kw_only=True):
    """A group's expected size and the statuses of the members that finished."""

    id: str
    size: int
    results: dict[str, TaskStatus] = {}
    meta: dict[str, Any] = {}
    chord_claimed_by: str | None = None
    #: When the chord was claimed (on the store's clock), and what the winner recorded
    #: with its claim (the canvas records the callback's task id under ``callback``).
    chord_claimed_at: float | None = None
    chord_meta: dict[str, Any] = {}

    @property
    def complete(self) -> bool:
        return len(self.results) >= self.size


class WorkerHeartbeat(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A worker's report of itself; ``last_consumed_at`` proves it is reading, not just alive.

    ``processed`` counts the messages the worker finished; each of them is counted once
    more in exactly one of ``succeeded``, ``failed``, ``retried``, ``dead``, ``revoked``
    and ``skipped``, so those add up to ``processed`` (see docs/workers.md).
    """

    worker_id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    inflight: int = 0
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    revoked: int = 0
    skipped: int = 0
    started_at: float = 0.0
    sent_at: float = 0.0
    last_consumed_at: float | None = None
    meta: dict[str, Any] = {}


class RevokeEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A revoked task id; ``terminate`` asks workers to stop it if it is running.

    ``seq`` is given by the store when the revocation is recorded: it grows in commit
    order, so a worker that has read every entry up to ``seq`` n misses none by reading
    those after n (a timestamp cannot promise that: it is taken before the write, and
    clocks step back).
    """

    task_id: str
    terminate: bool = False
    reason: str | None = None
    revoked_at: float = 0.0
    expires_at: float | None = None
    seq: int = 0


class UniqueClaim(msgspec.Struct, frozen=True, kw_only=True):
    """A unique task's claim on ``key``, held by the message it is published with.

    A claim is honoured only while the task it names exists (its status is stored);
    see :meth:`stem.contracts.Broker.enqueue`.
    """

    key: str
    ttl: float
