"""The stem command: loading apps, option parsing, the demo, a worker process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from stem_cli import cli
from stem_cli._loading import load_app
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
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_load_app_by_attribute_and_factory(project: Path) -> None:
    assert load_app("cli_tasks:app") is load_app("cli_tasks:make_app")
    assert load_app("cli_tasks") is load_app("cli_tasks:app")  # the default attribute


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing_module:app", "cannot import 'missing_module'"),
        ("cli_tasks:nope", "has no attribute 'nope'"),
        ("cli_tasks:not_an_app", "not a stem.Stem app"),
        (":app", "expected module:attribute"),
    ],
)
def test_load_app_errors_say_what_is_wrong(project: Path, spec: str, message: str) -> None:
    with pytest.raises(click.BadParameter, match=message):
        load_app(spec)


def test_worker_with_a_bad_app_exits_2(project: Path) -> None:
    result = CliRunner().invoke(cli, ["worker", "--app", "missing_module:app"])
    assert result.exit_code == 2 and "cannot import" in result.output


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
    assert "dead-lettered (bad-arguments)" in result.output


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
            if "consuming" in line:
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
