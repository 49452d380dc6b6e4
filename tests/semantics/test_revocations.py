"""Revocations reach running workers in commit order, and expire."""

from __future__ import annotations

from stem import FakeClock, Stem, TaskState
from stem.contracts import RevokeEntry

from .conftest import Drive


async def test_a_worker_sees_a_revocation_stamped_before_one_it_already_saw(
    app: Stem, clock: FakeClock, drive: Drive
) -> None:
    ran: list[int] = []

    @app.task(name="job")
    async def job(n: int) -> None:
        ran.append(n)

    worker = app.worker(concurrency=1, revoke_interval=1)
    async with worker:
        first = await app.revoke("task-a")
        await drive(lambda: "task-a" in worker.revoked)
        # A revocation whose timestamp is older than one the worker has seen: a producer
        # whose clock is behind, or a stamp taken before a slow write
        await app.revoke_store.revoke(
            RevokeEntry(task_id="task-b", revoked_at=first.revoked_at - 60, expires_at=None)
        )
        await drive(lambda: "task-b" in worker.revoked)
        # and it is honoured: the task does not run
        await job.options(task_id="task-b").enqueue(1)

        async def revoked() -> bool:
            status = await app.get_status("task-b")
            return status is not None and status.state is TaskState.REVOKED

        await drive(revoked)
    assert ran == []


async def test_revocations_expire_and_leave_the_workers_set(
    app: Stem, clock: FakeClock, drive: Drive
) -> None:
    ran: list[str] = []

    @app.task(name="job")
    async def job(ctx_id: str) -> None:
        ran.append(ctx_id)

    worker = app.worker(concurrency=1, revoke_interval=1)
    async with worker:
        entry = await app.revoke("brief", expires=30)
        assert entry.expires_at == entry.revoked_at + 30
        await drive(lambda: "brief" in worker.revoked)
        clock.advance(31)
        await drive(lambda: "brief" not in worker.revoked)
        assert await app.revoke_store.get("brief") is None
        # After its expiry, a message with that id runs
        await job.options(task_id="brief").enqueue("brief")

        async def done() -> bool:
            status = await app.get_status("brief")
            return status is not None and status.state is TaskState.SUCCEEDED

        await drive(done)
    assert ran == ["brief"]


async def test_revocations_last_a_day_by_default(app: Stem) -> None:
    entry = await app.revoke("t")
    assert entry.expires_at == entry.revoked_at + 86400
    assert entry.seq > 0
