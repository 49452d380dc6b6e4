"""The manual's code: every block compiles, and every complete program in it runs.

The convention (stated in docs/index.md): a ``python`` block that starts with an import,
or with a ``# name.py`` line, is a complete program; a block whose first line is a
``# fragment`` or ``# sketch`` comment, or that starts with anything else, continues
the page's example (``await`` shown at the top level stands for code inside an async
function).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
_HEADER = re.compile(r"# ([\w/]+)\.py\s*$")

#: Imports a program as its module and runs the ``async def test_*`` functions it defines.
_RUNNER = """
import asyncio, importlib, inspect, sys
sys.path.insert(0, ".")
module = importlib.import_module(sys.argv[1])
for name, fn in list(vars(module).items()):
    if name.startswith("test_") and inspect.iscoroutinefunction(fn):
        asyncio.run(fn())
"""


def blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for number, match in enumerate(re.finditer(r"```python\n(.*?)```", text, re.S), 1):
            found.append((f"{page.relative_to(ROOT)}#{number}", match.group(1)))
    return found


def is_program(code: str) -> bool:
    first = code.lstrip().splitlines()[0]
    if re.match(r"# (fragment|sketch)\b", first):
        return False
    return bool(_HEADER.match(first)) or first.startswith(("import ", "from "))


BLOCKS = blocks()


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_every_block_compiles(where: str, code: str) -> None:
    compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


PROGRAMS = [(w, c) for w, c in BLOCKS if is_program(c)]


def test_the_manual_has_programs() -> None:
    assert len(PROGRAMS) >= 5


@pytest.mark.processes
@pytest.mark.parametrize(("where", "code"), PROGRAMS, ids=[w for w, _ in PROGRAMS])
def test_every_program_runs(where: str, code: str, tmp_path: Path) -> None:
    header = _HEADER.match(code.splitlines()[0])
    module = header.group(1).replace("/", ".") if header else "snippet"
    path = tmp_path / (module.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEM_")}
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", _RUNNER, module],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, f"{where}:\n{code}\n{done.stderr}"
