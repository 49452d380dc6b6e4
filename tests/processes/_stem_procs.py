"""Real `stem` command processes on one app module, for the tests of this folder.

Each test writes its app module into its own directory and starts `stem worker` (or
`stem beat`) processes on it; each process's stderr goes to a log file of its own, and
every process is killed at the end, whatever the test did.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

__all__ = ["StemProcesses"]


class StemProcesses:
    """`python -m stem_cli ...` processes sharing one directory, environment and app."""

    def __init__(self, root: Path, module: str, source: str, env: dict[str, str]) -> None:
        self.root = root
        self.module = module
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []

    def spawn(
        self, command: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``stem COMMAND --app MODULE:app ARGS...``, its log in COMMAND-N.log."""
        path = self.root / f"{command}-{len(self.procs)}.log"
        log = open(path, "wb")  # noqa: SIM115 - closed in stop_all
        proc = subprocess.Popen(
            [sys.executable, "-m", "stem_cli", command, "--app", f"{self.module}:app", *args],
            cwd=self.root,
            env={**self.env, **(env or {})},
            stderr=log,
        )
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        self._logs.append(path)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return self._logs[self.procs.index(proc)].read_text(errors="replace")

    def logs(self, tail: int = 15) -> str:
        """The last lines of every process's log, for a failure's message."""
        parts = []
        for proc, path in zip(self.procs, self._logs, strict=True):
            lines = path.read_text(errors="replace").splitlines()
            parts.append(f"--- {path.name} (pid {proc.pid}, exit {proc.poll()}):")
            parts += lines[-tail:]
        return "\n".join(parts)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.log.close()  # type: ignore[attr-defined]
