"""Dead letters, decoded for reading, and replayed as a fresh start."""

from __future__ import annotations

from stem import FakeClock, Stem, TaskState
from stem.contracts import Message

from .conftest import Drive


async def test_replay_restarts_status_retry_budget_and_deliveries(
    app: Stem, clock: FakeClock, drive: Drive
) -> None:
    attempts: list[int] = []
    healthy = False

    @app.task(name="flaky", max_retries=2, retry_backoff=1)
    async def flaky(n: int) -> int:
        attempts.append(n)
        if not healthy:
            raise RuntimeError("service down")
        return n

    async def state(task_id: str) -> TaskState | None:
        status = await app.get_status(task_id)
        return status.state if status else None

    async with app.worker(concurrency=1):
        ref = await flaky.enqueue(7)

        async def failed() -> bool:
            # The failed status is stored before the message moves to the dead letters
            # (as a result is stored before its ack): wait for both.
            return await state(ref) is TaskState.FAILED and bool(await app.dead_letters.list())

        await drive(failed)
        assert len(attempts) == 3
        [view] = await app.dead_letters.list()
        assert (view.task, view.args, view.attempts, view.reason) == (
            "flaky",
            [7],
            3,
            "max-retries",
        )
        assert view.max_retries == 2 and "RuntimeError: service down" in (view.error or "")

        # Replayed while the service is still down: it gets its whole retry budget again
        assert await app.dead_letters.replay() == 1
        assert await state(ref) is TaskState.QUEUED  # a wait now waits for the new outcome
        await drive(failed)
        assert len(attempts) == 6

        # Replayed once the service is back: the wait sees the new success
        healthy = True
        assert await app.dead_letters.replay(message_ids=[ref]) == 1
        result = await app.wait_for_task(ref, timeout=0)
        assert result.state is TaskState.QUEUED
        await drive(lambda: len(attempts) == 7)

        async def succeeded() -> bool:
            return await state(ref) is TaskState.SUCCEEDED

        await drive(succeeded)
    assert await app.dead_letters.list() == []


async def test_a_letter_that_does_not_decode_is_shown_and_replayed_as_is(app: Stem) -> None:
    await app.broker.publish(Message(id="junk", queue="default", body=b"\xff\x00 not stem"))
    [delivery] = await app.broker.reserve(["default"], 1, 30)
    await app.broker.dead_letter(delivery, "malformed", error="DecodeError: not an envelope")
    view = await app.dead_letters.get("junk")
    assert view is not None
    assert view.task is None and view.args is None and view.attempts is None
    assert view.decode_error and view.reason == "malformed" and view.message_id == "junk"
    assert await app.dead_letters.replay(message_ids=["junk"]) == 1
    [again] = await app.broker.reserve(["default"], 1, 30)
    assert again.message.body == b"\xff\x00 not stem" and again.deliveries == 1


async def test_purge_deletes_only_what_is_named(app: Stem) -> None:
    for mid in ("a", "b"):
        await app.broker.publish(Message(id=mid, queue="default", body=b"{}"))
    for delivery in await app.broker.reserve(["default"], 2, 30):
        await app.broker.dead_letter(delivery, "test")
    assert await app.dead_letters.purge(message_ids=["a"]) == 1
    assert [v.message_id for v in await app.dead_letters.list()] == ["b"]
