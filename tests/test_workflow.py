"""The Snakemake workflow: the whole DAG, config errors at the edge, a tiny real run."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from matdisc.filters.funnel import JUDGE_STAGES, STAGES
from matdisc.io import read_table
from matdisc.io.schemas import PROPERTY_COLUMNS
from matdisc.qe.pseudo import TableFamily

REPO = Path(__file__).resolve().parents[1]

#: Target of the tiny end-to-end run: the whole default DAG (CSP and QE runs are optional).
E2E_TARGETS = ["all"]

STAGE_RULES = {
    "download_structures", "select_base_compounds", "voxelize_structures", "train_unet",
    "train_vae", "train_cgcnn", "sample_structures", "filter_candidates", "collect_funnel",
    "screen_candidates", "collect_screening", "write_qe_inputs", "collect_qe_manifest",
    "relax_references", "relax_candidates", "collect_sun", "plot_report",
    "substitute_structures", "collect_generators",
}  # fmt: skip
PER_BASE_RULES = {
    "sample_structures", "filter_candidates", "screen_candidates", "write_qe_inputs",
    "relax_candidates", "substitute_structures",
}  # fmt: skip
JUDGE_NAMES = [name for name, _ in JUDGE_STAGES]
#: Optional stages, in `all` only when the config says so (section, key, value).
OPTIONAL_RULES = {
    ("qe", "run", True): {"run_qe_relax"},
    ("csp", "run", True): {"train_ebm", "predict_structures", "evaluate_csp"},
    ("data", "source", "mp"): {"fetch_mp_phases"},
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
        # -L: config/schema.yaml is a symlink into src/matdisc; copy the file it names.
        subprocess.run(["cp", "-rL", str(REPO / folder), str(target)], check=True)
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
    optional = set().union(*OPTIONAL_RULES.values())
    assert not optional & set(counts), optional & set(counts)


@pytest.mark.parametrize("switch", sorted(OPTIONAL_RULES))
def test_optional_stages_join_the_dag_when_enabled(
    tmp_path: Path, switch: tuple[str, str, object]
) -> None:
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    config.setdefault(switch[0], {})[switch[1]] = switch[2]
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
    """The whole default DAG. The run needs no system package: the pseudopotential folder
    does not exist and no pw.x runs; every DFT-eligible candidate still gets a pw.in that
    names the SSSP files."""
    config_path = tiny_workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["qe"] = {"pseudo_dir": str(tiny_workdir / "no-such-folder")}
    config_path.write_text(yaml.safe_dump(config))
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
    assert set(funnel["generator"]) == {"vae", "substitution"}
    for (base, generator), steps in funnel.groupby(["base", "generator"], sort=False):
        # the seed's chain, and the judge's (structures of the pool), each never increase;
        # it starts from every draw (VAE) or every substituted structure
        seed = steps[steps["step"] < len(STAGES)]["count"].tolist()
        judge = steps[steps["stage"].isin(["composition_valid", *JUDGE_NAMES])]["count"].tolist()
        if base != "average":
            made = (
                results / ("samples" if generator == "vae" else "substitution") / f"{base}.parquet"
            )
            assert seed[0] == len(pd.read_parquet(made)) > 0, (base, generator)
        assert all(a >= b for a, b in itertools.pairwise(seed))
        assert len(judge) == 5 and all(a >= b for a, b in itertools.pairwise(judge))
    assert set(funnel["base"]) == {"KCl", "CaTiO3", "average"}
    for table in ("metrics/unet.parquet", "metrics/vae.parquet", "metrics/cgcnn.parquet",
                  "screening.parquet", "qe/manifest.parquet", "metrics/sun.parquet",
                  "stability/references.parquet", "metrics/generators.parquet"):  # fmt: skip
        assert (results / table).exists(), table
    # the ion-exchange baseline beside the VAE, in every table that holds candidates
    generators = read_table(results / "metrics/generators.parquet", "generators")
    assert sorted(generators["generator"]) == ["substitution", "vae"]
    assert (generators["cpu_seconds"] > 0).all()
    sun = read_table(results / "metrics/sun.parquet", "sun")
    assert set(zip(sun["base"], sun["generator"], strict=True)) >= {
        ("KCl", "substitution"),
        ("all", "vae"),
    }
    for table in ("candidates/KCl.parquet", "pool/KCl.parquet", "stability/KCl.parquet",
                  "screening.parquet", "funnel.parquet"):  # fmt: skip
        assert "generator" in pd.read_parquet(results / table).columns, table
    assert (tiny_workdir / "logs/download_structures/all.log").read_text().count("wrote") == 1
    check_qe_inputs(results)
    # The report: every figure drawn, and Snakemake's HTML report gathers them
    for figure in ("funnel.png", "learning_curves.png", "latent.png", "cells.png",
                   "hulls/hull_KCl.png", "hulls/hull_CaTiO3.png"):  # fmt: skip
        assert (results / "report" / figure).read_bytes()[:4] == b"\x89PNG", figure
    assert (results / "metrics/cgcnn_parity/cgcnn_parity_e_form_ev_per_atom.png").is_file()
    built = snakemake(tiny_workdir, "--report", "results/report.html")
    assert built.returncode == 0, built.stderr[-4000:]
    html = (results / "report.html").read_text()
    for name in ("funnel.png", "latent.png", "sun.html", "cgcnn_parity_band_gap_ev.png"):
        assert name in html, name
    # Every job left a log and a benchmark record.
    for rule in STAGE_RULES:
        assert list((tiny_workdir / "logs" / rule).glob("*.log")), rule
        assert list((tiny_workdir / "benchmarks" / rule).glob("*.tsv")), rule


def _weights(results: Path) -> dict[str, dict]:
    import torch

    files = [*(results / "models").glob("*.pt"), *(results / "models/cgcnn").glob("*.pt")]
    return {f.name: torch.load(f, weights_only=False)["state_dict"] for f in files}


@pytest.mark.slow
def test_same_config_gives_the_same_models_and_candidates_under_load(
    tiny_workdir: Path,
) -> None:
    """Training budgets are epochs: the models and the candidates of a run do not depend
    on how busy the machine is (the second run shares the cores with two busy loops)."""
    targets = [f"results/candidates/{base}.parquet" for base in ("KCl", "CaTiO3")]
    done = snakemake(tiny_workdir, "--cores", "2", *targets)
    assert done.returncode == 0, done.stderr[-4000:]
    results = tiny_workdir / "results"
    first = _weights(results)
    assert {"unet.pt", "vae.pt", "unet_chain.pt", "e_form_ev_per_atom.pt"} <= set(first)
    tables = {
        name: pd.read_parquet(results / name)
        for name in (*[t.removeprefix("results/") for t in targets], "samples/KCl.parquet")
    }
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        # (--forcerun takes every name after it: the targets go first)
        again = snakemake(
            tiny_workdir, "--cores", "2", *targets, "--forcerun", "train_unet", "train_cgcnn"
        )
    finally:
        for burner in burners:
            burner.kill()
    assert again.returncode == 0, again.stderr[-4000:]
    assert "train_vae" in again.stderr  # everything downstream of the UNet ran again
    second = _weights(results)
    assert second.keys() == first.keys()
    for name, state in first.items():
        assert state.keys() == second[name].keys(), name
        for key, tensor in state.items():
            assert torch_equal(tensor, second[name][key]), (name, key)
    for name, table in tables.items():
        pd.testing.assert_frame_equal(pd.read_parquet(results / name), table, obj=name)


def torch_equal(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))


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


def test_qe_rules_write_sssp_inputs_without_pseudopotential_files(
    tiny_workdir: Path, tiny_table: pd.DataFrame
) -> None:
    """The rules write_qe_inputs and collect_qe_manifest, run by Snakemake on candidate
    tables of real structures (the tiny run's 1-epoch models yield none): no
    pseudopotential folder, no pw.x, yet every eligible candidate gets its input."""
    config_path = tiny_workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["qe"] = {"pseudo_dir": str(tiny_workdir / "no-such-folder")}
    config["stability"] = {"run": False}  # the inputs start from the generated structures
    config_path.write_text(yaml.safe_dump(config))
    results = tiny_workdir / "results"
    (results / "candidates").mkdir(parents=True)
    (results / "screening").mkdir()
    for base in config["base_compounds"]:
        rows = tiny_table[tiny_table["formula"] == base].head(2)
        frame = pd.DataFrame(
            {
                "candidate_id": [f"{base}-{i}" for i in range(len(rows))],
                "base": base,
                "formula": rows["formula"].tolist(),
                "structure_json": rows["structure_json"].tolist(),
                "dft_eligible": True,
            }
        )
        frame.to_parquet(results / f"candidates/{base}.parquet")
        screening = frame[["candidate_id"]].assign(**dict.fromkeys(PROPERTY_COLUMNS, 0.0))
        screening.to_parquet(results / f"screening/{base}.parquet")
    done = snakemake(
        tiny_workdir, "--cores", "2", "--allowed-rules", "write_qe_inputs", "collect_qe_manifest",
        "--", "results/qe/manifest.parquet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    written = sum(len(pd.read_parquet(p)) for p in (results / "candidates").glob("*.parquet"))
    assert written >= len(config["base_compounds"])
    assert check_qe_inputs(results) == written


def check_qe_inputs(results: Path) -> int:
    """Every DFT-eligible candidate has a pw.in naming its SSSP efficiency files, with the
    largest recommended cut-offs over its elements; the manifest says the files are absent."""
    sssp = TableFamily("sssp-efficiency")
    manifest = read_table(results / "qe/manifest.parquet", "qe_manifest")
    candidates = pd.concat(
        [pd.read_parquet(p) for p in sorted((results / "candidates").glob("*.parquet"))]
    )
    eligible = candidates[candidates["dft_eligible"]]
    rows = manifest.set_index("candidate_id").loc[eligible["candidate_id"]]
    assert rows["error"].isna().all(), rows["error"].dropna().tolist()
    assert not rows["pseudo_files_present"].any()
    for cid, row in rows.iterrows():
        text = (results.parent / row["input_path"]).read_text()
        elements = json.loads(row["pseudopotentials"])
        files = [sssp.file(element) for element in elements]
        assert all(f" {f.filename}\n" in text for f in files), cid
        assert row["ecutwfc_ry"] == max(f.ecutwfc_ry for f in files)
        assert row["ecutrho_ry"] == max(f.ecutrho_ry for f in files)
        assert "pseudo_dir" not in text
    return len(rows)
