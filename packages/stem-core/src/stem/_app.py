"""The Stem application: task registry, producer API, results."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

import msgspec

from ._beat import Beat, ScheduleDefinition, Spec, define_schedule
from ._canvas import CanvasHandle, CanvasRuntime, Group, GroupHandle
from ._clock import Clock, SystemClock
from ._codec import EncoderRegistry, PayloadEncoder, WireFormat, decode_envelope, encode_envelope
from ._deadletters import DeadLetters
from ._errors import ConfigurationError, UnknownTaskError
from ._execute import Outcome, OutcomeKind, execute
from ._hooks import Hooks
from ._ids import new_task_id
from ._messages import (
    Envelope,
    Message,
    RevokeEntry,
    TaskError,
    TaskResult,
    TaskState,
    TaskStatus,
    UniqueClaim,
)
from ._options import (
    PoolKind,
    RetryStrategy,
    TaskOptions,
    build_options,
    check_priority,
    check_queue,
    seconds,
)
from ._portal import Portal
from ._registry import get_adapter
from ._task import NamedTask, Task, TaskCall, TaskContext, TaskRef, check_call_shape, task_name
from ._unique import UniqueCoordinator
from ._workflows import (
    Flow,
    Workflow,
    WorkflowContext,
    WorkflowRef,
    WorkflowResult,
    Workflows,
    policy_of,
)
from .contracts import (
    Broker,
    ControlChannel,
    EventBus,
    LockStore,
    RateLimiter,
    ResultBackend,
    RevokeStore,
    ScheduleStore,
    WorkflowStore,
    claim_unique,
    subscriber_queue,
)

if TYPE_CHECKING:
    from ._canvas import Signature
    from .worker import Worker

__all__ = ["DEFAULT_URL", "Stem"]

log = logging.getLogger("stem")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_FINAL = frozenset(state for state in TaskState if state.is_final)

#: Where Stem keeps its data when no URL is given: SQLite, no server needed.
DEFAULT_URL = "sqlite:///.stem/stem.db"

_ENQUEUE_KEYS = {
    "queue",
    "priority",
    "delay",
    "eta",
    "expires",
    "headers",
    "meta",
    "task_id",
    "max_retries",
    "unique_key",
}


class Stem:
    """A Stem application: where tasks are registered, enqueued and their results read.

    Args:
        broker: moves task messages.
        backend: stores statuses and results (defaults to in-memory, which other
            processes cannot read: pass one, or use :meth:`from_url`).
        lock_store: for unique tasks; revoke_store: for revocations (in-memory by default).
        clock: the clock everything reads; a :class:`FakeClock` in tests.
        encoders: extra payload encoders (their ids travel with each message).
        wire_format: ``"json"`` (default) or ``"msgpack"`` for message bodies.
        eager: run each task inline at enqueue (unit tests), through the real encoding.
        revoke_ttl: how long a revocation lasts (seconds, default a day): past it, the
            task id is forgotten, so a long-lived worker's set of revoked ids stays bounded.
        rate_limiter: a limiter shared by every worker (``rate_limit`` then holds across
            them); its workers use it unless given their own. None: each worker limits
            alone. :meth:`from_url` takes it from the adapter (Redis has one).
        control_channel: carries remote-control commands to workers and their replies;
            :meth:`from_url` takes it from the adapter.
        event_bus: carries live events (workflow events and run status changes) to
            observers; :meth:`from_url` takes it from the workflow store's adapter. None:
            a bus in this process's memory.
        broadcast_queues: queues whose every message goes to each worker consuming the
            queue at the time it is published, rather than to one of them (see
            docs/routing.md); the broker must have the ``broadcast`` capability.
    """

    def __init__(
        self,
        broker: Broker,
        backend: ResultBackend | None = None,
        *,
        lock_store: LockStore | None = None,
        revoke_store: RevokeStore | None = None,
        workflow_store: WorkflowStore | Callable[[], WorkflowStore] | None = None,
        schedule_store: ScheduleStore | Callable[[], ScheduleStore] | None = None,
        clock: Clock | None = None,
        encoders: Iterable[PayloadEncoder] = (),
        wire_format: WireFormat = "json",
        default_queue: str = "default",
        eager: bool = False,
        revoke_ttl: float | timedelta = 86400.0,
        rate_limiter: RateLimiter | None = None,
        control_channel: ControlChannel | None = None,
        event_bus: EventBus | None = None,
        broadcast_queues: Iterable[str] = (),
    ) -> None:
        from .memory import (
            MemoryEventBus,
            MemoryLockStore,
            MemoryResultBackend,
            MemoryRevokeStore,
        )

        if not isinstance(broker, Broker):
            raise ConfigurationError(
                f"broker must be a stem.contracts.Broker, not {type(broker).__name__}"
            )
        if wire_format not in ("json", "msgpack"):
            raise ConfigurationError(
                f"wire_format must be 'json' or 'msgpack', not {wire_format!r}"
            )
        self.clock: Clock = clock or broker.clock or SystemClock()
        self.broker = broker
        self.backend = backend or MemoryResultBackend(clock=self.clock)
        self.lock_store = lock_store or MemoryLockStore(clock=self.clock)
        self.revoke_store = revoke_store or MemoryRevokeStore(clock=self.clock)
        self._workflow_store = workflow_store
        self._schedule_store = schedule_store
        self.rate_limiter = rate_limiter
        self.control_channel = control_channel
        #: Live events for observers (see stem.contracts.EventBus).
        self.event_bus: EventBus = event_bus or MemoryEventBus(clock=self.clock)
        self.encoders = EncoderRegistry(encoders)
        self.wire_format: WireFormat = wire_format
        self.default_queue = check_queue(default_queue)
        if isinstance(broadcast_queues, str):
            broadcast_queues = [broadcast_queues]
        self.broadcast_queues = frozenset(check_queue(q) for q in broadcast_queues)
        _check_broadcast(broker, self.broadcast_queues)
        self.eager = eager
        ttl = seconds(revoke_ttl, "revoke_ttl")
        if ttl is None or ttl <= 0:
            raise ConfigurationError(f"revoke_ttl must be a positive duration, not {revoke_ttl!r}")
        self.revoke_ttl = ttl
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: The beat entries defined in code (``app.schedule(...)``), by id; a beat
        #: stores them when it starts.
        self.schedules: dict[str, ScheduleDefinition] = {}
        self.hooks = Hooks()
        self.unique = UniqueCoordinator(self.lock_store)
        #: The broker's dead letters, decoded for reading; replay is a fresh start.
        self.dead_letters = DeadLetters(self)
        #: The registered workflows, and the operations on runs (see stem._workflows).
        self.workflows = Workflows(self)
        self.workflows.register_run_task()
        #: Sends canvases and takes the step after each canvas task ends (see stem._canvas).
        self._canvas = CanvasRuntime(self)
        self._portal = Portal()
        #: The broker's and the backend's URLs when built by :meth:`from_url` (None when
        #: the stores were passed in); they may hold a password, so do not print them as is.
        self.url: str | None = None
        self.backend_url: str | None = None

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str | None = None,
        *,
        backend: str | None = None,
        workflow_store: str | None = None,
        clock: Clock | None = None,
        **kwargs: Any,
    ) -> Stem:
        """Build an app from URLs; adapters are found by scheme (``stem.adapters`` entry points).

        ``url`` (or ``$STEM_URL``, or ``sqlite:///.stem/stem.db``) is the broker; ``backend``
        (or ``$STEM_BACKEND_URL``, or the broker URL) holds results, locks and revocations;
        ``workflow_store`` (or ``$STEM_WORKFLOW_URL``, or the backend URL) holds workflow runs.

        Raises:
            UnknownSchemeError: no adapter handles a URL's scheme (the message names the package).
            ConfigurationError: a URL is malformed.
        """
        broker_url = url or os.environ.get("STEM_URL") or DEFAULT_URL
        backend_url = backend or os.environ.get("STEM_BACKEND_URL") or broker_url
        workflow_url = workflow_store or os.environ.get("STEM_WORKFLOW_URL") or backend_url
        broker_adapter, backend_adapter = get_adapter(broker_url), get_adapter(backend_url)
        workflow_adapter = get_adapter(workflow_url)
        # Shared by every worker on the backend's store, where the adapter has them (one
        # passed in wins)
        if "rate_limiter" not in kwargs:
            kwargs["rate_limiter"] = backend_adapter.rate_limiter(backend_url, clock=clock)
        if "control_channel" not in kwargs:
            kwargs["control_channel"] = backend_adapter.control_channel(backend_url, clock=clock)
        if "event_bus" not in kwargs:  # beside the runs whose events it carries
            kwargs["event_bus"] = workflow_adapter.event_bus(workflow_url, clock=clock)
        app = cls(
            broker_adapter.broker(broker_url, clock=clock),
            backend_adapter.result_backend(backend_url, clock=clock),
            lock_store=backend_adapter.lock_store(backend_url, clock=clock),
            revoke_store=backend_adapter.revoke_store(backend_url, clock=clock),
            workflow_store=lambda: workflow_adapter.workflow_store(workflow_url, clock=clock),
            schedule_store=lambda: backend_adapter.schedule_store(backend_url, clock=clock),
            clock=clock,
            **kwargs,
        )
        app.url, app.backend_url = broker_url, backend_url
        return app

    async def use_url(self, url: str) -> None:
        """Move this app onto the stores ``url`` names, built as :meth:`from_url` builds
        them (``$STEM_BACKEND_URL`` and ``$STEM_WORKFLOW_URL`` still apply), keeping its
        tasks, hooks and settings; the stores it had are closed.

        ``stem worker --url`` uses it: the app object stays the same, so handlers that
        enqueue through it reach the new broker too. Call it before the app is used.
        """
        fresh = Stem.from_url(url, clock=self.clock)
        try:
            _check_broadcast(fresh.broker, self.broadcast_queues)
        except ConfigurationError:
            await fresh.aclose()
            raise
        await self._close_stores()
        self.broker, self.backend = fresh.broker, fresh.backend
        self.lock_store, self.revoke_store = fresh.lock_store, fresh.revoke_store
        self._workflow_store, self._schedule_store = fresh._workflow_store, fresh._schedule_store
        self.rate_limiter, self.control_channel = fresh.rate_limiter, fresh.control_channel
        self.event_bus = fresh.event_bus
        self.unique = UniqueCoordinator(self.lock_store)
        self.url, self.backend_url = fresh.url, fresh.backend_url

    @property
    def workflow_store(self) -> WorkflowStore:
        store = self._workflow_store
        if store is None:
            # As with the result backend: in memory, for this process only.
            from .memory import MemoryWorkflowStore

            store = self._workflow_store = MemoryWorkflowStore(clock=self.clock)
        if not isinstance(store, WorkflowStore):
            store = self._workflow_store = store()
        return store

    @property
    def schedule_store(self) -> ScheduleStore:
        store = self._schedule_store
        if store is None:
            raise ConfigurationError("this app has no schedule store; pass schedule_store=")
        if not isinstance(store, ScheduleStore):
            store = self._schedule_store = store()
        return store

    async def aclose(self) -> None:
        """Close the broker and stores."""
        await self._close_stores()
        self._portal.stop()

    async def _close_stores(self) -> None:
        stores: list[
            Broker
            | ResultBackend
            | LockStore
            | RevokeStore
            | WorkflowStore
            | ScheduleStore
            | RateLimiter
            | ControlChannel
            | EventBus
        ] = [self.broker, self.backend, self.lock_store, self.revoke_store]
        for lazy in (self._workflow_store, self._schedule_store):
            if isinstance(lazy, WorkflowStore | ScheduleStore):  # built, so open
                stores.append(lazy)
        for extra in (self.rate_limiter, self.control_channel, self.event_bus):
            if extra is not None:
                stores.append(extra)
        for store in {id(store): store for store in stores}.values():  # each once
            await store.aclose()

    def close_sync(self) -> None:
        """:meth:`aclose` for an app used through the ``_sync`` methods."""
        self._portal.call(self.aclose)

    async def __aenter__(self) -> Stem:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- tasks ----------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[Concatenate[TaskContext, P], Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[Concatenate[TaskContext, P], R], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        max_retries: int | None = None,
        retry_backoff: RetryStrategy | float | timedelta | None = None,
        retry_for: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        rate_limit: str | None = None,
        visibility_timeout: float | timedelta | None = None,
        soft_time_limit: float | timedelta | None = None,
        time_limit: float | timedelta | None = None,
        unique: bool | None = None,
        unique_for: float | timedelta | None = None,
        expires: float | timedelta | None = None,
        pool: PoolKind | None = None,
        result_ttl: float | timedelta | None = None,
        args_encoder: str | None = None,
        result_encoder: str | None = None,
    ) -> _TaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function (async or plain) as a task; use bare or with options.

        A first parameter annotated :class:`TaskContext` (or named ``ctx`` without an
        annotation) receives the context; the other parameters are the task's arguments.

        Raises:
            ConfigurationError: an option is invalid, or the name is taken.
        """
        if fn is not None:
            return self._register(fn, options)

        def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
            return self._register(f, options)

        return decorate

    def _register(self, fn: Callable[..., Any], options: dict[str, Any]) -> Task[Any, Any]:
        if not callable(fn):
            raise ConfigurationError(f"@app.task needs a function, not {fn!r}")
        name = options.pop("name", None) or task_name(fn)
        options.setdefault("queue", self.default_queue)
        if options.get("pool") is None:
            options["pool"] = "async" if inspect.iscoroutinefunction(fn) else "thread"
        elif options["pool"] == "async" and not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(
                f"task {name!r} is a plain function: use pool='thread' or 'process'"
            )
        opts = build_options(name, **options)
        for encoder_id in (opts.args_encoder, opts.result_encoder):
            if encoder_id not in self.encoders:
                raise ConfigurationError(
                    f"task {name!r} names payload encoder {encoder_id!r}, which is not registered"
                )
        existing = self.tasks.get(name)
        if existing is not None and existing.fn is not fn:
            raise ConfigurationError(
                f"a different task is already registered as {name!r}; pass name="
            )
        handle: Task[Any, Any] = Task(self, fn, opts)
        self.tasks[name] = handle
        return handle

    # -- workflows ------------------------------------------------------------------------

    @overload
    def workflow(
        self, fn: Callable[Concatenate[WorkflowContext, P], Awaitable[R]], /
    ) -> Workflow[P, R]: ...
    @overload
    def workflow(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_run_duration: float | timedelta | None = None,
        max_suspend_duration: float | timedelta | None = None,
    ) -> _WorkflowDecorator: ...

    def workflow(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register an ``async def`` taking a :class:`WorkflowContext` first as a durable
        workflow script; use bare or with options. Returns a handle whose ``.start(...)``
        takes the function's other parameters.

        Raises:
            ConfigurationError: an option is invalid, or the name is taken.
        """
        if fn is not None:
            return self._register_workflow(fn, options)
        return lambda f: self._register_workflow(f, options)

    def _register_workflow(
        self, fn: Callable[..., Any], options: dict[str, Any]
    ) -> Workflow[Any, Any]:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(
                f"a workflow must be an async def taking a WorkflowContext first, not {fn!r}"
            )
        unknown = set(options) - {"name", "queue", "max_run_duration", "max_suspend_duration"}
        if unknown:
            raise ConfigurationError(f"unknown workflow option(s): {', '.join(sorted(unknown))}")
        name = options.get("name") or task_name(fn)
        policy = policy_of(options.get("max_run_duration"), options.get("max_suspend_duration"))
        handle: Workflow[Any, Any] = Workflow(
            self, name, fn, queue=options.get("queue"), policy=policy
        )
        self.workflows.register(handle)
        return handle

    def flow(
        self,
        name: str,
        *,
        queue: str | None = None,
        max_run_duration: float | timedelta | None = None,
        max_suspend_duration: float | timedelta | None = None,
    ) -> Flow:
        """Declare a flow: add its steps with ``@flow.step(name)``, in order."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a flow needs a name, not {name!r}")
        handle = Flow(
            self, name, queue=queue, policy=policy_of(max_run_duration, max_suspend_duration)
        )
        self.workflows.register(handle)
        return handle

    async def start_workflow(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        queue: str | None = None,
        max_run_duration: float | timedelta | None = None,
        max_suspend_duration: float | timedelta | None = None,
    ) -> WorkflowRef[Any]:
        """Start a run of a workflow by name (it need not be registered here); returns
        its id at once. ``run_id`` chooses the id (a second start with it raises
        :class:`DuplicateRunError`)."""
        policy = policy_of(max_run_duration, max_suspend_duration)
        run = await self.workflows.start(
            name, dict(params or {}), run_id=run_id, queue=queue, policy=policy
        )
        return WorkflowRef(run)

    @overload
    async def wait_for_workflow(
        self, run_id: WorkflowRef[T], *, timeout: float | None = None
    ) -> WorkflowResult[T]: ...
    @overload
    async def wait_for_workflow(
        self, run_id: str, *, timeout: float | None = None, decode: Any = None
    ) -> WorkflowResult[Any]: ...

    async def wait_for_workflow(
        self, run_id: str, *, timeout: float | None = None, decode: Any = None
    ) -> WorkflowResult[Any]:
        """Wait until a run completes, fails or is cancelled, or ``timeout`` seconds pass
        (then ``timed_out`` is true); works from any process sharing the workflow store.

        Raises:
            UnknownWorkflowError: there is no such run.
        """
        return await self.workflows.wait(run_id, timeout=timeout, decode=decode)

    async def emit_event(self, topic: str, payload: Any = None) -> list[str]:
        """Resume every run waiting on ``topic`` with ``payload``; returns their ids.
        Runs that wait on it later do not see it (use :meth:`send_event` for that)."""
        return await self.workflows.emit(topic, payload)

    async def send_event(self, run_id: str, topic: str, payload: Any = None) -> bool:
        """Give ``payload`` to one run's wait on ``topic``, now or whenever it waits (kept
        until then); False if the run is unknown or has ended."""
        return await self.workflows.send(run_id, topic, payload)

    async def cancel_workflow(self, run_id: str, reason: str = "cancelled") -> bool:
        """Cancel a run (and its children that have not ended); False if it had ended."""
        return await self.workflows.cancel(run_id, reason)

    async def rewind_workflow(self, run_id: str, step: str) -> bool:
        """Replay a run from the checkpoint named ``step`` (that step and every later
        one run again); False if the run has no such step."""
        return await self.workflows.rewind(run_id, step)

    # -- enqueueing -----------------------------------------------------------------------

    async def enqueue(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Enqueue a task by name; the task need not be registered in this process.

        Options are those of ``.options(...)``: queue, priority, delay, eta, expires,
        headers, meta, task_id, max_retries, unique_key.

        Raises:
            ArgumentError: (a TypeError) the arguments do not fit the task, if it is
                registered here (else only their shape is checked).
            SerializationError: (a TypeError) an argument cannot be serialized.
        """
        check_call_shape(args, kwargs or {})
        task = self.tasks.get(name)
        if task is not None:
            task.check_arguments(tuple(args), kwargs or {})
        return (await self._enqueue_calls([(name, tuple(args), dict(kwargs or {}), options)]))[0]

    def enqueue_sync(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """:meth:`enqueue` for synchronous code."""
        return self._portal.call(self.enqueue, name, args, kwargs, **options)

    def call(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TaskCall[Any, Any]:
        """A call of a task by name, for :meth:`enqueue_many` from a process without its handler."""
        check_call_shape(args, kwargs or {})
        task = self.tasks.get(name)
        if task is not None:
            return task.call(*args, **(kwargs or {})).options(**options)
        return TaskCall(NamedTask(self, name), dict(options), tuple(args), dict(kwargs or {}))

    async def enqueue_many(self, calls: Iterable[TaskCall[Any, Any]]) -> list[str]:
        """Enqueue many calls (``task.call(...)``, optionally ``.options(...)``) in one publish."""
        batch = [(c.task.name, c.args, c.kwargs, c.overrides) for c in calls]
        return await self._enqueue_calls(batch)

    async def _enqueue_calls(
        self, calls: Sequence[tuple[str, tuple[Any, ...], dict[str, Any], Mapping[str, Any]]]
    ) -> list[str]:
        now = self.clock.now()
        built = [
            self._build(name, args, kwargs, overrides, now)
            for name, args, kwargs, overrides in calls
        ]
        envelopes: list[Envelope] = []
        claims: list[UniqueClaim | None] = []
        for envelope, opts, unique_key in built:
            if self.hooks.has("before_enqueue"):
                await self.hooks.emit("before_enqueue", envelope=envelope)
            unique = (opts is not None and opts.unique) or unique_key is not None
            claims.append(self.unique.claim_for(envelope, opts, unique_key) if unique else None)
            envelopes.append(envelope)
        return await self._publish(envelopes, claims)

    async def _send(self, envelopes: list[Envelope]) -> None:
        """Publish envelopes built elsewhere (a canvas's next tasks), hooks included."""
        if self.hooks.has("before_enqueue"):
            for envelope in envelopes:
                await self.hooks.emit("before_enqueue", envelope=envelope)
        await self._publish(envelopes, [None] * len(envelopes))

    async def _publish(
        self, envelopes: list[Envelope], claims: list[UniqueClaim | None]
    ) -> list[str]:
        messages = [
            Message(
                id=e.id,
                queue=e.queue,
                body=encode_envelope(e, self.wire_format),
                priority=e.priority,
                eta=e.eta,
            )
            for e in envelopes
        ]
        if self.eager:
            existing = await self._enqueue_eagerly(messages, claims)
        else:
            statuses = [self.make_status(e, TaskState.QUEUED) for e in envelopes]
            if self.broadcast_queues and any(m.queue in self.broadcast_queues for m in messages):
                existing = await self._enqueue_broadcast(messages, statuses, claims)
            else:
                existing = await self.broker.enqueue(
                    messages,
                    statuses,
                    self.backend,
                    claims=claims if any(claims) else (),
                    locks=self.lock_store,
                )
        ids: list[str] = []
        for envelope, holder in zip(envelopes, existing, strict=True):
            if holder is None:
                ids.append(envelope.id)
                if self.hooks.has("after_enqueue"):
                    await self.hooks.emit("after_enqueue", envelope=envelope)
            else:
                ids.append(holder)
                self.unique.note_duplicate(envelope, holder)
                await self.hooks.emit("on_duplicate", envelope=envelope, existing_id=holder)
        return ids

    async def _enqueue_broadcast(
        self,
        messages: list[Message],
        statuses: list[tuple[TaskStatus, float | None]],
        claims: list[UniqueClaim | None],
    ) -> list[str | None]:
        """Enqueue with each message of a broadcast queue copied to every live subscriber
        (on the subscriber's own queue), all copies in one publish; the copies share the
        task id, status and body. A message with no live subscriber is not published: its
        task gets a failed status saying so."""
        live: dict[str, list[str]] = {}
        for queue in dict.fromkeys(m.queue for m in messages if m.queue in self.broadcast_queues):
            subs = await self.broker.subscriptions(queue)
            live[queue] = [s.subscriber for s in subs if s.live]
        copies: list[Message] = []
        copy_statuses: list[tuple[TaskStatus, float | None]] = []
        copy_claims: list[UniqueClaim | None] = []
        first: list[int | None] = []  # each message's first copy
        unheard: list[tuple[TaskStatus, float | None]] = []
        for message, status, claim in zip(messages, statuses, claims, strict=True):
            subscribers = live.get(message.queue)
            targets = (
                [message]
                if subscribers is None
                else [
                    msgspec.structs.replace(message, queue=subscriber_queue(message.queue, s))
                    for s in subscribers
                ]
            )
            if not targets:
                first.append(None)
                unheard.append(_unheard(status[0]))
                continue
            first.append(len(copies))
            copies.extend(targets)
            copy_statuses.extend([status] * len(targets))
            copy_claims.extend([claim] + [None] * (len(targets) - 1))
        existing = await self.broker.enqueue(
            copies,
            copy_statuses,
            self.backend,
            claims=copy_claims if any(copy_claims) else (),
            locks=self.lock_store,
        )
        if unheard:
            await self.backend.set_statuses(unheard)
            log.warning(
                "no worker is subscribed to broadcast queue(s) %s: %d task(s) not delivered",
                ", ".join(sorted({s.queue for s, _ in unheard})),
                len(unheard),
            )
        return [None if index is None else existing[index] for index in first]

    async def _enqueue_eagerly(
        self, messages: list[Message], claims: list[UniqueClaim | None]
    ) -> list[str | None]:
        existing: list[str | None] = []
        for message, claim in zip(messages, claims, strict=True):
            holder = None
            if claim is not None:
                holder = await claim_unique(self.lock_store, self.backend, claim, message.id)
            existing.append(holder)
            if holder is None:
                await self._run_eagerly(message.body)
        return existing

    def _build(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        overrides: Mapping[str, Any],
        now: float,
    ) -> tuple[Envelope, TaskOptions | None, str | None]:
        unknown = set(overrides) - _ENQUEUE_KEYS
        if unknown:
            raise ConfigurationError(f"unknown enqueue option(s): {', '.join(sorted(unknown))}")
        if not isinstance(name, str) or not name:
            raise ConfigurationError("a task name is needed to enqueue")
        task = self.tasks.get(name)
        opts = task.options_ if task else None
        queue = overrides.get("queue")
        # A task's queue and the default queue were checked when they were set.
        queue = check_queue(queue) if queue else (opts.queue if opts else self.default_queue)
        priority = (
            check_priority(overrides["priority"])
            if "priority" in overrides
            else (opts.priority if opts else 0)
        )
        eta = _timestamp(overrides.get("eta"), "eta")
        delay = seconds(overrides.get("delay"), "delay")
        if delay:
            eta = now + delay
        expires_opt = overrides.get("expires", opts.expires if opts else None)
        expires = (
            _timestamp(expires_opt, "expires")
            if isinstance(expires_opt, datetime)
            else (None if expires_opt is None else now + (seconds(expires_opt, "expires") or 0.0))
        )
        max_retries = overrides.get("max_retries", opts.max_retries if opts else 0)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(
                f"max_retries must be a whole number >= 0, not {max_retries!r}"
            )
        args_encoder = opts.args_encoder if opts else "json"
        encoder = self.encoders.get(args_encoder)
        headers = dict(overrides.get("headers") or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise ConfigurationError("headers must map strings to strings")
        envelope = Envelope(
            id=str(overrides.get("task_id") or new_task_id()),
            task=name,
            queue=queue,
            args=list(encoder.encode(list(args))),
            kwargs=dict(encoder.encode(dict(kwargs))),
            headers=headers,
            meta=dict(overrides.get("meta") or {}),
            max_retries=max_retries,
            eta=eta if eta is not None and eta > now else None,
            expires=expires,
            priority=priority,
            created_at=now,
            args_encoder=args_encoder,
            result_encoder=opts.result_encoder if opts else "json",
        )
        return envelope, opts, overrides.get("unique_key")

    # -- eager mode -----------------------------------------------------------------------

    async def _run_eagerly(self, body: bytes) -> None:
        envelope = decode_envelope(body)
        task = self.tasks.get(envelope.task)
        if task is None:
            raise UnknownTaskError(f"task {envelope.task!r} is not registered with this app")
        while True:
            ctx = TaskContext(self, envelope)
            await self.store_status(envelope, TaskState.STARTED)
            outcome = await execute(self, task, ctx, _invoke_inline)
            if outcome.kind is OutcomeKind.RETRY:
                await self.store_status(envelope, TaskState.RETRIED, outcome=outcome)
                envelope = msgspec.structs.replace(envelope, attempt=envelope.attempt + 1)
                continue
            state = (
                TaskState.SUCCEEDED if outcome.kind is OutcomeKind.SUCCEEDED else TaskState.FAILED
            )
            status, ttl = self.make_status(envelope, state, outcome=outcome)
            await self.backend.set_status(status, ttl=ttl)
            await self.unique.release(envelope)
            if envelope.callbacks:
                await self._canvas.after_final(envelope, status)
            return

    # -- results --------------------------------------------------------------------------

    def make_status(
        self,
        envelope: Envelope,
        state: TaskState,
        *,
        outcome: Outcome | None = None,
        worker: str | None = None,
        progress: tuple[float, Any] | None = None,
        now: float | None = None,
    ) -> tuple[TaskStatus, float | None]:
        """The status record of a task in ``state`` (as of ``now``, default the clock's
        time), and how long to keep it."""
        status = TaskStatus(
            id=envelope.id,
            state=state,
            task=envelope.task,
            queue=envelope.queue,
            value=outcome.value if outcome is not None else None,
            result_encoder=envelope.result_encoder,
            error=outcome.error if outcome is not None else None,
            attempt=envelope.attempt,
            worker=worker,
            progress=progress[0] if progress else None,
            progress_data=progress[1] if progress else None,
            updated_at=self.clock.now() if now is None else now,
        )
        if state in _FINAL:
            task = self.tasks.get(envelope.task)
            if task is not None:
                return status, task.options_.result_ttl
        return status, None

    async def store_status(
        self,
        envelope: Envelope,
        state: TaskState,
        *,
        outcome: Outcome | None = None,
        worker: str | None = None,
        progress: tuple[float, Any] | None = None,
    ) -> None:
        """Write a task's status to the backend (workers and eager mode use this)."""
        status, ttl = self.make_status(
            envelope, state, outcome=outcome, worker=worker, progress=progress
        )
        await self.backend.set_status(status, ttl=ttl)

    async def get_status(self, task_id: str) -> TaskStatus | None:
        """The stored status of a task, or None if unknown (not yet received, or expired)."""
        return await self.backend.get_status(str(task_id))

    @overload
    async def wait_for_task(
        self, task_id: TaskRef[T], *, timeout: float | None = None
    ) -> TaskResult[T]: ...
    @overload
    async def wait_for_task(
        self, task_id: str, *, timeout: float | None = None, decode: Callable[[Any], T] | type[T]
    ) -> TaskResult[T]: ...
    @overload
    async def wait_for_task(
        self, task_id: str, *, timeout: float | None = None
    ) -> TaskResult[Any]: ...

    async def wait_for_task(
        self, task_id: str, *, timeout: float | None = None, decode: Any = None
    ) -> TaskResult[Any]:
        """Wait until a task reaches a final state, or ``timeout`` seconds pass.

        Works from any process that shares the result backend. The value is decoded
        by the result encoder that stored it, then by ``decode`` (a callable or a type
        to convert to), or to the handler's return annotation if the task is
        registered here.

        Returns:
            A TaskResult; ``timed_out`` is true if no final state was reached in time.
        """
        last: TaskStatus | None = None
        async for status in self.backend.watch(str(task_id), timeout=timeout):
            last = status
        if last is None or not last.state.is_final:
            return TaskResult(id=str(task_id), status=last, timed_out=True)
        value = None
        if last.state is TaskState.SUCCEEDED:
            value = self._decode_result(last, decode)
        return TaskResult(id=str(task_id), status=last, value=value)

    def wait_for_task_sync(
        self, task_id: str, *, timeout: float | None = None, decode: Any = None
    ) -> TaskResult[Any]:
        """:meth:`wait_for_task` for synchronous code."""
        return self._portal.call(self.wait_for_task, task_id, timeout=timeout, decode=decode)

    def _decode_result(self, status: TaskStatus, decode: Any) -> Any:
        value = self.encoders.get(status.result_encoder).decode(status.value)
        if decode is None:
            task = self.tasks.get(status.task)
            if task is None or task.return_type is Any:
                return value
            decode = task.return_type
        if isinstance(decode, type) or not callable(decode):
            return msgspec.convert(value, decode, strict=False)
        return decode(value)

    async def revoke(
        self,
        task_id: str,
        *,
        terminate: bool = False,
        reason: str | None = None,
        expires: float | timedelta | None = None,
    ) -> RevokeEntry:
        """Revoke a task: it will not run; with ``terminate``, a running one is stopped.

        The revocation lasts ``expires`` seconds (default: the app's ``revoke_ttl``, a
        day); a message of the task that is still queued after that runs.
        """
        ttl = seconds(expires, "expires") if expires is not None else self.revoke_ttl
        if ttl is None or ttl <= 0:
            raise ConfigurationError(f"expires must be a positive duration, not {expires!r}")
        now = self.clock.now()
        return await self.revoke_store.revoke(
            RevokeEntry(
                task_id=str(task_id),
                terminate=terminate,
                reason=reason,
                revoked_at=now,
                expires_at=now + ttl,
            )
        )

    # -- canvas ---------------------------------------------------------------------------

    @overload
    async def apply(self, canvas: Group[T]) -> GroupHandle[T]: ...
    @overload
    async def apply(self, canvas: Signature[T]) -> CanvasHandle[T]: ...

    async def apply(self, canvas: Signature[Any]) -> CanvasHandle[Any]:
        """Run a canvas (``group``, ``chain``, ``chord``, or one ``task.call(...)``): its
        first tasks are sent in one publish; the handle waits for its result.

        Raises:
            ConfigurationError: the canvas is not well formed (the message says how).
            ArgumentError: arguments do not fit a task registered here.
        """
        return await self._canvas.apply(canvas)

    async def revoke_group(
        self, group_id: str, *, terminate: bool = False, reason: str | None = None
    ) -> list[str]:
        """Revoke every task of a group (inside its members' chains and groups too), as
        :meth:`revoke` does one; returns their ids ([] if the group is unknown).
        The group then fails, and a chord on it runs its error callback."""
        return await self._canvas.revoke_group(group_id, terminate=terminate, reason=reason)

    # -- workers --------------------------------------------------------------------------

    def worker(self, **options: Any) -> Worker:
        """A worker for this app; see :class:`stem.worker.Worker` for the options."""
        from .worker import Worker

        return Worker(self, **options)

    # -- beat -----------------------------------------------------------------------------

    def schedule(
        self,
        name: str,
        spec: Spec,
        task: Task[Any, Any] | str,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        options: Mapping[str, Any] | None = None,
        enabled: bool = True,
        jitter: float | timedelta | None = None,
        catch_up: Literal["once", "each", "skip"] = "once",
        catch_up_limit: int | None = None,
    ) -> ScheduleDefinition:
        """Define a beat entry: run ``task`` with ``args`` and ``kwargs`` when ``spec``
        (:class:`Interval`, :class:`Cron`, :class:`Solar` or :class:`Clocked`) says.

        The entry is stored when a beat starts (``stem beat``, ``app.beat()``); see
        docs/beat.md. ``options`` are enqueue options of each firing (priority,
        expires, headers, meta, max_retries); ``jitter`` delays each firing by up to
        that many seconds, at random; ``catch_up`` says what a beat does with firings
        it missed: ``"once"`` one firing for all, ``"each"`` each, up to
        ``catch_up_limit`` (default 100), ``"skip"`` none.

        Raises:
            ConfigurationError: the task is not registered here, or an option is invalid.
            ArgumentError: the arguments do not fit the task.
        """
        definition = define_schedule(
            self,
            name,
            spec,
            task,
            args=args,
            kwargs=kwargs,
            queue=queue,
            options=options,
            enabled=enabled,
            jitter=jitter,
            catch_up=catch_up,
            catch_up_limit=catch_up_limit,
        )
        existing = self.schedules.get(name)
        if existing is not None and existing != definition:
            raise ConfigurationError(f"a different beat entry is already defined as {name!r}")
        self.schedules[name] = definition
        return definition

    def beat(self, **options: Any) -> Beat:
        """A beat for this app (``async with app.beat():``); see :class:`stem.Beat`."""
        return Beat(self, **options)


class _TaskDecorator:
    @overload
    def __call__(
        self, fn: Callable[Concatenate[TaskContext, P], Awaitable[R]], /
    ) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[TaskContext, P], R], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    def __call__(
        self, fn: Callable[..., Any], /
    ) -> Task[Any, Any]:  # pragma: no cover - typing only
        raise NotImplementedError


class _WorkflowDecorator:
    def __call__(
        self, fn: Callable[Concatenate[WorkflowContext, P], Awaitable[R]], /
    ) -> Workflow[P, R]:  # pragma: no cover - typing only
        raise NotImplementedError


async def _invoke_inline(
    task: Task[Any, Any], ctx: TaskContext, args: list[Any], kwargs: dict[str, Any]
) -> Any:
    call_args = [ctx, *args] if task.takes_context else args
    result = task.fn(*call_args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def _timestamp(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigurationError(
                f"{what} must be a timezone-aware datetime (naive times are ambiguous)"
            )
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigurationError(f"{what} must be a datetime or a timestamp, not {value!r}")


def _check_broadcast(broker: Broker, queues: frozenset[str]) -> None:
    if queues and not broker.capabilities.broadcast:
        raise ConfigurationError(
            f"{type(broker).__name__} has no broadcast queues, which this app uses "
            f"({', '.join(sorted(queues))}): use a broker that has them (memory, SQLite, "
            "Redis), or drop broadcast_queues"
        )


def _unheard(status: TaskStatus) -> tuple[TaskStatus, float | None]:
    """The status of a broadcast that no worker was subscribed to receive."""
    error = TaskError(
        type="NoSubscribers",
        message=(
            f"no worker was consuming broadcast queue {status.queue!r} when the task was "
            "published, so no worker received it; start workers on the queue first"
        ),
    )
    return msgspec.structs.replace(status, state=TaskState.FAILED, error=error), None
