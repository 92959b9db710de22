"""ContinuouSP stages end to end on a few pymatgen-built perovskites (tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from matdisc.config import load_config
from matdisc.csp.stage import evaluate, train_ebm
from matdisc.csp.train import reduced_numbers, sample_multiplicities
from matdisc.io import read_table, write_table
from matdisc.io.schemas import PROPERTY_COLUMNS
from matdisc.stage import StageCall

PEROVSKITES = [
    ("Sr", "Ti", 3.905),
    ("Ba", "Ti", 4.00),
    ("Ca", "Ti", 3.84),
    ("Sr", "Zr", 4.10),
    ("Ba", "Zr", 4.19),
    ("Sr", "Hf", 4.07),
]


def _table(path: Path) -> Path:
    rows = []
    for i, (a, b, size) in enumerate(PEROVSKITES):
        s = Structure(
            Lattice.cubic(size),
            [a, b, "O", "O", "O"],
            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        )
        rows.append(
            {
                "material_id": f"mp-{i}",
                "formula": s.composition.reduced_formula,
                "formula_anonymous": "ABC3",
                "structure_class": "perovskite_ABX3",
                "crystal_system": "cubic",
                "spacegroup_number": 221,
                "nsites": 5,
                "structure_json": json.dumps(s.as_dict()),
                **{p: np.nan for p in PROPERTY_COLUMNS},
                "source": "test",
                "split": "test" if i == 0 else "train",
            }
        )
    return write_table(pd.DataFrame(rows), path, "structures")


def test_multiplicities_follow_the_geometric_law() -> None:
    rng = np.random.default_rng(0)
    m = sample_multiplicities(np.full(20000, 5), p=0.5, max_sites=20, rng=rng)
    assert m.min() == 1 and m.max() == 4
    # Geometric(0.5) truncated to 1..4: P(1) = 0.5 / (1 - 0.5**4)
    assert np.mean(m == 1) == pytest.approx(0.5 / (1 - 0.5**4), abs=0.015)
    assert reduced_numbers(np.array([8, 38, 8, 22, 8, 8, 38, 22, 8, 8])).tolist() == [
        8,
        8,
        8,
        22,
        38,
    ]


@pytest.mark.slow
def test_train_and_evaluate_stages(tmp_path: Path) -> None:
    config = load_config(Path(__file__).parents[1] / "config" / "config.yaml")
    section = {
        **config["csp"],
        "epochs": 1,
        "batch_size": 3,
        "train_steps": 3,
        "eval_steps": 5,
        "samples": 2,
        "node_features": 8,
        "edge_features": 8,
        "n_conv": 1,
        "structure_class": "perovskite_ABX3",
        "max_sites": 10,
    }
    structures = _table(tmp_path / "structures.parquet")
    settings = {"csp": section, "seed": 0}
    train_ebm(
        StageCall(
            settings,
            {"structures": structures},
            {"model": tmp_path / "ebm.pt", "metrics": tmp_path / "ebm.parquet"},
        )
    )
    history = read_table(tmp_path / "ebm.parquet", "ebm_metrics")
    assert history["epoch"].tolist() == [1] and np.isfinite(history["loss"]).all()
    evaluate(
        StageCall(
            settings,
            {"structures": structures, "ebm": tmp_path / "ebm.pt"},
            {"metrics": tmp_path / "csp.parquet"},
        )
    )
    metrics = read_table(tmp_path / "csp.parquet", "csp_metrics")
    assert metrics["material_id"].tolist() == ["mp-0"]
    assert metrics["n_samples"].tolist() == [2]
    assert (metrics["n_matched"] <= 2).all()
