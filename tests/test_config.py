"""Config validation: unknown keys, bad values, defaults, safe base compound names."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from matdisc.config import load_config, sections, validate_config
from matdisc.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_shipped_config_is_valid() -> None:
    config = load_config(REPO / "config" / "config.yaml")
    assert config["data"]["source"] == "snapshot"
    assert config["base_compounds"]


def test_defaults_are_filled_at_every_level() -> None:
    config = validate_config({})
    assert config["seed"] == 42
    assert config["data"]["split"] == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert config["data"]["snapshot"]["version"] == "0.4.0"
    assert config["voxel"]["grid_size"] == 32


@pytest.mark.parametrize(
    ("path", "key"),
    [((), "seeed"), (("data",), "sourse"), (("data", "split"), "trian"), (("voxel",), "grid")],
)
def test_misspelled_key_is_named(config: dict, path: tuple[str, ...], key: str) -> None:
    bad = copy.deepcopy(config)
    target = bad
    for part in path:
        target = target[part]
    target[key] = 1
    with pytest.raises(UserError) as info:
        validate_config(bad)
    message = str(info.value)
    assert repr(key) in message and "spelling" in message
    assert "\n" not in message


def test_bad_value_names_its_key(config: dict) -> None:
    config["data"]["source"] = "materialsproject"
    with pytest.raises(UserError, match=r"data\.source"):
        validate_config(config)


@pytest.mark.parametrize("name", ["../../etc", "Na Cl", "results/x", "", "nacl"])
def test_base_compound_names_cannot_be_paths(config: dict, name: str) -> None:
    config["base_compounds"] = [name]
    with pytest.raises(UserError, match="base_compounds"):
        validate_config(config)


def test_sections_pass_only_what_a_stage_reads(config: dict) -> None:
    config = validate_config(config)
    picked = sections(config, ["voxel"])
    assert set(picked) == {"seed", "voxel"}
    picked["voxel"]["grid_size"] = 1
    assert config["voxel"]["grid_size"] == 32  # a copy
    # the voxelizer does not read the inverse settings: they are left out of its params
    lean = sections(config, ["voxel"], drop=["voxel.inverse", "voxel.absent.deeper"])
    assert "inverse" not in lean["voxel"] and "inverse" in config["voxel"]
    assert lean["voxel"]["grid_size"] == 32


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
