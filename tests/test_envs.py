"""The conda environments in envs/ pin the same versions as pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
#: Packages that are not Python dependencies of matdisc (the QE program and its MPI).
NON_PYTHON = {"python", "pip", "qe", "openmpi"}


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for spec in project["dependencies"]:
        name, _, version = spec.partition("==")
        assert version, f"{spec} in pyproject.toml is not pinned with =="
        pins[name.lower()] = version
    return pins


def _env_pins(path: Path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    pins = {}
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==|=)?\s*([^\s]*)", item)
            assert match, f"cannot read {item!r} in {path.name}"
            name, _, version = match.groups()
            pins[name.lower()] = version
    return pins


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_versions_agree_with_pyproject(env: Path) -> None:
    expected = _pyproject_pins()
    pins = _env_pins(env)
    for name, version in pins.items():
        if name in NON_PYTHON:
            continue
        assert name in expected, f"{env.name} lists {name}, which pyproject.toml does not"
        assert version == expected[name], (
            f"{env.name}: {name}=={version}, pyproject has {expected[name]}"
        )


def test_main_env_has_every_dependency() -> None:
    pins = _env_pins(REPO / "envs" / "matdisc.yaml")
    missing = set(_pyproject_pins()) - set(pins)
    assert not missing, f"envs/matdisc.yaml lacks {sorted(missing)}"
