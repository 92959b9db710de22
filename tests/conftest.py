"""Shared fixtures: the real snapshot table, and a tiny working copy of the workflow."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from matdisc.config import load_config, validate_config
from matdisc.io import read_table
from matdisc.segment import InverseSettings

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"

#: Formulas every tiny data set contains (the tiny config's base compounds among them).
TINY_FORMULAS = ("KCl", "CaTiO3", "NaCl", "LiF", "SrTiO3", "HfNi2Sn", "NbCoSb", "Si")


def require_program(name: str) -> str:
    """Path of an external program; skip (outside CI) or fail (in CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install it; .ci/run does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def snapshot_table(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The real structures table from the `snapshot` source (downloaded once per session)."""
    from matdisc.data.stage import download_structures
    from matdisc.stage import StageCall

    config = load_config(REPO / "config" / "config.yaml")
    out = tmp_path_factory.mktemp("snapshot") / "structures.parquet"
    cache = Path(os.environ.get("MATDISC_TEST_CACHE", tmp_path_factory.mktemp("cache")))
    cache.mkdir(parents=True, exist_ok=True)
    # The stage keeps its cache next to its output; share a persistent one when given.
    (out.parent / "cache").symlink_to(cache, target_is_directory=True)
    download_structures(
        StageCall(
            settings={"seed": 42, "data": config["data"]}, outputs={"structures": out}, threads=2
        )
    )
    return read_table(out, "structures")


@pytest.fixture(scope="session")
def tiny_table(snapshot_table: pd.DataFrame) -> pd.DataFrame:
    """~150 real materials: the named formulas, 60 more cubic ones and 60 others."""
    named = snapshot_table[snapshot_table["formula"].isin(TINY_FORMULAS)]
    rest = snapshot_table.drop(named.index)
    cubic = rest[rest["crystal_system"] == "cubic"].sample(60, random_state=0)
    other = rest[rest["crystal_system"] != "cubic"].sample(60, random_state=0)
    return pd.concat([named, cubic, other]).sort_values("material_id").reset_index(drop=True)


def make_workdir(target: Path, tiny: pd.DataFrame, config: Path | None = None) -> Path:
    """A working copy of the workflow in ``target`` running on ``tiny`` (a `local` table)."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Snakefile", target / "Snakefile")
    for folder in ("workflow", "config", "envs", "slurm"):
        if (REPO / folder).exists():
            shutil.copytree(REPO / folder, target / folder, dirs_exist_ok=True)
    shutil.copy2(
        config or REPO / "tests" / "workflow" / "config.yaml", target / "config" / "config.yaml"
    )
    columns = ["material_id", "structure_json", *[c for c in tiny.columns if c.endswith(
        ("_ev_per_atom", "_ev", "_gpa", "_ratio", "_index", "_total"))]]  # fmt: skip
    tiny[columns].to_parquet(target / "tiny.parquet")
    return target


@pytest.fixture
def tiny_workdir(tmp_path: Path, tiny_table: pd.DataFrame) -> Path:
    """A fresh working directory with the workflow, the tiny config and its data."""
    return make_workdir(tmp_path / "work", tiny_table)


def fake_cgcnn_dir(path: Path, gap_means: float) -> Path:
    """A CGCNN model directory (untrained tiny models, one per property) whose band-gap
    model predicts ``gap_means`` eV for everything and the others 0.5 ± noise."""
    import json

    import torch

    from matdisc.graphs import element_feature_table
    from matdisc.io.schemas import PROPERTY_COLUMNS
    from matdisc.models.cgcnn import CGCNN
    from matdisc.train import save_model

    path.mkdir()
    torch.manual_seed(0)
    graph = {"cutoff": 8.0, "max_neighbors": 12, "tie_tolerance": 1e-3}
    manifest = {"graph": graph, "properties": {}}
    for name in PROPERTY_COLUMNS:
        model = CGCNN(
            element_features=element_feature_table().tolist(), node_features=4, hidden_features=4
        )
        mean, std = (gap_means, 1e-9) if name == "band_gap_ev" else (0.5, 0.1)
        save_model(
            path / f"{name}.pt",
            model,
            extra={"target_mean": mean, "target_std": std, "graph": graph},
        )
        manifest["properties"][name] = {"trained": True, "reason": None, "checkpoint": f"{name}.pt"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="session")
def inverse_settings() -> Callable[..., InverseSettings]:
    """Factory of grid -> crystal settings from the validated default config, for true
    species maps (regions by species, every region kept); any ``voxel.inverse`` key can be
    given by keyword."""

    def make(**inverse: Any) -> InverseSettings:
        voxel = {"inverse": {"regions": "species", "min_region_voxels": 1, **inverse}}
        return InverseSettings.from_config(validate_config({"voxel": voxel})["voxel"])

    return make
