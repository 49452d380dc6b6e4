"""A broker that goes away and comes back (issue 9, "Real processes and faults").

A `stem worker` process survives, carries on, and logs the outage once: on Redis the
server is stopped and started again on the same port and directory, with append-only
persistence, while the worker is busy; on SQLite another process holds the file's write
lock for a while. A producer's enqueue during an outage raises a clear error within its
socket timeout instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis
import redis_server
from kill_harness import RECORD, WorkerGroup, overlapping, read_runs, wait_until

from stem import AdapterError, Stem, TaskState, TaskStatus
from stem_adapter_tests import skip_or_fail

pytestmark = [pytest.mark.processes]

APP = (
    """
import asyncio, os
from stem import Stem, TaskContext

app = Stem.from_url(os.environ["STEM_URL"])
RUNS = os.environ["RUNS_FILE"]
"""
    + RECORD
    + """

@app.task(name="outage.step", visibility_timeout=2)
async def step(ctx: TaskContext, n: int) -> int:
    record("start", ctx.id)
    await asyncio.sleep(0.02)  # a little real work, so the outage lands mid-run
    record("finish", ctx.id)
    return n
"""
)

#: How the worker's log says what it says: "DATE TIME LEVEL logger: message".
LEVEL = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+(\S+): (.*)$")


def records(log: str, *levels: str) -> list[str]:
    """The messages of the log's records at ``levels``."""
    found = []
    for line in log.splitlines():
        match = LEVEL.match(line)
        if match is not None and match[1] in levels:
            found.append(f"{match[1]} {match[2]} {match[3]}")
    return found


def failed_again(log: str) -> int:
    return sum(1 for line in records(log, "DEBUG") if " failed again: " in line)


def down_a_while(log: str) -> bool:
    return failed_again(log) >= 3 and "sending the heartbeat failed" in log


async def all_final(producer: Stem, ids: Sequence[str], timeout: float) -> dict[str, TaskStatus]:
    """Poll the backend until every task is final or ``timeout`` passes (a store of another
    process tells us nothing); a failed read (the server is still starting) is retried."""
    statuses: dict[str, TaskStatus] = {}
    async with asyncio.timeout(timeout):
        while len(statuses) < len(ids) or not all(s.state.is_final for s in statuses.values()):
            await asyncio.sleep(0.1)
            statuses.update(await producer.backend.get_statuses(list(ids)))
    return statuses


def check_one_outage(log: str) -> None:
    """One ERROR record for the whole outage, the rest at DEBUG, its end said once."""
    loud = records(log, "WARNING", "ERROR", "CRITICAL")
    assert len(loud) == 2, "\n".join(loud)
    assert loud[0].startswith("ERROR stem.worker") and " failed: " in loud[0], loud
    assert re.search(r"connection to the broker restored after [\d.]+ s", loud[1]), loud
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.redis
async def test_a_busy_worker_survives_a_redis_restart_and_logs_the_outage_once(
    tmp_path: Path,
) -> None:
    # Given a worker busy on a Redis server that keeps an append-only file
    try:
        server = redis_server.start(appendonly=True)
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no redis-server: {exc}")
    group = WorkerGroup(tmp_path, APP, url=server.url)
    producer = Stem.from_url(server.url)
    try:
        worker = group.start("-c", "4", "--heartbeat-interval", "1", "-l", "debug")
        ids = await producer.enqueue_many(producer.call("outage.step", [n]) for n in range(400))
        started = lambda: len(read_runs(group.runs)) >= 40  # noqa: E731
        assert await wait_until(started, timeout=60), group.log_of(worker)[-3000:]

        # When the server is stopped (SIGTERM: it saves its file and exits) and, once the
        # worker has failed to reach it a few times, started again on the same port
        raw = redis.Redis.from_url(server.url)
        try:
            pid = int(raw.info("server")["process_id"])
        finally:
            raw.close()
        os.kill(pid, signal.SIGTERM)
        assert await wait_until(lambda: not server.running, timeout=30)
        # (a failed heartbeat, a second after the last good one, says the outage lasted)
        assert await wait_until(lambda: down_a_while(group.log_of(worker)), timeout=60), (
            group.log_of(worker)[-3000:]
        )
        left = len(ids) - sum(1 for runs in read_runs(group.runs).values() if runs[-1].finish)
        await asyncio.to_thread(server.restart)

        # Then the worker carries on: every task reaches a final state and succeeded
        statuses = await all_final(producer, ids, timeout=90)
        assert [statuses[i].value for i in ids] == list(range(len(ids)))
        assert {s.state for s in statuses.values()} == {TaskState.SUCCEEDED}
        assert left > 0  # the outage did land while tasks were left to run
        assert worker.poll() is None, group.log_of(worker)[-3000:]
        # And none ran twice at the same time; the queue is empty (what was in flight in
        # the outage came back when its lease ended, and ran again)
        assert not any(overlapping(runs) for runs in read_runs(group.runs).values())
        stats = await producer.broker.queue_stats("default")
        assert (stats.pending, stats.inflight, stats.dead) == (0, 0, 0)
        # And the outage is in its log once, and its end once
        restored = lambda: "restored after" in group.log_of(worker)  # noqa: E731
        assert await wait_until(restored, timeout=30), group.log_of(worker)[-3000:]
        check_one_outage(group.log_of(worker))
        assert failed_again(group.log_of(worker)) >= 3
        assert await group.terminate_all(30) == []
    finally:
        await producer.aclose()
        group.close()
        server.stop()


@pytest.mark.sqlite
async def test_a_worker_locked_out_of_its_sqlite_file_logs_it_once(tmp_path: Path) -> None:
    # Given a worker on a SQLite file that waits a tenth of a second for a write lock
    db = tmp_path / "stem.db"
    url = f"sqlite:///{db}?busy_timeout=0.1"
    group = WorkerGroup(tmp_path, APP, url=url)
    producer = Stem.from_url(url)
    try:
        worker = group.start("-c", "2", "--heartbeat-interval", "0.2", "-l", "debug")
        first = await producer.enqueue("outage.step", [0])
        assert (await all_final(producer, [first], timeout=60))[first].value == 0

        # When another process holds the file's write lock until the worker has failed a
        # few times, then lets go
        holder = sqlite3.connect(db, isolation_level=None, timeout=30)
        try:
            holder.execute("BEGIN IMMEDIATE")
            assert await wait_until(lambda: failed_again(group.log_of(worker)) >= 3, timeout=60), (
                group.log_of(worker)[-3000:]
            )
        finally:
            holder.execute("ROLLBACK")
            holder.close()

        # Then the worker carries on: a task enqueued now runs
        later = await producer.enqueue("outage.step", [1])
        assert (await all_final(producer, [later], timeout=60))[later].value == 1
        assert worker.poll() is None
        # And the outage is in its log once, and its end once
        restored = lambda: "restored after" in group.log_of(worker)  # noqa: E731
        assert await wait_until(restored, timeout=30), group.log_of(worker)[-3000:]
        check_one_outage(group.log_of(worker))
        assert await group.terminate_all(30) == []
    finally:
        await producer.aclose()
        group.close()


@pytest.mark.redis
@pytest.mark.parametrize("how", ["stopped", "paused"])
async def test_an_enqueue_during_an_outage_fails_clearly_within_the_socket_timeout(
    how: str,
) -> None:
    # Given a producer with a half-second socket timeout, whose URL holds a password
    try:
        server = redis_server.start()
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no redis-server: {exc}")
    raw = redis.Redis.from_url(server.url)
    pid = int(raw.info("server")["process_id"])
    raw.acl_setuser(
        "app", enabled=True, passwords=["+hunter2"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    raw.close()
    url = f"redis://app:hunter2@127.0.0.1:{server.port}/0?socket_timeout=0.5&connect_timeout=0.5"
    producer = Stem.from_url(url)
    try:
        await producer.enqueue("outage.step", [0])  # its pool holds a connection now

        # When the server is stopped (it refuses connections), or paused with SIGSTOP
        # (it accepts them and never answers: what a hung server or a cut link looks like)
        if how == "stopped":
            os.kill(pid, signal.SIGTERM)
            assert await wait_until(lambda: not server.running, timeout=30)
        else:
            os.kill(pid, signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(AdapterError) as info:
            async with asyncio.timeout(10):  # it must not hang: fail here instead
                await producer.enqueue("outage.step", [1])
        took = time.monotonic() - began

        # Then the enqueue raises an AdapterError that names the server, password masked,
        # at once when refused, after the socket timeout (and once more for the retry on a
        # fresh connection at most) when unanswered
        text = str(info.value)
        assert "redis://app:***@127.0.0.1" in text, text
        assert "hunter2" not in text and "hunter2" not in repr(info.value.__cause__)
        if how == "stopped":
            assert "cannot reach the Redis server" in text, text
            assert took < 2.0
        else:
            assert "did not answer within 0.5 s" in text, text
            assert 0.5 <= took < 3.0
    finally:
        if how == "paused":
            os.kill(pid, signal.SIGCONT)
        await producer.aclose()
        server.stop()
