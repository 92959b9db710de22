"""`snakemake --profile slurm`: the cluster profile, run on a real one-node Slurm.

The module starts the cluster with tests/slurm/start.sh (installing Slurm and munge when
missing; needs root) and stops what it started with tests/slurm/stop.sh. Each run uses a
copy of the workflow with the tiny config (tests/conftest.py) and the repository's profile
with only its two partition names replaced by those of the test cluster
(tests/slurm/partitions.yaml), as the README tells a user to do.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import IN_CI, make_workdir

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "slurm"

#: Targets of the Slurm runs: the data stages, the voxel store and the UNet, so CPU rules
#: and a GPU rule (train_unet: --gpus=1 on the GPU partition) run as real Slurm jobs. The
#: rest of the DAG is routed in test_gpu_rules_ask_for_a_gpu_on_the_gpu_partition (dry
#: run): running it all through Slurm would double the CI time for no new kind of job.
SLURM_TARGETS = [
    "results/data/structures.parquet",
    "results/data/base_compounds.parquet",
    "results/models/unet.pt",
]
#: Metric rows that measure wall time, not results: they differ between any two runs.
TIMING_METRICS = ("train_seconds", "train_samples_per_second")
#: The rule whose Slurm job the resume test cancels mid-run; it must run after another job.
KILLED_RULE = "select_base_compounds"

#: Rules the profile sends to the GPU partition with one GPU each (slurm/config.yaml).
GPU_RULES = {
    "train_unet", "train_vae", "train_cgcnn", "sample_structures", "train_ebm",
    "predict_structures", "evaluate_csp",
}  # fmt: skip
#: Partition names of the test cluster: the only change made to the profile.
PARTITIONS: dict[str, str] = yaml.safe_load((SCRIPTS / "partitions.yaml").read_text())
#: Seconds any one Snakemake run may take before the test calls it a hang.
RUN_TIMEOUT = 600

# `slurm_partition: cpu        # EDIT: the partition for CPU jobs` (and the GPU one).
EDIT_LINE = re.compile(
    r"^(?P<head>\s*slurm_partition: )\S+(?P<tail>\s+# EDIT: the partition for (?P<kind>CPU|GPU) jobs)$",
    flags=re.M,
)
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")

pytestmark = [pytest.mark.slow, pytest.mark.external]

#: pytest's limit for a test that builds the module's cancel-and-resume runs: the cluster
#: start, two Slurm runs of at most RUN_TIMEOUT each and a local run, with room to spare, so
#: a hang is reported by :func:`finish` with Snakemake's output and the queue, not cut off.
SLURM_RUNS_TIMEOUT = 3 * RUN_TIMEOUT + 300


def skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def run_script(name: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "CPU_PARTITION": PARTITIONS["cpu"], "GPU_PARTITION": PARTITIONS["gpu"]}
    return subprocess.run(
        ["bash", str(SCRIPTS / name)], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """A running one-node Slurm with the partitions of partitions.yaml."""
    if os.geteuid() != 0:
        skip_or_fail("starting the test Slurm cluster needs root (tests/slurm/start.sh)")
    if shutil.which("sinfo") is None and shutil.which("apt-get") is None:
        skip_or_fail("Slurm is not installed and apt-get is not available to install it")
    started = run_script("start.sh")
    assert started.returncode == 0, started.stdout + started.stderr
    we_started = "already running" not in started.stdout
    try:
        partitions = subprocess.run(
            ["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
        assert set(PARTITIONS.values()) <= set(partitions), partitions
        yield
    finally:
        if we_started:
            stopped = run_script("stop.sh", timeout=120)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def put_partitions(profile: Path) -> None:
    """Write the test cluster's partition names into the two `# EDIT` lines, nothing else."""
    text = profile.read_text()
    edited, count = EDIT_LINE.subn(
        lambda m: f"{m['head']}{PARTITIONS[m['kind'].lower()]}{m['tail']}", text
    )
    assert count == 2, "slurm/config.yaml must mark exactly two partition lines with # EDIT"
    changed = [a for a, b in zip(text.splitlines(), edited.splitlines(), strict=True) if a != b]
    assert len(changed) == 2
    profile.write_text(edited)


def slurm_workdir(target: Path, tiny: pd.DataFrame) -> Path:
    work = make_workdir(target, tiny)
    put_partitions(work / "slurm" / "config.yaml")
    return work


def start_snakemake(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
    """Wait for a Snakemake run; a run past ``timeout`` is a hang: kill it (by PID) and fail."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: only what it started
        output, _ = process.communicate()
        pytest.fail(
            f"snakemake hung (no exit after {timeout:.0f}s):\n{output[-4000:]}\n{cluster_state()}"
        )
    return process.returncode, output


def cluster_state() -> str:
    """What Slurm says about its node and jobs, for the message of a hung run."""
    try:
        return run_script("diagnose.sh", timeout=120).stdout
    except subprocess.TimeoutExpired as error:
        return f"tests/slurm/diagnose.sh: {error}"


def snakemake(workdir: Path, *args: str, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
    return finish(start_snakemake(workdir, *args), timeout)


def submitted_jobs(output: str) -> dict[str, str]:
    """Slurm job id -> rule, from Snakemake's `... submitted with SLURM jobid N (log: ...)`."""
    return {
        jobid: re.search(r"/rule_(\w+?)(?:/|$)", log)[1] for jobid, log in SUBMITTED.findall(output)
    }


def executed_rules(output: str) -> set[str]:
    """Rules Snakemake ran as jobs (local rules, such as `all`, are printed as `localrule`)."""
    return set(re.findall(r"^rule (\w+):$", output, flags=re.M))


def slurm_job(jobid: str) -> dict[str, str]:
    """Slurm's record of a job (`scontrol show job`; kept MinJobAge=300 s after it ends)."""
    shown = subprocess.run(
        ["scontrol", "-o", "show", "job", jobid], capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, f"Slurm has no record of job {jobid}: {shown.stderr}"
    return dict(item.split("=", 1) for item in shown.stdout.split() if "=" in item)


def asked_for_gpu(job: dict[str, str]) -> bool:
    return "gres:gpu:1" in (job.get("TresPerJob", "") + job.get("TresPerNode", ""))


def _table_without_timings(path: Path) -> pd.DataFrame:
    frame = pq.read_table(path).to_pandas()
    if "metric" in frame.columns:
        frame = frame[~frame["metric"].isin(TIMING_METRICS)].reset_index(drop=True)
    return frame


def assert_same_results(local: Path, slurm: Path) -> None:
    """Every file under results/ is the same: parquet tables by content (wall-time rows
    aside), model checkpoints by weights, other files by bytes."""
    files = {p.relative_to(local) for p in (local / "results").rglob("*") if p.is_file()}
    assert files == {p.relative_to(slurm) for p in (slurm / "results").rglob("*") if p.is_file()}
    for name in sorted(files):
        if name.suffix == ".parquet":
            pd.testing.assert_frame_equal(
                _table_without_timings(local / name), _table_without_timings(slurm / name)
            )
        elif name.suffix == ".pt":  # the checkpoint also records epoch times
            a = torch.load(local / name, map_location="cpu", weights_only=False)
            b = torch.load(slurm / name, map_location="cpu", weights_only=False)
            assert a["state_dict"].keys() == b["state_dict"].keys(), name
            for key, value in a["state_dict"].items():
                torch.testing.assert_close(value, b["state_dict"][key], msg=f"{name}: {key}")
        else:
            assert (local / name).read_bytes() == (slurm / name).read_bytes(), name


@dataclass
class SlurmRuns:
    """The tiny workflow run to SLURM_TARGETS with `--profile slurm`, in two runs: the first
    with KILLED_RULE's Slurm job cancelled mid-run (and its automatic retry), the second the
    same command again, which resumes."""

    work: Path
    first: str  # output of the run with the cancelled job
    cancelled: set[str]  # Slurm job ids cancelled
    finished_outputs: dict[Path, int]  # results/ files after the first run -> mtime (ns)
    second: str  # output of the re-run
    records: dict[str, dict[str, str]]  # Slurm job id -> `scontrol show job`, after each run


def run_cancelling(work: Path, rule: str) -> tuple[int, str, set[str]]:
    """Run the profile to SLURM_TARGETS and scancel every Slurm job of ``rule`` it submits."""
    process = start_snakemake(work, "--profile", "slurm", *SLURM_TARGETS)
    cancelled: set[str] = set()
    deadline = time.monotonic() + RUN_TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        queue = subprocess.run(
            ["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True, timeout=30
        ).stdout
        for jobid, comment in (line.split("|") for line in queue.splitlines()):
            if comment.startswith(f"rule_{rule}") and jobid not in cancelled:
                subprocess.run(["scancel", jobid], check=True, timeout=30)
                cancelled.add(jobid)
        time.sleep(0.5)
    code, output = finish(process, timeout=max(deadline - time.monotonic(), 1.0))
    return code, output, cancelled


@pytest.fixture(scope="module")
def slurm_runs(slurm_cluster, tiny_table: pd.DataFrame, tmp_path_factory) -> SlurmRuns:
    work = slurm_workdir(tmp_path_factory.mktemp("slurm") / "work", tiny_table)
    code, first, cancelled = run_cancelling(work, KILLED_RULE)
    assert cancelled, first[-4000:]
    assert code != 0, "a run with a cancelled job fails"
    records = {jobid: slurm_job(jobid) for jobid in submitted_jobs(first)}
    finished_outputs = {
        p: p.stat().st_mtime_ns for p in (work / "results").rglob("*") if p.is_file()
    }
    code, second = snakemake(work, "--profile", "slurm", *SLURM_TARGETS)
    assert code == 0, second[-4000:]
    records |= {jobid: slurm_job(jobid) for jobid in submitted_jobs(second)}
    return SlurmRuns(work, first, cancelled, finished_outputs, second, records)


@pytest.mark.timeout(SLURM_RUNS_TIMEOUT)
def test_every_job_goes_through_slurm_and_matches_a_local_run(
    slurm_runs: SlurmRuns, tiny_table: pd.DataFrame, tmp_path: Path
) -> None:
    work = slurm_runs.work
    for output in (slurm_runs.first, slurm_runs.second):
        jobs = submitted_jobs(output)
        rules = executed_rules(output)
        assert rules, output[-4000:]
        assert set(jobs.values()) == rules, "every job of the run is a Slurm job"
        for jobid, rule in jobs.items():
            job = slurm_runs.records[jobid]
            state = "CANCELLED" if jobid in slurm_runs.cancelled else "COMPLETED"
            assert job["JobState"] == state, (rule, job)
            assert job["Comment"].startswith(f"rule_{rule}"), (rule, job)
            gpu = rule in GPU_RULES
            assert job["Partition"] == PARTITIONS["gpu" if gpu else "cpu"], (rule, job)
            assert asked_for_gpu(job) == gpu, (rule, job)
            if state == "COMPLETED":  # a job cancelled while pending never wrote a log
                logs = work / "logs" / "slurm" / f"rule_{rule}"
                assert list(logs.rglob(f"{jobid}.log")), (rule, jobid)
    assert len(submitted_jobs(slurm_runs.second)) == len(executed_rules(slurm_runs.second))
    for target in SLURM_TARGETS:
        assert (work / target).exists(), target

    local = make_workdir(tmp_path / "local", tiny_table)
    code, local_output = snakemake(local, "--cores", "2", *SLURM_TARGETS)
    assert code == 0, local_output[-4000:]
    assert "SLURM jobid" not in local_output
    assert_same_results(local, work)


@pytest.mark.timeout(SLURM_RUNS_TIMEOUT)
def test_scancel_mid_run_then_rerun_resumes_without_redoing_finished_jobs(
    slurm_runs: SlurmRuns,
) -> None:
    first = slurm_runs.first
    # The cancelled job failed the first run with Snakemake's error naming the rule's log.
    assert f"Error in rule {KILLED_RULE}" in first
    assert "CANCELLED" in first
    assert f"logs/{KILLED_RULE}/" in first
    jobs = submitted_jobs(first)
    assert {jobs[jobid] for jobid in slurm_runs.cancelled} == {KILLED_RULE}
    finished = {rule for jobid, rule in jobs.items() if jobid not in slurm_runs.cancelled}
    assert finished, "the job was cancelled after other jobs had finished"
    assert KILLED_RULE not in finished
    assert slurm_runs.finished_outputs
    # The re-run ran the cancelled rule, redid none of the finished ones, rewrote nothing.
    again = set(submitted_jobs(slurm_runs.second).values())
    assert KILLED_RULE in again
    assert not again & finished, f"finished jobs were redone: {again & finished}"
    for path, mtime in slurm_runs.finished_outputs.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"


def test_gpu_rules_ask_for_a_gpu_on_the_gpu_partition(
    slurm_cluster, tiny_table: pd.DataFrame, tmp_path: Path
) -> None:
    """The profile routes every rule of the whole DAG (QE and CSP switched on); the resources
    each job would be submitted with, from a dry run with the real plugin."""
    work = slurm_workdir(tmp_path / "work", tiny_table)
    config_path = work / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["qe"] = {**config.get("qe", {}), "run": True}
    config["csp"] = {**config.get("csp", {}), "run": True}
    config_path.write_text(yaml.safe_dump(config))
    # --cores: a dry run otherwise caps threads at 1, where the Slurm executor does not.
    code, output = snakemake(work, "--profile", "slurm", "-n", "--cores", "64", "all", timeout=300)
    assert code == 0, output[-4000:]
    blocks = re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", output, flags=re.M | re.S)
    resources = {rule: re.search(r"resources: (.*)", body)[1].split(", ") for rule, body in blocks}
    assert set(resources) >= GPU_RULES | {"run_qe_relax"}, GPU_RULES - set(resources)
    for rule, items in resources.items():
        gpu = rule in GPU_RULES
        assert f"slurm_partition={PARTITIONS['gpu' if gpu else 'cpu']}" in items, (rule, items)
        assert ("gpu=1" in items) == gpu, (rule, items)
    # QE: one MPI rank per thread, one CPU each.
    assert {"mpi=srun", "tasks=2", "cpus_per_task=1"} <= set(resources["run_qe_relax"])


@pytest.mark.timeout(SLURM_RUNS_TIMEOUT)
def test_failing_job_prints_the_rule_log(slurm_runs: SlurmRuns, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(slurm_runs.work, work, symlinks=True)
    config_path = work / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["base_compounds"] = ["KCl", "KCI"]  # a typo: the job fails with a UserError
    config_path.write_text(yaml.safe_dump(config))
    # --retries 0 only to save the time of the second attempt.
    code, output = snakemake(
        work, "--profile", "slurm", "--retries", "0", "results/data/base_compounds.parquet"
    )
    assert code != 0
    assert "Error in rule select_base_compounds" in output
    assert "logs/select_base_compounds/all.log" in output
    # --show-failed-logs (in the profile) prints the log itself.
    assert "base compound 'KCI' is not in the downloaded data" in output
    assert set(submitted_jobs(output).values()) == {"select_base_compounds"}


def test_missing_status_command_key_stops_before_submitting(
    slurm_cluster, tiny_table: pd.DataFrame, tmp_path: Path
) -> None:
    work = slurm_workdir(tmp_path / "work", tiny_table)
    profile = work / "slurm" / "config.yaml"
    text = profile.read_text()
    assert "\nslurm-status-command: squeue" in text
    profile.write_text(text.replace("\nslurm-status-command: squeue", "\n"))
    code, output = snakemake(work, "--profile", "slurm", *SLURM_TARGETS, timeout=180)
    assert code != 0
    assert "set `slurm-status-command: squeue` in the profile (slurm/config.yaml)" in output
    assert not submitted_jobs(output)


def test_unreachable_controller_fails_with_the_rule_log(
    slurm_cluster, tiny_table: pd.DataFrame, tmp_path: Path
) -> None:
    work = slurm_workdir(tmp_path / "work", tiny_table)
    state = Path(os.environ.get("MATDISC_SLURM_STATE", "/tmp/matdisc-slurm"))
    pids = dict(line.split() for line in (state / "pids").read_text().splitlines())
    os.kill(int(pids["slurmctld"]), signal.SIGTERM)  # the controller start.sh started
    try:
        code, output = snakemake(
            work, "--profile", "slurm", "--retries", "0", *SLURM_TARGETS, timeout=300
        )
    finally:
        restarted = run_script("start.sh")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert code != 0
    assert "Error in rule download_structures" in output
    assert "Unable to contact slurm controller" in output
    assert "logs/download_structures/all.log" in output
