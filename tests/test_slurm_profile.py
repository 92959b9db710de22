"""The Slurm profile's routing table against the rules, and the sacct guard (fast, no Slurm)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from matdisc.cluster import check_slurm_status_command
from matdisc.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PROFILE = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())


def rule_resources() -> dict[str, str]:
    """rule name -> the text of its `resources:` block, for every rule of workflow/rules."""
    out = {}
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for name, body in re.findall(
            r"^rule (\w+):\n(.*?)(?=^\S|\Z)", smk.read_text(), re.M | re.S
        ):
            block = re.search(r"^    resources:\n((?:        .*\n)+)", body, re.M)
            out[name] = block[1] if block else ""
    return out


def test_profile_routes_exactly_the_gpu_rules_to_the_gpu_partition() -> None:
    rules = rule_resources()
    gpu_rules = {name for name, block in rules.items() if "gpu=1" in block}
    assert "train_unet" in gpu_rules and "download_structures" not in gpu_rules
    routed = {
        rule
        for rule, res in PROFILE["set-resources"].items()
        if res.get("gpu") == 1 or "gpu" in str(res.get("gres", ""))
    }
    assert routed == gpu_rules
    gpu_partition = {PROFILE["set-resources"][rule]["slurm_partition"] for rule in routed}
    assert gpu_partition == {"gpu"}
    assert PROFILE["default-resources"]["slurm_partition"] == "cpu"
    assert set(PROFILE["set-resources"]) <= set(rules), "set-resources names unknown rules"


def test_profile_settings() -> None:
    assert PROFILE["executor"] == "slurm"
    assert PROFILE["slurm-status-command"] == "squeue"
    assert PROFILE["rerun-incomplete"] is True and PROFILE["show-failed-logs"] is True
    assert {"runtime", "mem_mb", "cpus_per_task"} <= set(PROFILE["default-resources"])
    qe = PROFILE["set-resources"]["run_qe_relax"]
    assert qe["tasks"] == "threads" and qe["cpus_per_task"] == 1 and qe["mpi"]


def fake_sacct(returncode: int, stderr: str = ""):
    calls = []

    def run(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, returncode, stdout="", stderr=stderr)

    return run, calls


@pytest.mark.parametrize("status_command", [None, "sacct"])
def test_sacct_without_accounting_stops_with_the_key_to_set(status_command) -> None:
    run, calls = fake_sacct(1, "Slurm accounting storage is disabled\n")
    with pytest.raises(UserError, match=r"accounting storage is disabled.*slurm-status-command"):
        check_slurm_status_command("slurm", status_command, run=run)
    assert calls and calls[0][0] == "sacct"


def test_working_sacct_squeue_or_other_executors_pass() -> None:
    run, calls = fake_sacct(0)
    check_slurm_status_command("slurm", "sacct", run=run)
    assert len(calls) == 1
    failing, failing_calls = fake_sacct(1, "no accounting")
    check_slurm_status_command("slurm", "squeue", run=failing)
    check_slurm_status_command("local", None, run=failing)
    check_slurm_status_command(None, None, run=failing)
    assert not failing_calls


def test_missing_sacct_program_is_reported() -> None:
    def run(args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "sacct")

    with pytest.raises(UserError, match="sacct does not work"):
        check_slurm_status_command("slurm", "sacct", run=run)
