"""The contract between the command line (and so every Snakemake rule) and a stage.

A stage is a function named after its rule, e.g. ``write_qe_inputs(call: StageCall) ->
None``, in the ``stage`` module of its package. The rule passes the config sections the
stage reads, its named inputs and outputs, its thread count and its wildcards; the stage
reads only those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matdisc.errors import UserError


@dataclass(frozen=True)
class StageCall:
    """Everything a stage needs from the workflow.

    settings: validated config sections by name (``seed`` always present), e.g.
        ``settings["voxel"]["grid_size"]``.
    inputs / outputs: named paths, as declared by the rule.
    threads: CPU threads the stage may use.
    wildcards: e.g. ``{"base": "SrTiO3"}`` for per-compound stages.
    """

    settings: dict[str, Any]
    inputs: dict[str, Path] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    threads: int = 1
    wildcards: dict[str, str] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """A config section the rule passed; a missing one is a wiring bug."""
        try:
            return self.settings[name]
        except KeyError:
            raise KeyError(
                f"config section {name!r} was not passed to this stage; "
                f"passed: {sorted(self.settings)}"
            ) from None

    @property
    def seed(self) -> int:
        return int(self.section("seed"))

    def input(self, name: str) -> Path:
        try:
            return self.inputs[name]
        except KeyError:
            raise UserError(
                f"this stage needs an input named '{name}'; pass --input {name}=PATH."
            ) from None

    def output(self, name: str) -> Path:
        try:
            return self.outputs[name]
        except KeyError:
            raise UserError(
                f"this stage needs an output named '{name}'; pass --output {name}=PATH."
            ) from None

    def wildcard(self, name: str) -> str:
        try:
            return self.wildcards[name]
        except KeyError:
            raise UserError(
                f"this stage needs the wildcard '{name}'; pass --wildcard {name}=VALUE."
            ) from None
