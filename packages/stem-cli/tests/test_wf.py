"""``stem wf``: starting, inspecting and steering workflow runs on a SQLite file, and
checking that exported runs still replay against the code."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from stem import Stem
from stem.contracts import RunStatus, WorkflowRun
from stem_cli import cli
from stem_cli._loading import load_app

pytestmark = pytest.mark.sqlite

SHOP = """
from stem import Stem, StepRetry, WorkflowContext

def make_app():
    app = Stem.from_url({url!r})

    async def charge(order_id: str) -> dict:
        return {{"charged": order_id}}

    async def decline(order_id: str) -> None:
        raise ValueError(f"card declined for order {{order_id}}")

    @app.workflow(name="orders.checkout")
    async def checkout(wf: WorkflowContext, order_id: str, amount: int = 1) -> str:
        receipt = await wf.step({step!r}, charge, order_id)
        shipped = await wf.wait_for_event(f"shipped.{{order_id}}")
        return f"{{receipt['charged']}} x{{amount}} via {{shipped['carrier']}}"

    @app.workflow(name="orders.quick", queue="fast")
    async def quick(wf: WorkflowContext, order_id: str) -> dict:
        return await wf.step("charge", charge, order_id)

    @app.workflow(name="orders.declined")
    async def declined(wf: WorkflowContext, order_id: str) -> None:
        await wf.step("charge", decline, order_id)

    flow = app.flow("orders.poll", max_run_duration=3600)

    @flow.step("fetch")
    async def fetch(ctx) -> int:
        return 1

    return app
"""

Invoke = Callable[..., Result]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'stem.db'}"


@pytest.fixture
def project(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``wf_shop`` (the app) and ``wf_shop_changed`` (its step 'charge' renamed 'bill')."""
    (tmp_path / "wf_shop.py").write_text(textwrap.dedent(SHOP.format(url=url, step="charge")))
    (tmp_path / "wf_shop_changed.py").write_text(textwrap.dedent(SHOP.format(url=url, step="bill")))
    for name in ("wf_shop", "wf_shop_changed"):  # each test's own file, not a cached one
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def stem(project: Path) -> Invoke:
    """``stem wf ARGS --app wf_shop:make_app``, with no STEM_* from the environment."""

    def invoke(*args: str, app: str | None = "wf_shop:make_app") -> Result:
        runner = CliRunner(env={"STEM_URL": None, "STEM_APP": None, "NO_COLOR": None})
        command = ["wf", *args] + (["--app", app] if app else [])
        return runner.invoke(cli, command, catch_exceptions=False)

    return invoke


def data(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def start(stem: Invoke, *args: str, app: str | None = "wf_shop:make_app") -> str:
    return str(data(stem("start", *args, "--json", app=app))["run_id"])


@pytest.fixture
async def app(project: Path) -> AsyncIterator[Stem]:
    """The same app in this process, for a worker (the commands build their own)."""
    subject = load_app("wf_shop:make_app")
    yield subject
    await subject.aclose()


async def until(app: Stem, run_id: str, ok: Callable[[WorkflowRun], bool]) -> WorkflowRun:
    """The run once ``ok`` holds for it, woken by the store's change notices."""
    async with asyncio.timeout(30):
        while True:
            run = await app.workflow_store.get_run(run_id)
            if run is not None and ok(run):
                return run
            await app.workflow_store.wait_for_change(run_id, 1.0)


def suspended(run: WorkflowRun) -> bool:
    return run.status is RunStatus.SUSPENDED


async def astart(stem: Invoke, *args: str) -> str:
    return str(data(await in_thread(stem, "start", *args, "--json"))["run_id"])


async def in_thread(stem: Invoke, *args: str, app: str | None = "wf_shop:make_app") -> Result:
    """A command while this loop runs a worker (each command runs its own loop)."""
    return await asyncio.to_thread(stem, *args, app=app)


# -- start, list, show ---------------------------------------------------------------------


def test_start_by_name_with_params_then_list_and_show(stem: Invoke) -> None:
    run_id = start(stem, "orders.checkout", "-p", "order_id=7", "--param", "amount:=3")
    shown = data(stem("show", run_id, "--json"))
    assert set(shown) == {"run", "steps", "watchers"}
    assert shown["run"]["params"] == {"order_id": "7", "amount": 3}
    assert shown["run"]["status"] == "pending" and shown["run"]["workflow"] == "orders.checkout"
    assert {"result", "error", "wake_at", "lease_owner", "policy", "parent_id"} <= set(
        shown["run"]
    )  # every field, defaults too

    listed = data(stem("list", "--json"))
    assert [run["id"] for run in listed] == [run_id]
    table = stem("list")
    assert table.exit_code == 0
    header, _rule, row = table.stdout.splitlines()
    assert header.split()[:3] == ["RUN", "ID", "WORKFLOW"]
    assert row.split()[:3] == [run_id, "orders.checkout", "pending"]
    assert "\x1b[" not in table.output  # no colour off a terminal

    text = stem("show", run_id).stdout
    assert f"run:       {run_id}" in text
    assert 'params:    {"order_id":"7","amount":3}' in text and "no steps recorded" in text


def test_start_with_params_json_and_run_id(stem: Invoke) -> None:
    run_id = start(
        stem, "orders.checkout", "--params", '{"order_id": "8", "amount": 2}', "--run-id", "o-8"
    )
    assert run_id == "o-8"
    again = stem("start", "orders.checkout", "--params", '{"order_id": "8"}', "--run-id", "o-8")
    assert again.exit_code == 1 and "DuplicateRunError" in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--params", '{"order_id": 8'], "--params: not JSON"),
        (["--params", "[1, 2]"], "expected a JSON object of parameters, not list"),
        (["-p", "order_id"], "use KEY=TEXT, or KEY:=JSON"),
        (["-p", "order_id=1", "-p", "amount:=many"], "--param amount: not JSON"),
        (["-p", "order_id=1", "-p", "amount=many"], "argument 'amount'"),
        (["-p", "amount:=1"], "order_id"),
        (["-p", "order_id=1", "--timeout", "3"], "--timeout goes with --wait"),
    ],
)
def test_bad_start_options_exit_2(stem: Invoke, args: list[str], message: str) -> None:
    result = stem("start", "orders.checkout", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert data(stem("list", "--json")) == []  # nothing was stored


def test_an_unknown_workflow_of_the_app_exits_3(stem: Invoke) -> None:
    result = stem("start", "orders.nope")
    assert result.exit_code == 3
    assert "registers no workflow 'orders.nope'" in result.output
    assert "orders.checkout" in result.output  # what it could have been


def test_with_url_only_a_run_is_stored_by_name(stem: Invoke, url: str) -> None:
    """No app to check against: the run is stored as given, for a worker to check."""
    run_id = start(stem, "billing.elsewhere", "-p", "n:=1", "--url", url, app=None)
    listed = data(stem("list", "--json", "--url", url, app=None))
    assert [(r["id"], r["workflow"], r["params"]) for r in listed] == [
        (run_id, "billing.elsewhere", {"n": 1})
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["show", "missing"],
        ["cancel", "missing"],
        ["rewind", "missing", "charge"],
        ["send", "missing", "shipped.1"],
    ],
)
def test_an_unknown_run_exits_3(stem: Invoke, args: list[str]) -> None:
    result = stem(*args)
    assert result.exit_code == 3, result.output
    assert "there is no workflow run 'missing'" in result.output


def test_an_app_or_store_that_cannot_be_used_exits_2_or_1(stem: Invoke, tmp_path: Path) -> None:
    missing = stem("list", app="wf_missing:app")
    assert missing.exit_code == 2 and "cannot import 'wf_missing'" in missing.output
    scheme = stem("list", "--url", "bogus://x", app=None)
    assert scheme.exit_code == 2 and "no Stem adapter handles bogus://" in scheme.output
    away = stem("list", "--url", f"sqlite:///{tmp_path}", app=None)  # a directory
    assert away.exit_code == 1 and "AdapterError" in away.output
    assert "Traceback" not in away.output
    assert "Traceback" in stem("list", "-v", "--url", f"sqlite:///{tmp_path}", app=None).output


def test_list_filters_and_pages(stem: Invoke) -> None:
    first = start(stem, "orders.checkout", "-p", "order_id=1")
    quick = start(stem, "orders.quick", "-p", "order_id=2")
    third = start(stem, "orders.checkout", "-p", "order_id=3")
    assert start(stem, "orders.checkout", "-p", "order_id=4")
    assert data(stem("cancel", first, "--json"))["status"] == "cancelled"

    ids = [r["id"] for r in data(stem("list", "--json", "--workflow", "orders.quick"))]
    assert ids == [quick]
    ids = [r["id"] for r in data(stem("list", "--json", "--status", "CANCELLED"))]
    assert ids == [first]
    page = data(stem("list", "--json", "--limit", "2", "--offset", "1"))
    assert [r["id"] for r in page] == [quick, third]
    table = stem("list", "--limit", "2", "--offset", "1")
    assert [row.split()[0] for row in table.stdout.splitlines()[2:]] == [quick, third]
    assert "more runs may follow: --offset 3" in table.stderr
    assert stem("list", "--status", "lost").exit_code == 2
    assert stem("list", "--status", "completed").stdout.strip() == "no runs"


def test_cancel_keeps_the_reason_and_an_ended_run_exits_1(stem: Invoke) -> None:
    run_id = start(stem, "orders.checkout", "-p", "order_id=5")
    done = stem("cancel", run_id, "--reason", "customer asked")
    assert done.exit_code == 0 and f"cancelled run {run_id}: customer asked" in done.stdout
    run = data(stem("show", run_id, "--json"))["run"]
    assert run["status"] == "cancelled" and run["error"]["message"] == "customer asked"
    again = stem("cancel", run_id)
    assert again.exit_code == 1 and "has already ended (cancelled)" in again.output
    assert stem("send", run_id, "shipped.5").exit_code == 1
    assert "customer asked" in stem("list").stdout


def test_workflows_lists_kind_queue_and_policy(stem: Invoke) -> None:
    rows = {row["name"]: row for row in data(stem("workflows", "--json"))}
    assert rows["orders.checkout"] == {
        "name": "orders.checkout",
        "kind": "script",
        "queue": "default",
        "policy": None,
        "steps": None,
    }
    assert rows["orders.quick"]["queue"] == "fast"
    assert rows["orders.poll"]["kind"] == "flow" and rows["orders.poll"]["steps"] == ["fetch"]
    assert rows["orders.poll"]["policy"]["max_run_duration"] == 3600
    table = stem("workflows").stdout
    assert "orders.poll" in table and "max_run_duration=3600 s" in table
    needs = stem("workflows", app=None)
    assert needs.exit_code == 2 and "needs --app" in needs.output


def test_the_json_of_every_command_is_json(stem: Invoke) -> None:
    assert data(stem("watchers", "--json")) == []
    assert data(stem("emit", "nobody.listens", "--payload", "{}", "--json")) == {
        "topic": "nobody.listens",
        "resumed": [],
    }
    assert stem("emit", "nobody.listens").stdout.strip() == "no run waits on 'nobody.listens'"
    assert stem("emit", "t", "--payload", "{oops").exit_code == 2


# -- with a worker: events, rewind, waits ----------------------------------------------------


async def test_emit_resumes_the_runs_waiting_on_the_topic(stem: Invoke, app: Stem) -> None:
    async with app.worker(concurrency=4):
        run_id = await astart(stem, "orders.checkout", "-p", "order_id=9", "-p", "amount:=2")
        await until(app, run_id, suspended)

        waiting = data(await in_thread(stem, "watchers", "--json", "--topic", "shipped.9"))
        assert [(w["run_id"], w["topic"]) for w in waiting] == [(run_id, "shipped.9")]
        assert run_id in (await in_thread(stem, "watchers")).stdout
        assert "waiting for 'shipped.9'" in (await in_thread(stem, "list")).stdout

        emitted = await in_thread(stem, "emit", "shipped.9", "--payload", '{"carrier": "ups"}')
        assert emitted.exit_code == 0 and run_id in emitted.stdout
        outcome = await app.wait_for_workflow(run_id, timeout=30)
    assert outcome.ok and outcome.value == "9 x2 via ups"
    assert data(await in_thread(stem, "watchers", "--json")) == []


async def test_send_resumes_one_run_or_keeps_the_event_for_it(stem: Invoke, app: Stem) -> None:
    early = await astart(stem, "orders.checkout", "-p", "order_id=1")
    kept = await in_thread(stem, "send", early, "shipped.1", "--payload", '{"carrier": "dhl"}')
    assert kept.exit_code == 0 and "kept 'shipped.1'" in kept.stdout  # no worker yet
    async with app.worker(concurrency=4):
        late = await astart(stem, "orders.checkout", "-p", "order_id=2")
        await until(app, late, suspended)
        sent = await in_thread(
            stem, "send", late, "shipped.2", "--payload", '{"carrier": "ups"}', "--json"
        )
        assert data(sent) == {"run_id": late, "topic": "shipped.2", "delivered": True}
        assert (await app.wait_for_workflow(late, timeout=30)).value == "2 x1 via ups"
        assert (await app.wait_for_workflow(early, timeout=30)).value == "1 x1 via dhl"


async def test_show_lists_the_steps_in_order_and_rewind_runs_them_again(
    stem: Invoke, app: Stem
) -> None:
    async with app.worker(concurrency=4):
        run_id = await astart(stem, "orders.checkout", "-p", "order_id=3")
        await until(app, run_id, suspended)
        await in_thread(stem, "emit", "shipped.3", "--payload", '{"carrier": "post"}')
        await app.wait_for_workflow(run_id, timeout=30)

        shown = data(await in_thread(stem, "show", run_id, "--json"))
        assert shown["run"]["status"] == "completed" and shown["run"]["result"] == "3 x1 via post"
        steps = [(s["position"], s["name"], s["kind"], s["attempts"]) for s in shown["steps"]]
        assert steps == [(0, "charge", "step", 1), (1, "event:shipped.3", "event", 1)]
        text = (await in_thread(stem, "show", run_id)).stdout
        lines = text.splitlines()
        charge = next(
            i for i, line in enumerate(lines) if line.split()[:3] == ["0", "charge", "step"]
        )
        assert lines[charge + 1].split()[:3] == ["1", "event:shipped.3", "event"]
        assert '{"charged":"3"}' in lines[charge] and "result:   " in text

        bad = await in_thread(stem, "rewind", run_id, "ship")
        assert bad.exit_code == 3 and "its steps: charge, event:shipped.3" in bad.output
        rewound = await in_thread(stem, "rewind", run_id, "event:shipped.3")
        assert rewound.exit_code == 0 and "rewound run" in rewound.stdout
        run = await until(app, run_id, suspended)  # waiting for its event again
        assert run.wait_topic == "shipped.3" and run.cursor == 1 and run.result is None


async def test_start_wait_exits_0_on_completion_and_1_on_failure(stem: Invoke, app: Stem) -> None:
    async with app.worker(queues=["default", "fast"], concurrency=4):
        done = await in_thread(stem, "start", "orders.quick", "-p", "order_id=4", "--wait")
        assert done.exit_code == 0, done.output
        assert 'completed: {"charged":"4"}' in done.stdout
        failed = await in_thread(
            stem, "start", "orders.declined", "-p", "order_id=5", "--wait", "--json"
        )
        assert failed.exit_code == 1
        outcome = json.loads(failed.stdout)
        assert outcome["status"] == "failed" and outcome["error"]["type"] == "ValueError"
        assert "card declined for order 5" in outcome["error"]["message"]
        waited = await in_thread(
            stem, "start", "orders.checkout", "-p", "order_id=6", "--wait", "--timeout", "0.2"
        )
        assert waited.exit_code == 1 and "stem wf show" in waited.stderr

    text = (await in_thread(stem, "show", outcome["run_id"])).stdout
    assert "status:   failed" in text and "error:    ValueError:" in text
    assert "Traceback" in text and 'raise ValueError(f"card declined' in text


# -- export and replay checks ----------------------------------------------------------------


async def test_export_then_replay_check_catches_a_renamed_step(
    stem: Invoke, app: Stem, tmp_path: Path
) -> None:
    async with app.worker(queues=["default", "fast"], concurrency=4):
        waiting = await astart(stem, "orders.checkout", "-p", "order_id=7")
        done = await astart(stem, "orders.quick", "-p", "order_id=8")
        await until(app, waiting, suspended)
        await app.wait_for_workflow(done, timeout=30)

    exported = tmp_path / "runs.jsonl"
    result = await in_thread(stem, "export", "-o", str(exported))
    assert result.exit_code == 0 and "exported 2 run(s)" in result.stderr
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [(line["run"]["id"], [s["name"] for s in line["steps"]]) for line in lines] == [
        (waiting, ["charge"]),
        (done, ["charge"]),
    ]

    same = await in_thread(stem, "replay-check", "--from", str(exported))
    assert same.exit_code == 0, same.output
    assert same.stdout.splitlines()[0].split()[:3] == ["ok", waiting, "orders.checkout"]
    assert "1 run(s) checked, 0 failed; 1 not selected" in same.stdout  # the completed one
    every = data(await in_thread(stem, "replay-check", "--from", str(exported), "--all", "--json"))
    assert (every["checked"], every["failed"]) == (2, 0)
    assert data(await in_thread(stem, "replay-check", "--json"))["checked"] == 1  # from the store

    changed = await in_thread(
        stem, "replay-check", "--from", str(exported), app="wf_shop_changed:make_app"
    )
    assert changed.exit_code == 1
    (line,) = [line for line in changed.stdout.splitlines() if waiting in line]
    assert line.startswith("mismatch") and "'charge'" in line and "'bill'" in line
    report = data(
        await in_thread(
            stem, "replay-check", "--json", "--workflow", "orders.checkout", app="wf_shop:make_app"
        )
    )
    assert report["runs"][0]["outcome"] == "ok"


def test_replay_check_usage(stem: Invoke, tmp_path: Path, url: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"run": {"id": 1}}\n')
    result = stem("replay-check", "--from", str(bad))
    assert result.exit_code == 2 and "line 1 of" in result.output
    assert stem("replay-check", app=None).exit_code == 2
    both = stem("replay-check", "--from", str(bad), "--url", url)
    assert both.exit_code == 2 and "leave out --url" in both.output
    empty = stem("replay-check")
    assert empty.exit_code == 0 and "0 run(s) checked" in empty.stdout
