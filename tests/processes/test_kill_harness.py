"""The kill loop's counting: which runs of a task overlapped, read from the runs file."""

from __future__ import annotations

from pathlib import Path

import pytest
from kill_harness import overlapping, read_runs


def runs_of(tmp_path: Path, *lines: str) -> list[bool]:
    path = tmp_path / "runs.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return [overlapping(runs) for runs in read_runs(path).values()]


@pytest.mark.parametrize(
    ("lines", "concurrent"),
    [
        # run once
        (["start t 10 1", "finish t 10 1"], False),
        # run twice, one after the other: at-least-once at work, no harm
        (["start t 10 1", "finish t 10 1", "start t 20 2", "finish t 20 2"], False),
        # a second worker started it while the first still ran it
        (["start t 10 1", "start t 20 2", "finish t 20 2", "finish t 10 1"], True),
        # killed mid-run, then redelivered
        (["start t 10 1", "killed - 10 0", "start t 20 2", "finish t 20 2"], False),
        # a process-pool child died with its killed parent, then redelivered
        (["start t 11 1", "killed - 1 0", "start t 21 2", "finish t 21 2"], False),
        # an orphaned child went on and finished after the redelivered copy started
        (["start t 11 1", "killed - 1 0", "start t 21 2", "finish t 11 1", "finish t 21 2"], True),
        # never finished, never killed: it may still run, so a later start overlaps
        (["start t 10 1", "start t 20 2", "finish t 20 2"], True),
    ],
)
def test_runs_overlap_when_one_starts_before_another_process_run_ended(
    tmp_path: Path, lines: list[str], concurrent: bool
) -> None:
    assert runs_of(tmp_path, *lines) == [concurrent]


def test_the_runs_of_each_task_are_kept_apart(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    path.write_text("start a 10 1\nstart b 10 1\nfinish b 10 1\nfinish a 10 1\n")
    runs = read_runs(path)
    assert {t: [(r.start, r.finish) for r in rs] for t, rs in runs.items()} == {
        "a": [(0, 3)],
        "b": [(1, 2)],
    }
