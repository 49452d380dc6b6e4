"""What each distribution says about itself holds once it is published on its own."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from stem import _registry
from stem_cli import cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())


def project(package: Path) -> dict[str, Any]:
    with (package / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_the_license_is_the_full_apache_text() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0")
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "Copyright 2026 The Stem for Python authors" in text


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_each_distribution_ships_the_license_and_says_who_and_what(package: Path) -> None:
    assert (package / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    meta = project(package)["project"]
    assert meta["license"] == "Apache-2.0" and meta["license-files"] == ["LICENSE"]
    assert meta["authors"] == [{"name": "The Stem for Python authors"}]
    classifiers = meta["classifiers"]
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: the expression
    for url in meta.get("urls", {}).values():  # only addresses we really have
        assert not re.search(r"example\.|your-?org|TODO|localhost", url), url


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_package_readmes_link_nothing_outside_the_package(package: Path) -> None:
    text = (package / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert [link for link in links if not re.match(r"https?://", link)] == []


def test_stem_core_declares_only_what_it_uses() -> None:
    meta = project(ROOT / "packages" / "stem-core")["project"]
    # cronsim, astral, tzdata: the beat scheduler's cron, sun and time zone work
    assert meta["dependencies"] == [
        "msgspec>=0.18",
        "cronsim>=2.6",
        "astral>=3.2",
        "tzdata>=2024.1",
    ]
    assert "optional-dependencies" not in meta


def test_stem_cli_names_only_commands_it_has() -> None:
    package = ROOT / "packages" / "stem-cli"
    commands = set(cli.commands)
    readme = (package / "README.md").read_text()
    assert set(re.findall(r"^stem (\w+)", readme, flags=re.M)) <= commands
    description = project(package)["project"]["description"]
    for word in ("queue", "result", "dead letter", "beat", "schedule", "enqueue"):
        assert word not in description, description


def test_planned_adapters_claim_no_scheme() -> None:
    """A package whose adapter is planned registers no entry point (it could not serve it),
    and a scheme that an installed package serves is not called planned."""
    for package in PACKAGES:
        points = project(package)["project"].get("entry-points", {}).get("stem.adapters", {})
        assert not set(points) & set(_registry.PLANNED), package.name
    assert "postgresql" in _registry.PLANNED
    assert "redis" not in _registry.PLANNED and "sqlite" not in _registry.PLANNED
