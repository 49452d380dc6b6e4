"""One repetition of one system of the workflow benchmark, in a process of its own.

    python tools/bench/_wf_run.py PLAN.json OUT.json

Writes ``{"ok": true, "run": {...}}`` to OUT.json, or ``{"ok": false, "reason": ...}``
(with ``"missing": true`` when the system is not installed), so that the harness prints
a row saying why instead of stopping.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import BenchError
from _wf_common import MODULES, NotInstalled, WfPlan


def run_one(plan: WfPlan) -> dict[str, Any]:
    module = importlib.import_module(MODULES[plan.system])
    workdir = Path(plan.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run = module.run(plan, workdir)
    except NotInstalled as exc:
        return {"ok": False, "missing": True, "reason": str(exc)}
    except BenchError as exc:
        return {"ok": False, "reason": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        return {"ok": False, "reason": f"failed: {type(exc).__name__}: {exc}"}
    return {"ok": True, "run": dataclasses.asdict(run)}


def main() -> int:
    plan_path, out_path = sys.argv[1:3]
    logging.basicConfig(level=logging.WARNING)
    plan = WfPlan.from_json(json.loads(Path(plan_path).read_text()))
    Path(out_path).write_text(json.dumps(run_one(plan)))
    return 0


if __name__ == "__main__":
    os.environ.pop("STEM_URL", None)  # the harness names every URL itself
    sys.exit(main())
