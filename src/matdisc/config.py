"""Loading and validating ``config/config.yaml`` against ``config/schema.yaml``.

The schema is package data (``matdisc/schema.yaml``, found from an installed wheel too);
``config/schema.yaml`` in the checkout is a symlink to it.

The workflow (``workflow/rules/common.smk``) and the command line share this code, so a
config behaves the same whether Snakemake or a person runs a stage. Validation applies
the schema's defaults (through :func:`snakemake.utils.validate`) and turns a schema
violation into one sentence naming the key and what to change.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from matdisc.errors import UserError

#: The package's config schema (``config/schema.yaml`` links to it); the workflow passes
#: its own path, tests may too.
DEFAULT_SCHEMA = Path(str(resources.files("matdisc") / "schema.yaml"))


def load_yaml(path: Path | str) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Config file {path} does not exist; pass the path of a config.yaml.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"Config file {path} is not valid YAML ({exc}); fix its syntax.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"Config file {path} must hold a mapping of keys to values at the top.")
    return data


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = (
            sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        )
        keys = ", ".join(repr(k) for k in extra)
        return (
            f"config key {keys} under {where} is not known; check its spelling "
            f"(allowed there: {', '.join(allowed)})."
        )
    return f"config value at {where} is invalid: {error.message}; change it to match the schema."


def validate_config(
    config: dict[str, Any], schema_path: Path | str = DEFAULT_SCHEMA
) -> dict[str, Any]:
    """Validate ``config`` in place, fill in the schema's defaults and return it.

    Raises :class:`UserError` with one sentence naming the first offending key.
    """
    schema = load_yaml(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise UserError(_describe(best))
    # Defaults are filled by Snakemake's validator, the same one the workflow uses.
    from snakemake.utils import validate

    validate(config, str(schema_path), set_default=True)
    _check_across_keys(config)
    return config


def _check_across_keys(config: dict[str, Any]) -> None:
    """Rules the schema cannot say: the data splits sum to 1."""
    split = config.get("data", {}).get("split")
    if split is not None and abs(sum(split.values()) - 1.0) > 1e-6:
        shown = ", ".join(f"{k} {v:g}" for k, v in split.items())
        raise UserError(
            f"data.split fractions ({shown}) sum to {sum(split.values()):g}, not 1; change "
            "data.split in config/config.yaml."
        )


def default_section(name: str, **overrides: Any) -> dict[str, Any]:
    """The ``name`` section as the schema fills it, with ``overrides`` (validated): what a
    stage would get from a config that sets only those keys."""
    return validate_config({name: copy.deepcopy(overrides)})[name]


def load_config(path: Path | str, schema_path: Path | str = DEFAULT_SCHEMA) -> dict[str, Any]:
    """Load and validate a config file; defaults filled in."""
    return validate_config(load_yaml(path), schema_path)


def sections(
    config: Mapping[str, Any], names: Iterable[str], drop: Iterable[str] = ()
) -> dict[str, Any]:
    """The named top-level sections of ``config`` (``seed`` always included), deep-copied,
    without the dotted keys in ``drop`` (e.g. ``voxel.inverse``: settings a stage does not
    read, so that changing them does not re-run it)."""
    wanted = {"seed", *names}
    out = {k: copy.deepcopy(v) for k, v in config.items() if k in wanted}
    for dotted in drop:
        *parents, last = dotted.split(".")
        node: Any = out
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def sections_json(config: Mapping[str, Any], names: Iterable[str], drop: Iterable[str] = ()) -> str:
    """:func:`sections` as canonical JSON, as the rules pass it to the command line."""
    return json.dumps(sections(config, names, drop), sort_keys=True, separators=(",", ":"))


def put_on_pythonpath(folder: Path | str) -> None:
    """Prepend ``folder`` to ``PYTHONPATH`` of this process and the jobs it starts."""
    folder = str(folder)
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder not in current:
        os.environ["PYTHONPATH"] = os.pathsep.join([folder, *current])
