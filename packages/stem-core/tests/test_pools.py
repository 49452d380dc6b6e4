"""One handler, three pools: the same cases end the same way in the async, thread and process pools."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from stem import Stem, TaskState
from stem._execute import task_error
from stem.memory import MemoryBroker, MemoryResultBackend
from stem.worker import Worker

POOLS = [
    pytest.param("async", id="async"),
    pytest.param("thread", id="thread"),
    pytest.param("process", id="process", marks=pytest.mark.processes),
]


@dataclass(frozen=True)
class Case:
    """A handler (a function of _pool_cases; its async twin is ``a_<name>``) and how it must end."""

    handler: str
    state: TaskState
    reason: str | None  # the dead-letter reason; None when it succeeded
    attempts: int
    args: tuple[Any, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    error_type: str | None = None  # the end of the stored error's type
    by_name: bool = False  # enqueue from a producer that does not know the handler
    kills_child: bool = False


FAILED, SUCCEEDED = TaskState.FAILED, TaskState.SUCCEEDED
UNSTORABLE = "unserializable-result"

CASES = {
    "plain value": Case("double", SUCCEEDED, None, 1, args=(21,), value=42),
    "big int": Case("double", SUCCEEDED, None, 1, args=(2**100,), value=2**101),
    "float result": Case("half", SUCCEEDED, None, 1, args=(3.0,), value=1.5),
    "NaN result": Case("nan_result", FAILED, UNSTORABLE, 1, error_type="SerializationError"),
    "infinite result": Case(
        "infinite_result", FAILED, UNSTORABLE, 1, error_type="SerializationError"
    ),
    "unserializable result": Case(
        "opaque_result", FAILED, UNSTORABLE, 1, error_type="SerializationError"
    ),
    "lone surrogate result": Case(
        "surrogate_result", FAILED, UNSTORABLE, 1, error_type="SerializationError"
    ),
    "self-referencing result": Case(
        "self_referencing_result", FAILED, UNSTORABLE, 1, error_type="SerializationError"
    ),
    "exception with a bad __str__": Case(
        "bad_str", FAILED, "max-retries", 2, options={"max_retries": 1}, error_type="BadStr"
    ),
    "exception with bad __str__ and __repr__": Case(
        "bad_repr_and_str",
        FAILED,
        "failed",
        1,
        options={"max_retries": 0},
        error_type="BadReprAndStr",
    ),
    "SystemExit": Case(
        "system_exit", FAILED, "failed", 1, options={"max_retries": 2}, error_type="SystemExit"
    ),
    "SystemExit under a time limit": Case(
        "system_exit",
        FAILED,
        "failed",
        1,
        options={"max_retries": 2, "time_limit": 60, "soft_time_limit": 50},
        error_type="SystemExit",
    ),
    "KeyboardInterrupt": Case(
        "keyboard_interrupt",
        FAILED,
        "failed",
        1,
        options={"max_retries": 2},
        error_type="KeyboardInterrupt",
    ),
    "soft time limit": Case(
        "soft_limit", SUCCEEDED, None, 1, options={"soft_time_limit": 0.2}, value="cleaned up"
    ),
    "hard time limit": Case(
        "hard_limit",
        FAILED,
        "time-limit",
        1,
        options={"time_limit": 0.3, "max_retries": 2},
        error_type="TimeLimitExceeded",
        kills_child=True,
    ),
    "Retry": Case("retry", FAILED, "max-retries", 3, options={"max_retries": 2}),
    "Reject": Case("reject", FAILED, "not-for-us", 1, options={"max_retries": 2}),
    "bad arguments": Case("double", FAILED, "bad-arguments", 1, args=("seven",), by_name=True),
}


@pytest.fixture(scope="module")
def cases() -> Iterator[ModuleType]:
    """The handlers' module, importable by name (a child process imports it too)."""
    here = os.path.dirname(__file__)
    sys.path.insert(0, here)
    try:
        yield importlib.import_module("_pool_cases")
    finally:
        sys.path.remove(here)


@pytest.fixture
async def app() -> AsyncIterator[Stem]:
    stem = Stem(MemoryBroker(poll_interval=0.05), MemoryResultBackend())
    yield stem
    await stem.aclose()


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_a_handler_ends_the_same_way_in_every_pool(
    app: Stem, cases: ModuleType, case: Case, pool: str
) -> None:
    prefix = "a_" if pool == "async" else ""
    task = app.task(name=f"case.{case.handler}", retry_backoff=0, **case.options)(
        getattr(cases, prefix + case.handler)
    )
    control = app.task(name="control")(getattr(cases, prefix + "double"))
    async with (
        asyncio.timeout(60),
        app.worker(
            concurrency=2, pool=None if pool == "async" else pool, process_pool_size=1
        ) as worker,
    ):
        if case.by_name:
            producer = Stem(app.broker, app.backend)
            ref = await producer.enqueue(task.name, case.args)
        else:
            ref = await app.enqueue(task.name, case.args)
        result = await app.wait_for_task(ref, timeout=30)
        # The worker lives on and its pool still runs tasks.
        after = await app.wait_for_task(await control.enqueue(5), timeout=30)
        replaced = worker.processes.replaced
    assert after.value == 10
    assert result.state is case.state, result.error
    assert result.status is not None and result.status.attempt + 1 == case.attempts
    dead = await app.broker.get_dead_letter("default", ref)
    assert (dead.reason if dead else None) == case.reason
    if case.value is not None:
        assert result.value == case.value and type(result.value) is type(case.value)
    if case.error_type is not None:
        assert result.error is not None and result.error.type.endswith(case.error_type)
        assert result.error.message  # never empty, even when str(exc) fails
    if pool == "process":
        assert replaced == (1 if case.kills_child else 0)


# -- recording a failure never fails --------------------------------------------------------------


def test_task_error_falls_back_to_the_type_name_and_a_safe_repr(cases: ModuleType) -> None:
    for exc in (cases.BadStr(), cases.BadReprAndStr()):
        error = task_error(exc)
        assert error.type.endswith(type(exc).__name__)
        assert type(exc).__name__ in error.message
    surrogate = task_error(ValueError("bad \ud800 text"))
    surrogate.message.encode()  # storable: the lone surrogate is escaped
    assert surrogate.traceback is not None
    surrogate.traceback.encode()
    assert task_error(ValueError()).message == "ValueError"


# -- thread-pool interrupts ------------------------------------------------------------------------


@pytest.fixture
def thread_deaths() -> Iterator[list[threading.ExceptHookArgs]]:
    """Threads that ended with an exception while the test ran."""
    died: list[threading.ExceptHookArgs] = []
    previous = threading.excepthook
    threading.excepthook = died.append
    try:
        yield died
    finally:
        threading.excepthook = previous


async def test_hard_limits_never_kill_a_pool_thread(
    app: Stem, thread_deaths: list[threading.ExceptHookArgs]
) -> None:
    @app.task(name="racer", time_limit=0.01, max_retries=0)
    def racer(n: int) -> int:
        time.sleep(0.01)  # ends about when the hard limit passes
        return n

    @app.task(name="plain", max_retries=0)
    def plain(n: int) -> int:
        return n

    async with asyncio.timeout(60), app.worker(concurrency=4) as worker:
        calls = [c for n in range(400) for c in (racer.call(n), plain.call(n))]
        refs = await app.enqueue_many(calls)
        plain_refs = refs[1::2]
        results = [await app.wait_for_task(r, timeout=30) for r in plain_refs]
        threads = [t for t in threading.enumerate() if t.name.startswith("stem-task")]
        assert worker.healthy()
    assert [r.value for r in results] == list(range(400))
    # No thread ended with an exception; replacements of interrupted ones stay in bounds.
    assert not thread_deaths, [d.exc_type for d in thread_deaths]
    assert 1 <= len(threads) <= 8


async def test_a_thread_stuck_past_its_hard_limit_does_not_hold_its_slot(app: Stem) -> None:
    release = threading.Event()

    @app.task(name="stuck", time_limit=0.2, max_retries=0)
    def stuck() -> str:
        release.wait(60)  # a blocking C call: no exception can reach it
        return "too late"

    @app.task(name="plain")
    def plain(n: int) -> int:
        return n

    try:
        async with asyncio.timeout(60), app.worker(concurrency=1) as worker:
            first = await app.wait_for_task(await stuck.enqueue(), timeout=30)
            after = await app.wait_for_task(await plain.enqueue(7), timeout=30)
            assert worker.healthy()  # the stuck thread was replaced
            second = await app.wait_for_task(await stuck.enqueue(), timeout=30)
            # Two threads stuck with a pool of one: no more replacements, not healthy.
            assert not worker.healthy()
            release.set()
            await _until(lambda: worker.healthy())
            again = await app.wait_for_task(await plain.enqueue(8), timeout=30)
    finally:
        release.set()
    assert first.error is not None and first.error.type.endswith("TimeLimitExceeded")
    assert second.error is not None and second.error.type.endswith("TimeLimitExceeded")
    assert (after.value, again.value) == (7, 8)


async def test_an_interrupted_handler_is_logged_by_its_type(
    app: Stem, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()

    @app.task(name="long")
    async def long() -> None:
        started.set()
        await asyncio.sleep(60)

    worker = Worker(app, concurrency=1, grace_period=0)
    with caplog.at_level(logging.WARNING, logger="stem.worker"):
        async with asyncio.timeout(60):
            await worker.start()
            ref = await long.enqueue()
            await started.wait()
            await worker.stop()
    lines = [r.getMessage() for r in caplog.records if "ended without a result" in r.getMessage()]
    assert lines and "(Terminated" in lines[0] and "()" not in lines[0], lines
    assert (await app.broker.queue_stats("default")).pending == 1  # given back, not failed
    assert await app.broker.get_dead_letter("default", ref) is None


async def test_a_reject_reason_is_logged_once(
    app: Stem, cases: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    task = app.task(name="case.reject")(cases.a_reject)
    with caplog.at_level(logging.WARNING, logger="stem.worker"):
        async with app.worker():
            await app.wait_for_task(await task.enqueue(), timeout=10)
    (line,) = [r.getMessage() for r in caplog.records if "not-for-us" in r.getMessage()]
    assert line.count("not-for-us") == 1, line


async def _until(predicate: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - a thread's progress announces itself to no event
            await asyncio.sleep(0.01)
