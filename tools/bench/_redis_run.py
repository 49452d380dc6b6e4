"""One repetition of one system of the Redis benchmark, in a process of its own.

    python tools/bench/_redis_run.py SYSTEM PLAN.json OUT.json

Writes ``{"ok": true, "figures": {...}}`` to OUT.json, or ``{"ok": false, "reason": ...}``
when the system is not installed or fails, so that the harness prints a row saying why
instead of stopping. The drain rate is computed here, from the tasks' own timestamps.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import BenchError, steady_rate
from _redis_common import MODULES, NotInstalled, PeerRun, RedisPlan


def figures(run: PeerRun) -> dict[str, Any]:
    out: dict[str, Any] = {"version": run.version, "note": run.note}
    if run.enqueue_one is not None:
        out["enqueue_one"] = run.enqueue_one
    if run.enqueue_batched is not None:
        out["enqueue_batched"] = run.enqueue_batched
    if run.drain_stamps:
        out["drain"] = steady_rate(run.drain_stamps)
        out["drain_tasks"] = len(run.drain_stamps)
    if run.round_trips:
        out["round_trips"] = run.round_trips
    return out


def run_one(system: str, plan: RedisPlan) -> dict[str, Any]:
    module = importlib.import_module(MODULES[system])
    workdir = Path(plan.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run = module.run(plan, workdir)
    except ImportError as exc:
        return {
            "ok": False,
            "missing": True,
            "reason": f"{module.DIST} is not installed ({exc}); run with "
            "`uv run --group bench-redis`",
        }
    except NotInstalled as exc:
        return {"ok": False, "missing": True, "reason": str(exc)}
    except BenchError as exc:
        return {"ok": False, "reason": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        return {"ok": False, "reason": f"failed: {type(exc).__name__}: {exc}"}
    return {"ok": True, "figures": figures(run)}


def main() -> int:
    system, plan_path, out_path = sys.argv[1:4]
    logging.basicConfig(level=logging.WARNING)
    plan = RedisPlan.from_json(json.loads(Path(plan_path).read_text()))
    result = run_one(system, plan)
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.pop("STEM_URL", None)  # the harness names every URL itself
    sys.exit(main())
