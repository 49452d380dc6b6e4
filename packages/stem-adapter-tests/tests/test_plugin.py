"""The pytest plugin: backend markers and STEM_TEST_REQUIRE_ALL."""

from __future__ import annotations

import pytest

from stem_adapter_tests import skip_or_fail
from stem_adapter_tests.plugin import MARKERS, REQUIRE_ALL_ENV, require_all

pytest_plugins = ["pytester"]

# pytest-asyncio warns when this is unset, and the inner runs are not under the
# workspace's pyproject.
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


def test_a_missing_server_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ALL_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Redis server"):
        skip_or_fail("no Redis server: install redis-server or set STEM_TEST_REDIS_URL")


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_a_missing_server_fails_when_all_are_required(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(REQUIRE_ALL_ENV, value)
    with pytest.raises(
        pytest.fail.Exception, match=r"no Redis server.*STEM_TEST_REQUIRE_ALL is set"
    ):
        skip_or_fail("no Redis server")


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_falsy_values_do_not_require_all(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(REQUIRE_ALL_ENV, value)
    assert require_all() is False


def test_backend_markers_are_registered_for_any_project(pytester: pytest.Pytester) -> None:
    # Given a project that registers none of the markers itself, under --strict-markers
    pytester.makeini(f"{INI}addopts = --strict-markers\n")
    pytester.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.memory
        @pytest.mark.sqlite
        @pytest.mark.redis
        @pytest.mark.postgres
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    markers = pytester.runpytest("-p", "no:cacheprovider", "--markers")
    for name in MARKERS:
        markers.stdout.fnmatch_lines([f"@pytest.mark.{name}: *"])


def test_markers_a_project_registers_are_not_listed_twice(pytester: pytest.Pytester) -> None:
    pytester.makeini(f"{INI}markers =\n    redis: my own words\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--markers")
    assert sum("@pytest.mark.redis:" in line for line in result.outlines) == 1
    result.stdout.fnmatch_lines(["@pytest.mark.redis: my own words"])


def test_the_header_says_when_all_are_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRE_ALL_ENV, "1")
    pytester.makeini(INI)
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["stem: STEM_TEST_REQUIRE_ALL is set*"])
