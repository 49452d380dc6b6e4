"""The floor: plain ``sqlite3`` doing Stem's storage work with Stem's schema and SQL.

One thread, no asyncio, no worker: the best a Python program can do with Stem's schema,
the yardstick for the adapter's own overhead. The schema is made by stem-sqlite itself
(its migrations run when the floor's file is first opened through Stem), so a change of
indexes or columns reaches the floor at once; the statements are imported from
``stem_sqlite._broker`` and ``stem_sqlite._backend`` (private: the floor is ours), so
they are always the ones Stem runs.

The work per task, as Stem does it:

- enqueue: Stem's own enqueue transaction (``_broker._enqueue``: the message row
  carrying its ``queued`` status), one
  ``BEGIN IMMEDIATE`` transaction per call (one task, or a batch of 100);
- drain, per batch of 100: one transaction leasing the batch with the ``UPDATE ...
  RETURNING`` of a reserve; the body decoded (a worker must read it to know what to run)
  and a result status encoded; one transaction storing the statuses and deleting the
  messages. Left out: the promotion of delayed and expired messages that every Stem
  reserve also runs (there are none here), so the floor is a little kinder than Stem.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from stem import Stem
from stem._ids import new_task_id
from stem_sqlite._backend import store_statuses

# Stem's own statements, imported rather than copied, so the floor cannot drift from them.
from stem_sqlite._broker import _LEASE, _enqueue

__all__ = ["FloorRun", "run_floor"]

_ACK = "DELETE FROM stem_messages WHERE seq = ? AND receipt = ?"

_QUEUE = "default"
_TASK = "bench.noop"
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class FloorRun:
    """What one repetition of the floor measured (None: not asked for)."""

    enqueue_one: float | None  # tasks/s, one transaction per task
    enqueue_batched: float | None  # tasks/s, one transaction per batch
    drain_stamps: list[float]  # when each task "ran" (time.monotonic())


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise RuntimeError(f"the floor's file {path} would not switch to WAL (it is {mode})")
    # Not a bound parameter (PRAGMA takes none): the value is one of a fixed set.
    assert synchronous in ("FULL", "NORMAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    (level,) = conn.execute("PRAGMA synchronous").fetchone()
    if level != {"NORMAL": 1, "FULL": 2}[synchronous]:
        raise RuntimeError(f"the floor's connection runs synchronous={level}, not {synchronous}")
    conn.execute("PRAGMA journal_size_limit = 67108864")  # as stem-sqlite sets it
    return conn


async def _make_schema(url: str) -> None:
    """Let stem-sqlite create its schema, and leave one real message to copy the body of."""
    app = Stem.from_url(url, backend=url, workflow_store=url)

    @app.task(name=_TASK)
    async def noop(i: int) -> float:
        return time.monotonic()

    try:
        await app.enqueue_many([noop.call(0)])
    finally:
        await app.aclose()


def _template_body(conn: sqlite3.Connection) -> bytes:
    """The body Stem wrote for ``noop(0)``: the floor publishes bodies of the same size."""
    (body,) = conn.execute("SELECT body FROM stem_messages LIMIT 1").fetchone()
    conn.execute("BEGIN IMMEDIATE")
    for table in ("stem_messages", "stem_task_statuses"):
        conn.execute(f"DELETE FROM {table}")  # table names are literals above
    conn.execute("COMMIT")
    return bytes(body)


def _enqueue_batch(conn: sqlite3.Connection, body: bytes, count: int) -> None:
    """Stem's enqueue of ``count`` tasks in one transaction."""
    now = time.time()
    rows = []
    for _ in range(count):
        tid = new_task_id()
        status = {"id": tid, "state": "queued", "task": _TASK, "queue": _QUEUE, "updated_at": now}
        rows.append((_QUEUE, tid, body, 0, None, now, 0, _encode(status).decode()))
    conn.execute("BEGIN IMMEDIATE")
    try:
        _enqueue(conn, rows, [], [], now, False)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _fill(conn: sqlite3.Connection, body: bytes, n: int, batch: int) -> float:
    """Enqueue ``n`` tasks, ``batch`` per transaction; returns tasks per second."""
    started = time.perf_counter()
    for start in range(0, n, batch):
        _enqueue_batch(conn, body, min(batch, n - start))
    return n / (time.perf_counter() - started)


def _drain(conn: sqlite3.Connection, batch: int) -> list[float]:
    """Lease, run and settle every message, ``batch`` at a time; when each one ran."""
    stamps: list[float] = []
    nonce = secrets.token_hex(6)
    decode = msgspec.json.decode
    worker = f"floor-{uuid.uuid4().hex[:8]}"
    while True:
        now = time.time()
        params: dict[str, Any] = {
            "until": now + 60.0,
            "nonce": nonce,
            "queue": _QUEUE,
            "limit": batch,
        }
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(_LEASE, params).fetchall()
        conn.execute("COMMIT")
        if not rows:
            return stamps
        statuses = []
        pairs = []
        for seq, mid, body, _priority, _eta, _due, _deliveries, receipt in rows:
            decode(body)  # what a worker must do to learn which task to run
            ran = time.monotonic()  # the no-op task's result, as the benchmark tasks return
            stamps.append(ran)
            done = time.time()
            data = {
                "id": mid,
                "state": "succeeded",
                "task": _TASK,
                "queue": _QUEUE,
                "value": ran,
                "worker": worker,
                "updated_at": done,
            }
            statuses.append((mid, "succeeded", _TASK, done, None, _encode(data).decode()))
            pairs.append((seq, receipt))
        conn.execute("BEGIN IMMEDIATE")
        try:
            store_statuses(conn, statuses, now, False)
            conn.executemany(_ACK, pairs)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def run_floor(
    workdir: Path,
    n: int,
    synchronous: str,
    *,
    batch: int,
    one_by_one: bool,
    batched: bool,
    drain: bool,
) -> FloorRun:
    """One repetition: fresh files, each measure asked for, in one thread."""
    stamps: list[float] = []
    enqueue_one = enqueue_batched = None
    for label in ("one", "batched"):
        if label == "one" and not (one_by_one or drain):
            continue
        if label == "batched" and not batched:
            continue
        path = workdir / f"floor-{label}.db"
        asyncio.run(_make_schema(f"sqlite:///{path}"))  # the schema only: no timing here
        conn = _connect(path, synchronous)
        try:
            body = _template_body(conn)
            if label == "one":
                rate = _fill(conn, body, n, 1 if one_by_one else batch)
                enqueue_one = rate if one_by_one else None
                if drain:
                    stamps = _drain(conn, batch)
                    if len(stamps) != n:
                        raise RuntimeError(f"the floor drained {len(stamps)} of {n} messages")
            else:
                enqueue_batched = _fill(conn, body, n, batch)
        finally:
            conn.close()
    return FloorRun(enqueue_one, enqueue_batched, stamps)
