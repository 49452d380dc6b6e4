"""What every contract suite shares: the clock, time travel, capability gates, bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from stem import Clock, FakeClock

__all__ = ["WAIT_LIMIT", "ContractSuite", "requires", "unique"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# The attribute ``requires`` leaves on a test function. An attribute rather than a
# pytest marker: markers must be registered under --strict-markers, and a suite run
# with the plugin disabled (``-p no:stem_adapter_tests``) would then fail to collect.
_REQUIRES_ATTR = "__stem_requires__"

#: Real seconds a test may wait for a background task (a consumer, a watcher) before it
#: fails; a broken adapter then fails the test instead of hanging the run.
WAIT_LIMIT = 5.0

#: The longest real wait :meth:`ContractSuite.advance` accepts on a real clock. The suites
#: keep durations short (leases of 0.5 s) so a real-time adapter runs them in seconds.
MAX_REAL_ADVANCE = 5.0


def requires(*capabilities: str) -> Callable[[F], F]:
    """Run the decorated contract test only if the subject declares every capability.

    The subject is the object the suite's main fixture builds (``broker`` for the
    broker suite); its ``capabilities`` attribute is read when the test runs. A
    missing capability skips the test with the reason printed, for example
    ``MyBroker declares priority=False``; a capability name the subject does not know
    fails the test, so a typo never turns into a silent skip.

    Example:
        class TestMyBroker(BrokerContract):
            @requires("priority")
            async def test_my_priority_quirk(self, broker): ...
    """

    def mark(test: F) -> F:
        setattr(test, _REQUIRES_ATTR, (*getattr(test, _REQUIRES_ATTR, ()), *capabilities))
        return test

    return mark


def unique(prefix: str) -> str:
    """A name no other test uses, so suites can share one server without cleaning it."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class ContractSuite:
    """The base of every contract suite: the ``clock`` fixture and its helpers.

    Subclasses name the fixture that builds their subject in ``subject_fixture``;
    :func:`requires` gates read that subject's ``capabilities``.
    """

    subject_fixture: str = ""

    #: Real seconds :meth:`finish` waits for a background task before failing the test.
    wait_limit: float = WAIT_LIMIT

    @pytest.fixture
    def clock(self) -> Clock:
        """The clock the subject reads. Override it to return ``stem.SystemClock()`` when the
        subject keeps its own time (a server), and the suite then waits for real."""
        return FakeClock()

    @pytest.fixture(autouse=True)
    def _stem_requirements(self, request: pytest.FixtureRequest) -> None:
        needed: tuple[str, ...] = getattr(request.function, _REQUIRES_ATTR, ())
        if not needed:
            return
        # Only gated tests build the subject here; the rest build it when they ask for it.
        subject = request.getfixturevalue(self.subject_fixture)
        capabilities = getattr(subject, "capabilities", None)
        name = type(subject).__name__
        for flag in needed:
            if capabilities is None or not hasattr(capabilities, flag):
                pytest.fail(f"{name} has no capability flag {flag!r}; check the @requires name")
            if not getattr(capabilities, flag):
                pytest.skip(f"{name} declares {flag}=False")

    @staticmethod
    def is_fake(clock: Clock) -> bool:
        """Whether time moves only when the test says so."""
        return isinstance(clock, FakeClock)

    async def advance(self, clock: Clock, seconds: float) -> None:
        """Let ``seconds`` pass: at once on a FakeClock, for real (briefly) otherwise.

        Raises:
            ValueError: on a real clock, if asked to wait longer than ``MAX_REAL_ADVANCE``.
        """
        if isinstance(clock, FakeClock):
            clock.advance(seconds)
            # Let tasks the advance woke (sleepers on the clock) take their next step.
            await asyncio.sleep(0)
            return
        if seconds > MAX_REAL_ADVANCE:
            raise ValueError(f"a contract test may not wait {seconds} s on a real clock")
        await clock.sleep(seconds)

    def near(self, clock: Clock, expected: float) -> Any:
        """A time comparison: exact on a FakeClock, within a couple of seconds on a real one
        (the server's clock and ours differ a little, and calls take time)."""
        return pytest.approx(expected, abs=1e-3 if self.is_fake(clock) else 2.0)

    async def finish(
        self, clock: Clock, task: asyncio.Future[T], *, nudge: float = 0.0, what: str = "task"
    ) -> T:
        """Wait for a background task and return its result, failing rather than hanging.

        With ``nudge``, the clock moves by that much between looks, so an adapter that
        polls (sleeping on the clock between reads) sees time pass. Without it, the
        task must finish on its own, which is how notification is tested.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_limit
        while not task.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                # Settle the task before failing, so the failure is what gets reported
                # and not an error from closing the stream the task was reading.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                pytest.fail(f"{what} did not finish within {self.wait_limit} s")
            await asyncio.wait({task}, timeout=min(remaining, 0.01) if nudge else remaining)
            if nudge and not task.done():
                await self.advance(clock, nudge)
        return task.result()
