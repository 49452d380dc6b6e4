"""The kill -9 harness lives with the soak tool (tools/soak/kill_harness.py); the suite runs it shorter."""

from __future__ import annotations

import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "tools" / "soak"
if str(SOAK) not in sys.path:
    sys.path.insert(0, str(SOAK))
