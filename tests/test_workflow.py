"""The Snakemake workflow: the whole DAG, config errors at the edge, a tiny real run."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from matdisc.io import read_table

REPO = Path(__file__).resolve().parents[1]

#: Target of the tiny end-to-end run: the whole default DAG (CSP and QE runs are optional).
E2E_TARGETS = ["all"]

STAGE_RULES = {
    "download_structures", "select_base_compounds", "voxelize_structures", "train_unet",
    "train_vae", "train_cgcnn", "sample_structures", "filter_candidates", "collect_funnel",
    "screen_candidates", "collect_screening", "write_qe_inputs", "collect_qe_manifest",
}  # fmt: skip
PER_BASE_RULES = {"sample_structures", "filter_candidates", "screen_candidates", "write_qe_inputs"}
#: Optional stages, in `all` only when switched on in the config.
OPTIONAL_RULES = {
    ("qe", "run"): {"run_qe_relax"},
    ("csp", "run"): {"train_ebm", "predict_structures", "evaluate_csp"},
}


def snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def copy_workflow(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    (target / "Snakefile").write_text((REPO / "Snakefile").read_text())
    for folder in ("workflow", "config", "envs"):
        subprocess.run(["cp", "-r", str(REPO / folder), str(target)], check=True)
    return target


def job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M)}


def test_dry_run_lists_every_stage_for_every_base(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    config["base_compounds"] = ["CaTiO3", "KCl", "HfNi2Sn"]
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(work, "-n", "all", "--quiet", "rules")
    assert done.returncode == 0, done.stderr
    counts = job_counts(done.stdout + done.stderr)
    assert STAGE_RULES <= set(counts), STAGE_RULES - set(counts)
    for rule in PER_BASE_RULES:
        assert counts[rule] == 3, rule


@pytest.mark.parametrize("switch", sorted(OPTIONAL_RULES))
def test_optional_stages_join_the_dag_when_enabled(tmp_path: Path, switch: tuple[str, str]) -> None:
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    config[switch[0]][switch[1]] = True
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(work, "-n", "all", "--quiet", "rules")
    assert done.returncode == 0, done.stderr
    assert OPTIONAL_RULES[switch] <= set(job_counts(done.stdout + done.stderr))


def test_misspelled_config_key_stops_with_its_name(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path)
    text = (work / "config" / "config.yaml").read_text().replace("seed: 42", "seed: 42\nsed: 1")
    (work / "config" / "config.yaml").write_text(text)
    done = snakemake(work, "-n", "all")
    assert done.returncode != 0
    assert "config key 'sed' under (top level) is not known; check its spelling" in done.stderr


def test_lint_is_clean() -> None:
    done = snakemake(REPO, "--lint")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_tiny_end_to_end_run(tiny_workdir: Path, tiny_table: pd.DataFrame) -> None:
    done = snakemake(tiny_workdir, "--cores", "2", *E2E_TARGETS)
    assert done.returncode == 0, done.stderr[-4000:]
    structures = read_table(tiny_workdir / "results/data/structures.parquet", "structures")
    assert sorted(structures["material_id"]) == sorted(tiny_table["material_id"])
    assert set(structures["source"]) == {"local:tiny.parquet"}
    bases = read_table(tiny_workdir / "results/data/base_compounds.parquet", "base_compounds")
    assert list(bases["base"]) == ["KCl", "CaTiO3"]
    results = tiny_workdir / "results"
    for base in ("KCl", "CaTiO3"):
        samples = pd.read_parquet(results / f"samples/{base}.parquet")
        assert len(samples) == 20  # every draw recorded, with a reason when it has no structure
        assert samples["reason"].notna().sum() + samples["structure_json"].notna().sum() >= 20
        assert (results / f"candidates/{base}.parquet").exists()
        assert (results / f"candidates/{base}").is_dir()
        assert (results / f"qe/{base}").is_dir()
    funnel = pd.read_parquet(results / "funnel.parquet")
    for _, steps in funnel.groupby("base", sort=False):
        counts = steps["count"].tolist()
        assert counts[0] == 20 and all(a >= b for a, b in itertools.pairwise(counts))
    assert set(funnel["base"]) == {"KCl", "CaTiO3", "average"}
    for table in ("metrics/unet.parquet", "metrics/vae.parquet", "metrics/cgcnn.parquet",
                  "screening.parquet", "qe/manifest.parquet"):  # fmt: skip
        assert (results / table).exists(), table
    assert (tiny_workdir / "logs/download_structures/all.log").read_text().count("wrote") == 1
    # Every job left a log and a benchmark record.
    for rule in STAGE_RULES:
        assert list((tiny_workdir / "logs" / rule).glob("*.log")), rule
        assert list((tiny_workdir / "benchmarks" / rule).glob("*.tsv")), rule


@pytest.mark.slow
def test_unknown_base_compound_stops_the_run(tiny_workdir: Path) -> None:
    config_path = tiny_workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["base_compounds"] = ["KCl", "KCI"]
    config_path.write_text(yaml.safe_dump(config))
    done = snakemake(tiny_workdir, "--cores", "2", "results/data/base_compounds.parquet")
    assert done.returncode != 0
    log = (tiny_workdir / "logs/select_base_compounds/all.log").read_text()
    assert (
        "base compound 'KCI' is not in the downloaded data (closest formulas that exist: KCl" in log
    )
    assert not (tiny_workdir / "results/data/base_compounds.parquet").exists()
