"""Enqueue from synchronous code (a Django view, a Flask handler, a script).

uv run python examples/sync_producer.py
"""

from __future__ import annotations

import asyncio

from stem import Stem

URL = "sqlite:///.stem/examples/sync_producer.db"  # its own file; the worker opens it too
app = Stem.from_url(URL)


@app.task(name="mail.welcome")
async def send_welcome(address: str) -> str:
    return f"welcome mail sent to {address}"


def signup_view(address: str) -> str:
    """A synchronous request handler: no event loop in sight."""
    ref = send_welcome.enqueue_sync(address)
    return str(ref)


def main() -> None:
    task_ids = [signup_view(f"user{i}@example.com") for i in range(3)]
    print(f"enqueued {len(task_ids)} tasks from synchronous code")

    # Normally a `stem worker` process runs these; here a worker runs for a moment.
    async def work() -> None:
        worker_app = Stem.from_url(URL)
        worker_app.task(name="mail.welcome")(send_welcome.fn)
        async with worker_app.worker():
            for task_id in task_ids:
                print((await worker_app.wait_for_task(task_id, timeout=30)).value)
        await worker_app.aclose()

    asyncio.run(work())
    print("result read synchronously:", app.wait_for_task_sync(task_ids[0], timeout=30).value)
    app.close_sync()


if __name__ == "__main__":
    main()
