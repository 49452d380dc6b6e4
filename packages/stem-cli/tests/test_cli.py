"""The stem command: loading apps, option parsing, the demo, a worker process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from stem import Stem
from stem_cli import cli
from stem_cli._demo import _Progress
from stem_cli._loading import AppLoadError, load_app
from stem_cli._main import _concurrency


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "cli_tasks.py").write_text(
        textwrap.dedent(
            """
            from stem import Stem
            app = Stem.from_url("memory://cli-tests")
            not_an_app = 42

            def make_app():
                return app

            @app.task(name="cli.echo")
            async def echo(x: int) -> int:
                return x

            @app.task(name="cli.relay")
            async def relay(x: int) -> str:
                # enqueues through the module's app: --url must reach this too
                return await echo.enqueue(x)

            def broken_factory():
                raise RuntimeError("no config file")
            """
        )
    )
    (tmp_path / "cli_typo.py").write_text(
        "from stem import Stem\n\napp = Stem.from_url(undefined_url)\n"
    )
    (tmp_path / "cli_needs.py").write_text("import not_installed_anywhere\n")
    (tmp_path / "cli_exits.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_load_app_by_attribute_and_factory(project: Path) -> None:
    assert load_app("cli_tasks:app") is load_app("cli_tasks:make_app")
    assert load_app("cli_tasks") is load_app("cli_tasks:app")  # the default attribute


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing_module:app", "cannot import 'missing_module': there is no module"),
        ("cli_tasks:nope", "has no attribute 'nope'"),
        ("cli_tasks:not_an_app", "is a int, not a stem.Stem app"),
        (":app", "expected module:attribute"),
        (
            "cli_typo",
            r"importing 'cli_typo' failed: NameError: .*undefined_url.*cli_typo.py, line 3",
        ),
        (
            "cli_needs",
            "importing 'cli_needs' failed: ModuleNotFoundError: .*not_installed_anywhere",
        ),
        ("cli_exits", "importing 'cli_exits' failed: SystemExit: exit code 3"),
        (
            "cli_tasks:broken_factory",
            "calling broken_factory.. failed: RuntimeError: no config file",
        ),
    ],
)
def test_load_app_errors_say_what_is_wrong(project: Path, spec: str, message: str) -> None:
    with pytest.raises(AppLoadError, match=message) as info:
        load_app(spec)
    assert info.value.exit_code == 2 and "\n" not in info.value.message


@pytest.mark.parametrize(
    "spec", ["missing_module:app", "cli_typo:app", "cli_needs", "cli_exits", "cli_tasks:nope"]
)
def test_worker_with_an_app_that_does_not_load_exits_2_with_one_line(
    project: Path, spec: str
) -> None:
    result = CliRunner().invoke(cli, ["worker", "--app", spec])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: --app {spec}")


@pytest.mark.parametrize("flag", [["--verbose"], ["-v"], ["-l", "debug"], ["--loglevel", "DEBUG"]])
def test_the_traceback_of_a_loading_error_is_shown_when_asked_for(
    project: Path, flag: list[str]
) -> None:
    result = CliRunner().invoke(cli, ["worker", "--app", "cli_typo", *flag])
    assert result.exit_code == 2
    assert "Traceback" in result.output and "NameError" in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: --app cli_typo")


def test_pool_async_is_refused_with_the_reason(project: Path) -> None:
    result = CliRunner().invoke(cli, ["worker", "--app", "cli_tasks:app", "--pool", "async"])
    assert result.exit_code == 2
    assert "async handlers always run on the worker's event loop" in result.output
    result = CliRunner().invoke(cli, ["worker", "--app", "cli_tasks:app", "--pool", "fork"])
    assert result.exit_code == 2 and "use thread or process" in result.output
    assert "thread|process" in CliRunner().invoke(cli, ["worker", "--help"]).output


def _leaves(group: click.Group) -> list[click.Command]:
    """The commands of a group, those of its subgroups (``stem wf ...``) included."""
    found: list[click.Command] = []
    for command in group.commands.values():
        found += _leaves(command) if isinstance(command, click.Group) else [command]
    return found


def test_every_command_takes_url_from_the_option_or_stem_url() -> None:
    for command in _leaves(cli):
        params = {p.name: p for p in command.params}
        assert "url" in params, command.name
        assert isinstance(params["url"], click.Option) and params["url"].envvar == "STEM_URL"


async def test_use_url_moves_the_app_and_its_handles(project: Path) -> None:
    app = load_app("cli_tasks:app")
    original = app.broker
    try:
        await app.use_url("memory://cli-moved")
        moved = Stem.from_url("memory://cli-moved")
        assert app.broker is moved.broker and app.backend is moved.backend
        assert app.lock_store is moved.lock_store and app.revoke_store is moved.revoke_store
        assert app.unique.locks is moved.lock_store and app.url == "memory://cli-moved"
        ref = await app.tasks["cli.echo"].enqueue(1)  # a task handle enqueues on the new broker
        assert (await moved.broker.queue_stats("default")).pending == 1
        assert ref
    finally:
        await app.use_url("memory://cli-tests")
    assert app.broker is original


@pytest.mark.parametrize(("text", "parsed"), [("8", 8), ("2-16", (2, 16)), (" 3 - 3 ", 3)])
def test_concurrency_forms(text: str, parsed: object) -> None:
    assert _concurrency(text) == parsed


@pytest.mark.parametrize("text", ["0", "8-2", "lots", "2-"])
def test_bad_concurrency(text: str) -> None:
    with pytest.raises(click.BadParameter):
        _concurrency(text)


def test_demo_on_memory() -> None:
    result = CliRunner().invoke(cli, ["demo", "--url", "memory://", "-n", "200"])
    assert result.exit_code == 0, result.output
    assert "200/200 additions succeeded" in result.output
    assert "charged on attempt 3" in result.output
    assert "Expected failures" in result.output
    assert "refused at enqueue: argument 'a' of task 'demo.add'" in result.output
    assert "dead-lettered (bad-arguments)" in result.output
    assert "Everything behaved as expected." in result.output


def test_demo_on_a_url_no_adapter_serves_exits_2_with_one_line() -> None:
    result = CliRunner().invoke(cli, ["demo", "--url", "postgresql://localhost/stem"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "PostgreSQL support is not released yet" in line


def test_demo_help_matches_its_default() -> None:
    text = CliRunner().invoke(cli, ["demo", "--help"]).output
    assert "1,000 tasks" in text and "few thousand" not in text
    assert "default: 1000" in text
    assert CliRunner().invoke(cli, ["demo", "-n", "0"]).exit_code == 2


@pytest.mark.processes
def test_demo_prints_nothing_on_stderr(tmp_path: Path) -> None:
    """The deliberate bad call is reported in the demo's output, not as a worker error."""
    done = subprocess.run(
        [sys.executable, "-m", "stem_cli", "demo", "-n", "50"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("STEM_")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert "dead-lettered (bad-arguments)" in done.stdout
    assert (tmp_path / ".stem" / "stem.db").exists()  # the embedded default


@pytest.mark.parametrize("live", [False, True])
async def test_demo_progress(live: bool) -> None:
    lines: list[str] = []
    shown = asyncio.Event()

    def echo(text: str, nl: bool = True) -> None:
        lines.append(text)
        shown.set()

    progress = _Progress(20_000, echo=echo, every=0)
    progress.live = live
    async with progress.showing():
        await asyncio.wait_for(shown.wait(), 5)
        shown.clear()
        progress.enqueued, progress.done = True, 5_000
        while "5,000/20,000" not in lines[-1]:
            await asyncio.wait_for(shown.wait(), 5)
            shown.clear()
    if live:
        assert lines[0] == "\r\033[K  enqueueing 20,000 tasks"
        assert lines[-2] == "\r\033[K  5,000/20,000 results in" and lines[-1] == "\r\033[K"
    else:
        assert lines[0] == "  enqueueing 20,000 tasks"
        assert lines[-1] == "  5,000/20,000 results in"


@pytest.mark.processes
def test_worker_process_stops_cleanly_on_sigterm(project: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "stem_cli", "worker", "--app", "cli_tasks:app", "-c", "2"],
        cwd=project,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:  # wait for the worker to say it is consuming
            if "ready" in line or "consuming" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
        proc.wait()
    assert "SIGTERM: finishing running tasks" in rest and "stopped" in rest


@pytest.fixture
def other_db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'elsewhere' / 'stem.db'}"


@pytest.mark.processes
@pytest.mark.parametrize("via", ["option", "env"])
async def test_worker_url_runs_the_apps_tasks_on_that_broker(
    project: Path, other_db: str, via: str
) -> None:
    """cli_tasks:app is built on memory://; --url (or STEM_URL) moves it, handlers included."""
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("STEM_")}
    command = [sys.executable, "-m", "stem_cli", "worker", "--app", "cli_tasks:app", "-c", "2"]
    if via == "option":
        command += ["--url", other_db]
    else:
        env["STEM_URL"] = other_db
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=project,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    producer = Stem.from_url(other_db)
    try:
        relayed = await producer.wait_for_task(await producer.enqueue("cli.relay", [7]), timeout=60)
        assert relayed.succeeded, relayed
        echoed = await producer.wait_for_task(str(relayed.value), timeout=60)
        assert echoed.succeeded and echoed.value == 7
    finally:
        await producer.aclose()
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        assert await asyncio.wait_for(proc.wait(), 30) == 0, log
    assert f"broker:      {other_db}" in log or other_db in log
