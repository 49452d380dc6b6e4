"""The floor on Redis: plain redis-py doing a queue's storage work on one stream.

One thread, the synchronous client (with hiredis where it is installed), no asyncio, no
worker process: what a Python program can do with Redis Streams at best, the yardstick for
every system's own overhead. Each message is a small msgspec-encoded body like a task
system's (an id, the task's name, its arguments).

- enqueue one by one: one ``XADD`` per message, a round trip each;
- enqueue batched: ``XADD`` in pipelines of 100 (no ``MULTI``);
- drain: ``XREADGROUP COUNT 100`` on a consumer group, each body decoded (what a worker
  must do to learn which task to run) and stamped, then one ``XACK`` of the batch; the
  stamps give the steady-state rate as for every system. No result is stored: the floor
  is the queue's work only, so every system's distance from it includes storing results;
- round trip: ``XADD``, ``XREADGROUP COUNT 1``, ``XACK``, one after the other.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from _redis_common import PeerRun, RedisPlan, round_trips

NAME = "floor (redis-py)"
DIST = "redis"
STREAM = "floor:default"
GROUP = "floor"


def settings(plan: RedisPlan) -> str:
    return (
        f"redis-py's synchronous client in one thread; XADD one by one and in pipelines of "
        f"{plan.batch}; drain by XREADGROUP COUNT {plan.batch} + one XACK per batch, bodies "
        "decoded, no result stored; round trip XADD -> XREADGROUP COUNT 1 -> XACK"
    )


def run(plan: RedisPlan, workdir: Path) -> PeerRun:
    import msgspec
    import redis

    encode = msgspec.json.Encoder().encode
    decode = msgspec.json.decode

    def body(i: int) -> bytes:
        return encode({"id": uuid.uuid4().hex, "task": "bench.noop", "args": [i]})

    out = PeerRun(version=redis.__version__)
    m = plan.measures
    if "batch" in m:
        client = redis.Redis.from_url(plan.batch_url)
        started = time.perf_counter()
        for start in range(0, plan.n, plan.batch):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(plan.n, start + plan.batch)):
                pipe.xadd(STREAM, {"body": body(i)})
            pipe.execute()
        out.enqueue_batched = plan.n / (time.perf_counter() - started)
        client.close()
    client = redis.Redis.from_url(plan.url)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    if "enqueue" in m or "drain" in m:
        started = time.perf_counter()
        for i in range(plan.n):
            client.xadd(STREAM, {"body": body(i)})
        out.enqueue_one = plan.n / (time.perf_counter() - started)
        if "enqueue" not in m:
            out.enqueue_one = None
    if "drain" in m:
        stamps = out.drain_stamps
        while True:
            reply = client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=plan.batch)
            if not reply:
                break
            ids = []
            for entry_id, fields in reply[0][1]:
                decode(fields[b"body"])
                stamps.append(time.monotonic())
                ids.append(entry_id)
            client.xack(STREAM, GROUP, *ids)
        if len(stamps) != plan.n:
            raise RuntimeError(f"the floor drained {len(stamps)} of {plan.n} messages")
    if "rtt" in m:

        def trip(i: int) -> float:
            client.xadd(STREAM, {"body": body(i)})
            reply = client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=1)
            entry_id, fields = reply[0][1][0]
            decode(fields[b"body"])
            client.xack(STREAM, GROUP, entry_id)
            return time.monotonic()

        out.round_trips = round_trips(trip, min(plan.round_trips, plan.n))
    client.close()
    return out
