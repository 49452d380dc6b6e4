"""A SIGKILLed `stem worker` takes its process-pool children with it.

An orphaned child would finish its task while the message, its lease run out, is
delivered again: the task would run twice at the same time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from stem import Stem

pytestmark = [pytest.mark.sqlite, pytest.mark.processes]

APP = """
import os, time
from stem import Stem

app = Stem.from_url(os.environ["STEM_URL"])


@app.task(name="work.long", pool="process")
def long() -> None:
    pid_file = os.environ["PID_FILE"]
    with open(pid_file + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)  # appears whole, or not at all
    time.sleep(300)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it has died)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `stem worker` (process pool, one slot) on a SQLite file in tmp_path."""
    (tmp_path / "proc_app.py").write_text(textwrap.dedent(APP))
    env = {
        **os.environ,
        "STEM_URL": f"sqlite:///{tmp_path / 'stem.db'}",
        "PID_FILE": str(tmp_path / "child.pid"),
        "PYTHONUNBUFFERED": "1",
    }
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stem_cli", "worker", "--app", "proc_app:app", "-c", "1"],
            cwd=tmp_path,
            env=env,
            stderr=log,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


async def test_children_die_with_a_sigkilled_worker(
    tmp_path: Path, worker: subprocess.Popen[bytes]
) -> None:
    producer = Stem.from_url(f"sqlite:///{tmp_path / 'stem.db'}")
    pid_file = tmp_path / "child.pid"
    child = 0
    try:
        await producer.enqueue("work.long")
        async with asyncio.timeout(60):
            while not pid_file.exists():
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                await asyncio.sleep(0.05)
        child = int(pid_file.read_text())
        assert child != worker.pid and alive(child)
        worker.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            while alive(child):  # noqa: ASYNC110 - the kernel tells no one
                await asyncio.sleep(0.05)
    finally:
        if child and alive(child):
            os.kill(child, signal.SIGKILL)
        await producer.aclose()
