"""The Stem worker."""

from __future__ import annotations

from ._job import Terminated
from ._worker import Worker

__all__ = ["Terminated", "Worker"]
