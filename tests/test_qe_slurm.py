"""The generated job.sbatch, submitted for real to a one-node Slurm (tests/slurm/start.sh).

Skipped with a reason without root, Slurm or pw.x, except under CI=true, where that is a
failure. The cluster is started with tests/slurm/start.sh (a no-op when it already runs)
and stopped afterwards only if this module started it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from qe_cases import CHEAP, DEBIAN_PSEUDO, write_qe_folder, zincblende

from matdisc.io import read_table
from matdisc.qe.jobscript import job_script
from matdisc.qe.run import CONVERGED, check_output
from matdisc.qe.settings import QEInputSettings

pytestmark = [pytest.mark.slow, pytest.mark.external]

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "slurm"
PARTITIONS: dict[str, str] = yaml.safe_load((SCRIPTS / "partitions.yaml").read_text())
IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def run_script(name: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "CPU_PARTITION": PARTITIONS["cpu"], "GPU_PARTITION": PARTITIONS["gpu"]}
    return subprocess.run(
        ["bash", str(SCRIPTS / name)], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def slurm_cluster():
    if shutil.which("pw.x") is None or not DEBIAN_PSEUDO.is_dir():
        skip_or_fail("needs pw.x and its pseudopotentials (apt-get install quantum-espresso)")
    if shutil.which("mpirun") is None:
        skip_or_fail("needs mpirun (apt-get install openmpi-bin, pulled in by quantum-espresso)")
    if os.geteuid() != 0:
        skip_or_fail("starting the test Slurm cluster needs root (tests/slurm/start.sh)")
    started = run_script("start.sh", timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    we_started = "already running" not in started.stdout
    try:
        yield PARTITIONS["cpu"]
    finally:
        if we_started:
            stopped = run_script("stop.sh", timeout=120)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_job_script_runs_pw_under_sbatch(tmp_path, slurm_cluster):
    """write_qe_inputs → sbatch --wait job.sbatch: pw.x runs through the MPI launcher,
    converges, and the script's own output check passes."""
    qe = {
        **CHEAP,
        # One rank keeps the shared test machine free; the launcher is the MPI one.
        # Debian's Open MPI lacks Slurm's PMI, so srun cannot start it: mpirun can.
        "slurm": {
            "ntasks": 1,
            "time": "00:15:00",
            "mem_per_cpu_mb": 1000,
            "partition": slurm_cluster,
            "launcher": "mpirun -np $SLURM_NTASKS",
        },
    }
    out = write_qe_folder(tmp_path, {"Si-1": zincblende(5.5, "Si", "Si")}, qe)
    manifest = read_table(out / "manifest.parquet", "qe_manifest")
    folder = out / Path(manifest.at[0, "job_script_path"]).parent
    env = dict(os.environ)
    if os.geteuid() == 0:  # the test cluster runs jobs as root; Open MPI must be told it may
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    job = subprocess.run(
        ["sbatch", "--wait", "job.sbatch"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = {p.name: p.read_text() for p in folder.glob("slurm-*.out")}
    assert job.returncode == 0, (job.stdout, job.stderr, logs, (folder / "pw.err").read_text())
    assert any("converged:" in text for text in logs.values()), logs
    text = (folder / "pw.out").read_text()
    assert "Parallel version (MPI)" in text
    assert check_output(text, 0).status == CONVERGED


def test_job_script_fails_when_pw_fails(tmp_path, slurm_cluster):
    """pw.x stopping on an error makes the job fail, whatever pw.x's exit status."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "pw.in").write_text("&CONTROL\n  calculation = 'vc-relax'\n/\n")  # no &SYSTEM
    (folder / "job.sbatch").write_text(
        job_script(
            job_name="broken",
            slurm=replace(
                QEInputSettings.from_config({}).slurm,
                ntasks=1,
                time="00:05:00",
                mem_per_cpu_mb=500,
                partition=slurm_cluster,
                launcher="env",
            ),
            pseudo_dir=DEBIAN_PSEUDO,
            files=[],
            family_label="Debian's pseudopotentials",
        )
    )
    job = subprocess.run(
        ["sbatch", "--wait", "job.sbatch"], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert job.returncode != 0
    logs = "".join(p.read_text() for p in folder.glob("slurm-*.out"))
    assert "pw.x stopped before JOB DONE" in logs, logs
    assert "Error in routine" in (folder / "pw.out").read_text()
