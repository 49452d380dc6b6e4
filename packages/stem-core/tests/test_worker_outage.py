"""A broker outage is logged once: its first failure with the error, the later ones of the
same outage at DEBUG, and the recovery once (issue 9: not a traceback per failed call)."""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stem import AdapterError, FakeClock, Stem, TaskState
from stem.worker._outage import Outage

Drive = Callable[..., Awaitable[None]]


class Switch:
    """Makes chosen methods of the app's stores raise AdapterError while ``down``, as a
    broker whose server went away would; counts the failed calls by method."""

    def __init__(self) -> None:
        self.down = False
        self.failed: collections.Counter[str] = collections.Counter()

    def wrap(self, store: object, *names: str) -> None:
        for name in names:
            real = getattr(store, name)

            async def call(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                if self.down:
                    self.failed[_name] += 1
                    raise AdapterError(
                        f"cannot reach the server at redis://app:***@db:6379/0 ({_name})"
                    )
                return await _real(*args, **kwargs)

            setattr(store, name, call)


@pytest.fixture
def switch(app: Stem) -> Switch:
    switch = Switch()
    switch.wrap(app.broker, "reserve", "next_due", "settle", "nack", "extend_lease", "publish")
    switch.wrap(app.backend, "set_heartbeat")
    switch.wrap(app.revoke_store, "list")
    return switch


def said(records: list[logging.LogRecord], level: int) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= level]


async def test_an_outage_is_logged_once_and_its_end_once(
    app: Stem, clock: FakeClock, drive: Drive, switch: Switch, caplog: pytest.LogCaptureFixture
) -> None:
    gates = [asyncio.Event() for _ in range(3)]
    running: set[int] = set()

    @app.task(name="held", visibility_timeout=30)
    async def held(n: int) -> int:
        running.add(n)
        await gates[n].wait()
        return n

    caplog.set_level(logging.DEBUG, "stem")
    async with app.worker(
        concurrency=3, heartbeat_interval=1, revoke_interval=1, grace_period=0
    ) as worker:
        refs = [await held.enqueue(n) for n in range(3)]
        await drive(lambda: running == {0, 1, 2})
        caplog.clear()

        # When the broker goes away while three handlers run: two of them finish at once
        # (their results cannot be stored, their messages cannot be given back), the
        # third runs on past its lease renewal (a third of its 30 s lease); the consumer,
        # heartbeats and revocation polling fail meanwhile, over and over, for 20 s
        switch.down = True
        gates[0].set()
        gates[1].set()
        start = clock.now()
        await drive(lambda: clock.now() - start >= 20, step=0.5)
        during = list(caplog.records)
        caplog.clear()

        # Then every loop failed, several times each ...
        assert {"reserve", "settle", "nack", "extend_lease", "set_heartbeat", "list"} <= set(
            switch.failed
        ), switch.failed
        assert switch.failed["set_heartbeat"] >= 10 and switch.failed["reserve"] >= 5
        # ... and the outage is one record at ERROR, naming what failed and the error,
        # with no traceback (the error says it all); the rest are at DEBUG
        (first,) = said(during, logging.WARNING)
        assert "cannot reach the server at redis://app:***@db" in first, first
        assert "DEBUG" in first, first
        assert not any(r.exc_info for r in during)
        assert len(said(during, logging.DEBUG)) >= sum(switch.failed.values()) - 1

        # When it is back
        switch.down = False
        await drive(lambda: any("restored" in m for m in said(caplog.records, logging.INFO)))
        back = clock.now() - start

        # And every task reaches a final state (the two given back by their leases)
        gates[2].set()
        await drive(lambda: worker.counters["processed"] >= 3 and not worker.jobs)
    # Then its end was said once, with the outage's length, and nothing else went wrong
    (restored,) = [m for m in said(caplog.records, logging.INFO) if "restored" in m]
    found = re.search(r"connection to the broker .*restored after ([\d.]+) ?s", restored)
    assert found is not None, restored
    assert 20 <= float(found[1]) <= back + 1
    assert said(caplog.records, logging.WARNING) == [restored]
    statuses = await app.backend.get_statuses(refs)
    assert [statuses[r].value for r in refs] == [0, 1, 2]
    assert {s.state for s in statuses.values()} == {TaskState.SUCCEEDED}


def test_an_outage_ends_when_every_loop_that_failed_works_again(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "stem.worker")
    outage = Outage("the broker", clock)
    error = AdapterError("cannot reach the server")

    # The consumer fails, then heartbeats; a heartbeat works again, and a settle
    outage.failed("reading from the broker", error, retried=True)
    outage.failed("sending the heartbeat", error, retried=True)
    clock.advance(3)
    outage.recovered("sending the heartbeat")
    outage.recovered()
    # The outage is on while the consumer still fails ...
    assert outage.since is not None
    outage.failed("reading from the broker", error, retried=True)
    clock.advance(2)
    # ... and ends when it works
    outage.recovered("reading from the broker")
    assert outage.since is None
    # A later failure is a new outage, logged again
    outage.failed("storing 1 result(s)", error)
    outage.recovered()
    assert [(r.levelname, r.getMessage().partition(":")[0]) for r in caplog.records] == [
        ("ERROR", "reading from the broker failed"),
        ("DEBUG", "sending the heartbeat failed again"),
        ("DEBUG", "reading from the broker failed again"),
        ("WARNING", "connection to the broker restored after 5.0 s (3 failed calls)"),
        ("ERROR", "storing 1 result(s) failed"),
        ("WARNING", "connection to the broker restored after 0.0 s (1 failed calls)"),
    ]


def test_an_unexpected_error_gets_its_traceback_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "stem.worker")
    outage = Outage("the broker", clock)
    for _ in range(3):
        outage.failed("reading revocations", KeyError("seq"), retried=True)
    assert [bool(r.exc_info) for r in caplog.records] == [True, False, False]
    assert "reading revocations failed: KeyError: 'seq'" in caplog.records[0].getMessage()
