"""What a new user sees: public names in errors, hook typos, script-named tasks, planned adapters."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import stem
from stem import (
    ConfigurationError,
    Reject,
    Stem,
    StemError,
    StemWarning,
    TaskState,
    UnknownSchemeError,
)
from stem.testing import eager_app


def test_public_errors_are_named_from_the_package() -> None:
    for name in stem.__all__:
        obj = getattr(stem, name)
        if isinstance(obj, type) and issubclass(obj, BaseException | Warning):
            assert obj.__module__ == "stem", name
            assert f"{obj.__module__}.{obj.__qualname__}" == f"stem.{name}"


async def test_a_rejected_task_records_the_public_error_name() -> None:
    app = eager_app()

    @app.task(name="t")
    async def t() -> None:
        raise Reject("out of stock")

    status = await app.get_status(await t.enqueue())
    assert status is not None and status.state is TaskState.FAILED and status.error is not None
    assert status.error.type == "stem.Reject"
    await app.aclose()


def test_a_misspelled_hook_event_is_a_configuration_error_with_a_suggestion(app: Stem) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'on_success'") as info:
        app.hooks.on("on_sucess")
    assert isinstance(info.value, StemError) and isinstance(info.value, ValueError)
    assert "on_failure" in str(info.value)  # the events are listed


def test_a_task_defined_in_a_script_warns_about_its_name(app: Stem) -> None:
    def greet() -> None: ...

    greet.__module__ = "__main__"
    with pytest.warns(StemWarning, match=r"'__main__\.[\w.<>]*greet'.*name=") as record:
        app.task(greet)
    assert issubclass(StemWarning, UserWarning)
    assert record[0].filename == __file__  # it points at the caller's line


def test_the_warning_points_at_the_decorated_function(tmp_path: Path) -> None:
    script = tmp_path / "jobs.py"
    script.write_text(
        textwrap.dedent(
            """
            from stem import Stem
            app = Stem.from_url("memory://")

            @app.task
            async def greet() -> None: ...

            @app.task(max_retries=1)
            async def wave() -> None: ...

            @app.task(name="jobs.named")
            async def named() -> None: ...
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", str(script)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "StemWarning" in line]
    assert len(lines) == 2, done.stderr
    assert f"{script}:5: StemWarning: task '__main__.greet'" in lines[0]
    assert f"{script}:8: StemWarning: task '__main__.wave'" in lines[1]
    assert "name='jobs.greet'" in done.stderr


def test_an_imported_task_does_not_warn(app: Stem) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        @app.task
        async def greet() -> None: ...


@pytest.mark.parametrize(
    ("url", "product"),
    [
        ("postgresql://u@localhost/db", "PostgreSQL"),
        ("postgres://u@localhost/db", "PostgreSQL"),
    ],
)
def test_a_planned_adapter_says_it_is_not_released(url: str, product: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Stem.from_url(url)
    message = str(info.value)
    assert isinstance(info.value, UnknownSchemeError)
    assert f"{product} support is not released yet" in message
    assert "memory://" in message and "sqlite://" in message  # what exists now
    assert "pip install" not in message
