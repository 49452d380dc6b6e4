"""Tasks for the process-pool tests: a child process imports this module by name."""

from __future__ import annotations

import os
import time

from stem import SoftTimeLimitExceeded, Stem, TaskContext
from stem.memory import MemoryBroker, MemoryResultBackend

app = Stem(MemoryBroker(poll_interval=0.05), MemoryResultBackend())


@app.task(name="proc.square", pool="process")
def square(x: int) -> dict[str, int]:
    return {"value": x * x, "pid": os.getpid()}


@app.task(name="proc.spin", pool="process", time_limit=1.0)
def spin() -> None:
    while True:  # ignores everything but SIGKILL
        pass


@app.task(name="proc.polite", pool="process", soft_time_limit=0.3, time_limit=5.0)
def polite(ctx: TaskContext) -> str:
    try:
        for _ in range(500):
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return f"cleaned up {ctx.name}"
    return "ran to the end"


@app.task(name="proc.crash", pool="process", max_retries=0)
def crash() -> None:
    os._exit(3)
