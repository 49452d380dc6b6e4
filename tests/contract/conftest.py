"""The contract tests' shared suites (_redis_suites.py) are importable by name: the
project imports test modules with --import-mode=importlib, which puts no test folder
on the path."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
