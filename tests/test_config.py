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
        target = target.setdefault(part, {})
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


# --- one source of defaults: config/schema.yaml ------------------------------------------


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "pseudo_family":
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def test_shipped_config_only_shows_schema_defaults() -> None:
    """config/config.yaml lists the keys a user turns, each valid and equal to the schema's
    default: the schema stays the one source, and the file only shows where to turn."""
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    defaults = _leaves(validate_config({}))
    shown = _leaves(raw)
    assert len(shown) <= 25, "config.yaml should list only the keys users are expected to edit"
    for key, value in shown.items():
        assert key in defaults, key
        assert value == defaults[key], f"{key}: config.yaml {value!r}, schema {defaults[key]!r}"


def test_every_schema_key_has_a_default_and_a_description() -> None:
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())

    def walk(node: dict, where: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub, f"{where}{key}.")
                continue
            assert "default" in sub, f"{where}{key} has no default"
            assert "description" in sub, f"{where}{key} has no description"

    walk(schema, "")


def test_settings_objects_declare_no_defaults() -> None:
    """Settings built from config sections take every value from the validated config."""
    import dataclasses
    import importlib
    import pkgutil

    import matdisc

    found = []
    for module in pkgutil.walk_packages(matdisc.__path__, "matdisc."):
        if module.name.endswith("__main__"):
            continue
        mod = importlib.import_module(module.name)
        for name, obj in vars(mod).items():
            if (
                dataclasses.is_dataclass(obj)
                and isinstance(obj, type)
                and obj.__module__ == mod.__name__
                and (name.endswith("Settings") or name == "TrainConfig")
            ):
                found.append(name)
                with_default = [
                    f.name
                    for f in dataclasses.fields(obj)
                    if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING
                ]
                assert not with_default, f"{mod.__name__}.{name} defaults {with_default}"
    assert {"FilterSettings", "EBMSettings", "CGCNNSettings", "QEInputSettings"} <= set(found)


def _is_config(receiver: str, section_names: set[str]) -> bool:
    """Whether ``receiver`` of a ``.get`` names a config section or settings mapping."""
    last = receiver.rsplit(".", 1)[-1]
    return (
        receiver.startswith("call.section(")
        or last in section_names
        or last.endswith(("section", "settings", "config"))
    )


def test_no_code_reads_a_config_key_with_its_own_default() -> None:
    """No ``section.get("key", default)`` for a key of the schema: the validated section
    always holds it, so such a default could only drift from the schema's."""
    import ast

    keys = set(_leaves(validate_config({})).keys())
    names = {k.rsplit(".", 1)[-1] for k in keys}
    sections_ = set(validate_config({}))
    offenders = []
    for path in sorted((REPO / "src" / "matdisc").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and len(node.args) == 2
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in names
                and _is_config(ast.unparse(node.func.value), sections_)
            ):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.args[0].value}")
    assert not offenders, offenders


def test_empty_base_list_and_splits_not_summing_to_one_stop_before_any_work() -> None:
    with pytest.raises(UserError, match="base_compounds"):
        validate_config({"base_compounds": []})
    with pytest.raises(
        UserError, match=r"data.split fractions \(train 0.8, val 0.2, test 0.1\) sum to 1.1"
    ):
        validate_config({"data": {"split": {"train": 0.8, "val": 0.2, "test": 0.1}}})
