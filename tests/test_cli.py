"""One name per stage: rule ``x_y`` runs ``matdisc x-y``, which calls ``<package>.stage:x_y``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from matdisc.cli import STAGES, build_parser, resolve

REPO = Path(__file__).resolve().parents[1]
#: Sub-commands that no rule runs (run by hand).
NOT_RULES = {"evaluate-vae"}


def _rule_commands() -> dict[str, str]:
    """rule name -> the matdisc sub-command its shell runs, over workflow/rules/*.smk."""
    out: dict[str, str] = {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule )", path.read_text(), flags=re.M)[1:]:
            rule = re.match(r"rule (\w+):", block).group(1)
            commands = re.findall(r"python -m matdisc ([\w-]+)", block)
            assert len(commands) == 1, f"rule {rule} runs {commands}"
            out[rule] = commands[0]
    return out


def test_rule_command_and_function_share_one_name() -> None:
    rules = _rule_commands()
    for rule, command in rules.items():
        assert command == rule.replace("_", "-"), rule
        assert command in STAGES, rule
        module, _, function = STAGES[command].target.partition(":")
        assert function == rule and module.endswith(".stage"), STAGES[command].target
    assert set(STAGES) == set(rules.values()) | NOT_RULES


@pytest.mark.parametrize("command", sorted(STAGES))
def test_every_sub_command_resolves(command: str) -> None:
    assert callable(resolve(STAGES[command].target))
    args = build_parser().parse_args([command, "--settings", "{}"])
    assert args.stage == command


def test_library_noise_is_dropped_and_other_warnings_reach_the_log(tmp_path) -> None:
    import logging
    import warnings

    from matdisc.logs import setup_logging

    log_file = tmp_path / "rule.log"
    with warnings.catch_warnings():
        setup_logging(log_file)
        warnings.warn(
            "No Pauling electronegativity for Ne. Setting to NaN.", UserWarning, stacklevel=1
        )
        warnings.warn("a warning that matters", UserWarning, stacklevel=1)
    logging.captureWarnings(False)
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text()
    assert "a warning that matters" in text and "Pauling" not in text
