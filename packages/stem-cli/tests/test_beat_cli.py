"""``stem schedule``: listing, adding, switching, removing beat entries and their
coming firings, on a SQLite file; bad input and the exit codes."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from stem_cli import cli

pytestmark = pytest.mark.sqlite

SHOP = """
from stem import Interval, Stem

app = Stem.from_url({url!r})

@app.task(name="reports.send")
async def send(report: str = "daily") -> None: ...

app.schedule("digest", Interval(60), send, args=["weekly"])
"""

Invoke = Callable[..., Result]


@pytest.fixture
def stem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """``stem schedule ARGS --app beat_shop:app``, with no STEM_* from the environment."""
    url = f"sqlite:///{tmp_path / 'stem.db'}"
    (tmp_path / "beat_shop.py").write_text(textwrap.dedent(SHOP.format(url=url)))
    monkeypatch.delitem(sys.modules, "beat_shop", raising=False)
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str, app: str | None = "beat_shop:app") -> Result:
        runner = CliRunner(env={"STEM_URL": None, "STEM_APP": None, "NO_COLOR": None})
        where = ["--app", app] if app else ["--url", url]
        return runner.invoke(cli, ["schedule", *args, *where], catch_exceptions=False)

    return invoke


def data(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_add_list_show_and_next(stem: Invoke) -> None:
    added = data(
        stem(
            "add",
            "nightly",
            "--task",
            "reports.send",
            "--cron",
            "30 2 * * *",
            "--tz",
            "America/New_York",
            "--args",
            '["nightly"]',
            "--json",
        )
    )
    assert (added["kind"], added["spec"]) == (
        "cron",
        {"expr": "30 2 * * *", "tz": "America/New_York"},
    )
    assert added["args"] == ["nightly"] and added["meta"]["stem.source"] == "cli"
    ny = ZoneInfo("America/New_York")
    assert datetime.fromtimestamp(added["next_run_at"], ny).strftime("%H:%M") in ("02:30", "03:00")
    data(
        stem(
            "add",
            "sun",
            "--task",
            "reports.send",
            "--solar",
            "sunrise",
            "--lat",
            "69.65",
            "--lon",
            "18.96",
            "--tz",
            "Europe/Oslo",
            "--json",
        )
    )
    data(
        stem("add", "once", "--task", "reports.send", "--at", "2099-01-01T09:00:00+01:00", "--json")
    )
    listed = data(stem("list", "--json"))
    assert [e["id"] for e in listed] == ["nightly", "sun", "once"]
    table = stem("list")
    assert table.exit_code == 0
    assert "cron 30 2 * * * (America/New_York)" in table.output
    assert "sunrise at 69.65, 18.96 (Europe/Oslo)" in table.output
    shown = stem("show", "nightly")
    assert shown.exit_code == 0 and 'reports.send("nightly")' in shown.output
    coming = data(stem("next", "nightly", "-n", "3", "--json"))["next"]
    assert len(coming) == 3 and coming[1] - coming[0] in (86400.0, 84600.0, 88200.0)
    assert data(stem("next", "once", "-n", "3", "--json"))["next"] == [
        datetime.fromisoformat("2099-01-01T09:00:00+01:00").timestamp()
    ]


def test_enable_disable_remove(stem: Invoke) -> None:
    data(stem("add", "tick", "--task", "reports.send", "--every", "30", "--json"))
    off = data(stem("disable", "tick", "--json"))
    assert off["enabled"] is False
    assert "already" in stem("disable", "tick").output
    on = data(stem("enable", "tick", "--json"))
    assert on["enabled"] is True and on["next_run_at"] is not None
    assert stem("remove", "tick").exit_code == 0
    assert stem("show", "tick").exit_code == 3
    assert stem("remove", "tick").exit_code == 3
    assert stem("enable", "tick").exit_code == 3


def test_add_refuses_what_would_fail_and_names_it(stem: Invoke) -> None:
    cases = [
        (["--task", "reports.nope", "--every", "5"], 2, "'reports.nope' is not registered"),
        (["--task", "reports.send", "--cron", "61 * * * *"], 2, "invalid cron expression"),
        (
            ["--task", "reports.send", "--cron", "0 9 * * *", "--tz", "Mars/Base"],
            2,
            "unknown time zone",
        ),
        (["--task", "reports.send", "--at", "2099-01-01T09:00:00"], 2, "naive"),
        (
            ["--task", "reports.send", "--solar", "sunrise", "--lat", "91", "--lon", "0"],
            2,
            "-90 to 90",
        ),
        (["--task", "reports.send", "--solar", "sunrise"], 2, "needs --lat and --lon"),
        (["--task", "reports.send"], 2, "give one of --every"),
        (
            ["--task", "reports.send", "--every", "5", "--cron", "* * * * *"],
            2,
            "not --every and --cron",
        ),
        (["--task", "reports.send", "--every", "5", "--args", "[1, 2, 3]"], 2, "ArgumentError"),
        (["--task", "reports.send", "--every", "5", "--args", "{"], 2, "not JSON"),
        (
            ["--task", "reports.send", "--every", "5", "--jitter", "5"],
            2,
            "shorter than the interval",
        ),
    ]
    for args, code, message in cases:
        result = stem("add", "x", *args)
        assert result.exit_code == code, (args, result.output)
        assert message in result.output, (args, result.output)
    assert data(stem("list", "--json")) == []


def test_add_without_the_app_takes_any_task_and_an_existing_id_needs_replace(
    stem: Invoke,
) -> None:
    added = data(
        stem("add", "remote", "--task", "billing.close", "--every", "60", "--json", app=None)
    )
    assert added["task"] == "billing.close"
    again = stem("add", "remote", "--task", "billing.close", "--every", "30", app=None)
    assert again.exit_code == 1 and "--replace" in again.output
    replaced = data(
        stem(
            "add",
            "remote",
            "--task",
            "billing.close",
            "--every",
            "30",
            "--replace",
            "--json",
            app=None,
        )
    )
    assert replaced["spec"] == {"every": 30.0} and replaced["version"] == 2
