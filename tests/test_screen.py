"""CGCNN property training, prediction API and the screening stages (matdisc.screen)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fake_cgcnn_dir
from pymatgen.core import Lattice, Structure

from matdisc.cli import main
from matdisc.config import default_section
from matdisc.graphs import GraphStore, build_graph
from matdisc.io import read_table, write_table
from matdisc.io.schemas import PROPERTY_COLUMNS
from matdisc.screen import PropertyPredictor, predict
from matdisc.screen.properties import SPECS
from matdisc.screen.train import CGCNNSettings, train_all, train_property
from matdisc.train import load_model

CATIONS = ["Li", "Na", "K", "Rb", "Mg", "Ca", "Sr", "Ba"]
ANIONS = ["F", "Cl", "Br", "O", "S"]
TINY = dict(
    node_features=8,
    hidden_features=8,
    epochs=3,
    finetune_epochs=2,
    batch_size=16,
    min_labels=10,
    patience=None,
)


def _rocksalt(a: str, b: str, lattice: float) -> Structure:
    """The 2-site primitive cell of rock salt with cubic lattice constant ``lattice``."""
    fcc = 0.5 * lattice * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    return Structure(Lattice(fcc), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _cscl(a: str, b: str, lattice: float) -> Structure:
    return Structure(Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def synthetic_table(seed: int = 0) -> pd.DataFrame:
    """A STRUCTURES table of 80 binaries with smooth made-up labels (some missing)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (a, b) in enumerate((a, b) for a in CATIONS for b in ANIONS):
        for kind, make, lat in (("rs", _rocksalt, 5.0), ("cscl", _cscl, 3.3)):
            s = make(a, b, lat * rng.uniform(0.9, 1.15))
            x = s.volume / len(s)
            labels = {
                "e_form_ev_per_atom": -3.0 + 0.05 * x + 0.1 * ANIONS.index(b),
                "energy_ev_per_atom": np.nan,  # like the snapshot: never known
                "band_gap_ev": 1.0 + 0.1 * x,
                "k_vrh_gpa": 200.0 / x,
                "g_vrh_gpa": 100.0 / x,
                "poisson_ratio": 0.2 + 0.002 * x,
                "refractive_index": 1.5 + 0.01 * x,
                "dielectric_total": 2.0 + 0.1 * x,
            }
            if i % 3 == 0:  # not every material has every label
                labels["k_vrh_gpa"] = labels["g_vrh_gpa"] = np.nan
            rows.append({
                "material_id": f"syn-{kind}-{a}{b}", "formula": f"{a}{b}",
                "formula_anonymous": "AB", "structure_class": "binary_AB",
                "crystal_system": "cubic", "spacegroup_number": 225 if kind == "rs" else 221,
                "nsites": len(s), "structure_json": json.dumps(s.as_dict()), **labels,
                "source": "synthetic", "split": ("train", "train", "train", "val", "test")[i % 5],
            })  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("cgcnn")
    table = synthetic_table()
    metrics = train_all(
        table,
        settings=CGCNNSettings.from_section(default_section("cgcnn", **TINY)),
        model_dir=root / "models",
        metrics_dir=root / "metrics",
        device="cpu",
        seed=1,
    )
    return root, table, metrics


def test_train_all_writes_models_metrics_and_plots(trained):
    root, _, metrics = trained
    write_table(metrics, root / "metrics" / "cgcnn.parquet", "cgcnn_metrics")
    back = read_table(root / "metrics" / "cgcnn.parquet", "cgcnn_metrics")
    assert back["property"].tolist() == list(PROPERTY_COLUMNS)
    for row in back.itertuples():
        assert (root / "metrics" / f"cgcnn_parity_{row.property}.png").stat().st_size > 1000
        assert (root / "models" / f"{row.property}.pt").is_file() == row.trained
        if row.trained:
            assert np.isfinite(row.mae) and row.n_test > 0
    trained_props = set(back.loc[back["trained"], "property"])
    assert trained_props == set(PROPERTY_COLUMNS) - {"energy_ev_per_atom"}
    log_scale = set(back.loc[back["target_scale"] == "log10", "property"])
    assert log_scale == {"k_vrh_gpa", "g_vrh_gpa", "dielectric_total"}
    assert not (root / "models.resume").exists()


def test_property_without_labels_is_nan_with_reason(trained, caplog):
    root, table, metrics = trained
    row = metrics.set_index("property").loc["energy_ev_per_atom"]
    assert not row["trained"] and "too few labels: 0" in row["reason"]
    with caplog.at_level(logging.WARNING):
        out = predict(
            table["structure_json"].head(5).tolist(),
            ["energy_ev_per_atom"],
            model_dir=root / "models",
            device="cpu",
        )
    assert out["energy_ev_per_atom"].isna().all()
    assert any(
        "energy_ev_per_atom predictions are NaN" in r.message and "too few labels" in r.message
        for r in caplog.records
    )


def test_transfer_learning_loads_formation_energy_convolution(tmp_path):
    table = synthetic_table()
    settings = CGCNNSettings.from_section(
        default_section(
            "cgcnn",
            **{**TINY, "finetune_epochs": 0},
            properties=["e_form_ev_per_atom", "band_gap_ev"],
        )
    )
    metrics = train_all(
        table, settings=settings, model_dir=tmp_path / "m", metrics_dir=tmp_path, device="cpu"
    )
    assert metrics.set_index("property").loc["band_gap_ev", "transfer_from"] == "e_form_ev_per_atom"
    source, _ = load_model(tmp_path / "m" / "e_form_ev_per_atom.pt", device="cpu")
    tuned, extra = load_model(tmp_path / "m" / "band_gap_ev.pt", device="cpu")
    assert extra["transfer_from"] == "e_form_ev_per_atom"
    src, dst = source.state_dict(), tuned.state_dict()
    conv_keys = [k for k in dst if k.startswith(("embedding.", "convs."))]
    assert any(k.startswith("convs.0.center") for k in conv_keys)
    for key in conv_keys:
        torch.testing.assert_close(dst[key], src[key], rtol=0, atol=0)
    assert not torch.equal(dst["out.weight"], src["out.weight"])  # a fresh head


def test_masked_training_ignores_missing_labels(tmp_path):
    table = synthetic_table()
    spec = SPECS["k_vrh_gpa"]
    settings = CGCNNSettings.from_section(default_section("cgcnn", **TINY))
    labelled = np.isfinite(table["k_vrh_gpa"].to_numpy())
    outs = []
    for name, rows in (("all", table), ("labelled", table[labelled])):
        graph = build_graph([Structure.from_dict(json.loads(s)) for s in rows["structure_json"]])
        result, model = train_property(
            spec,
            store=GraphStore(graph),
            values=rows["k_vrh_gpa"].to_numpy(float),
            split=rows["split"].to_numpy(str),
            settings=settings,
            checkpoint=tmp_path / f"{name}.pt",
            resume_path=tmp_path / f"{name}.resume",
            device="cpu",
            bf16=False,
            seed=3,
        )
        assert result.n_train == int((labelled & (table["split"] == "train")).sum())
        outs.append((result, model))
    (a, model_a), (b, model_b) = outs
    for key, value in model_a.state_dict().items():
        torch.testing.assert_close(value, model_b.state_dict()[key])
    np.testing.assert_allclose(a.test_pred, b.test_pred, rtol=1e-5)


@pytest.mark.parametrize("gap, metal", [(-0.5, True), (0.05, True), (2.0, False)])
def test_zero_gap_sets_refractive_index_and_dielectric_to_nan(tmp_path, gap, metal):
    model_dir = fake_cgcnn_dir(tmp_path / "m", gap)
    structures = [_rocksalt("Na", "Cl", 5.6), _cscl("Cs", "Br", 4.3)]
    out = PropertyPredictor(model_dir, device="cpu").predict(structures, zero_gap_threshold_ev=0.1)
    assert (out["band_gap_ev"] >= 0).all()  # clipped at zero
    for name in ("refractive_index", "dielectric_total"):
        assert out[name].isna().all() == metal
        assert out[name].notna().all() == (not metal)
    assert out[["e_form_ev_per_atom", "k_vrh_gpa", "poisson_ratio"]].notna().all().all()
    only_n = predict(
        structures,
        ["refractive_index"],
        model_dir=model_dir,
        device="cpu",
        zero_gap_threshold_ev=0.1,
    )
    assert list(only_n.columns) == ["refractive_index"]
    assert only_n["refractive_index"].isna().all() == metal


def test_prediction_api_matches_stage_and_keeps_order(trained, tmp_path):
    root, table, _ = trained
    cands = table.head(7).assign(
        candidate_id=[f"c{i}" for i in range(7)], base="NaCl", generator="vae"
    )
    cands.loc[3, "structure_json"] = "{not json"
    cands[["candidate_id", "base", "generator", "formula", "structure_json"]].to_parquet(
        tmp_path / "c.parquet"
    )
    settings = json.dumps(
        {
            "seed": 1,
            "screen": {"zero_gap_threshold_ev": 0.1, "batch_size": 3},
            "train": {"device": "cpu"},
        }
    )
    code = main(
        [
            "screen-candidates",
            "--settings",
            settings,
            "--wildcard",
            "base=NaCl",
            "--input",
            f"candidates={tmp_path / 'c.parquet'}",
            "--input",
            f"cgcnn={root / 'models'}",
            "--output",
            f"screening={tmp_path / 'NaCl.parquet'}",
        ]
    )
    assert code == 0
    screened = read_table(tmp_path / "NaCl.parquet", "screening")
    assert screened["candidate_id"].tolist() == [f"c{i}" for i in range(7)]
    # every table a stage writes records its seed and settings (the schema's defaults filled)
    from matdisc.io.parquet import read_metadata

    meta = read_metadata(tmp_path / "NaCl.parquet")
    assert meta["seed"] == 1 and meta["stage"] == "screen-candidates"
    assert meta["settings"]["screen"]["batch_size"] == 3 and meta["wildcards"] == {"base": "NaCl"}
    assert meta["settings"]["train"]["bf16"] == "auto"  # not passed: the schema default
    assert screened.loc[3, list(PROPERTY_COLUMNS)].isna().all()  # unreadable structure
    direct = predict(cands["structure_json"].tolist(), model_dir=root / "models", device="cpu")
    pd.testing.assert_frame_equal(screened[list(PROPERTY_COLUMNS)], direct, check_exact=False)
    code = main(
        [
            "collect-screening",
            "--settings",
            settings,
            "--input",
            f"NaCl={tmp_path / 'NaCl.parquet'}",
            "--output",
            f"screening={tmp_path / 'all.parquet'}",
        ]
    )
    assert code == 0
    assert len(read_table(tmp_path / "all.parquet", "screening")) == 7


def test_screen_stage_with_no_candidates(trained, tmp_path):
    root, _, _ = trained
    empty = pd.DataFrame({c: pd.Series(dtype=str) for c in
                          ("candidate_id", "base", "generator", "formula", "structure_json")})  # fmt: skip
    empty.to_parquet(tmp_path / "c.parquet")
    settings = json.dumps({"seed": 1, "screen": {}, "train": {"device": "cpu"}})
    code = main(["screen-candidates", "--settings", settings, "--wildcard", "base=NaCl",
                 "--input", f"candidates={tmp_path / 'c.parquet'}",
                 "--input", f"cgcnn={root / 'models'}",
                 "--output", f"screening={tmp_path / 'NaCl.parquet'}"])  # fmt: skip
    assert code == 0
    out = read_table(tmp_path / "NaCl.parquet", "screening")
    assert len(out) == 0 and list(out.columns)[4:] == list(PROPERTY_COLUMNS)


def test_screen_stage_takes_the_judges_relaxed_structures(trained, tmp_path):
    """With the judge's table, a candidate it relaxed is screened in its relaxed structure."""
    from pymatgen.core import Structure

    from matdisc.io import write_table
    from matdisc.io.parquet import read_metadata
    from matdisc.io.schemas import STABILITY

    root, table, _ = trained
    cands = table.head(2).assign(candidate_id=["c0", "c1"], base="NaCl", generator="vae")
    cands[["candidate_id", "base", "generator", "formula", "structure_json"]].to_parquet(
        tmp_path / "c.parquet"
    )
    relaxed = Structure.from_dict(json.loads(cands["structure_json"].iloc[0]))
    relaxed.scale_lattice(relaxed.volume * 1.3)
    judged = pd.DataFrame(
        [{"base": "NaCl", "generator": "vae", "structure_id": "NaCl-s0", "sample_index": 0,
          "n_draws": 1, "composition_known": True,
          "formula": cands["formula"].iloc[0], "nsites": len(relaxed), "spacegroup_number": 1,
          "valid_strict": True, "valid_cdvae": True, "candidate_id": "c0", "relaxed": True,
          "n_reference_phases": 1, "thin_hull": False, "stable": True, "novel": True,
          "structure_json": cands["structure_json"].iloc[0],
          "relaxed_structure_json": json.dumps(relaxed.as_dict())}]
    ).reindex(columns=STABILITY.names)  # fmt: skip
    write_table(judged, tmp_path / "judged.parquet", "stability")
    settings = json.dumps({"seed": 1, "screen": {}, "train": {"device": "cpu"}})
    code = main(["screen-candidates", "--settings", settings, "--wildcard", "base=NaCl",
                 "--input", f"candidates={tmp_path / 'c.parquet'}",
                 "--input", f"cgcnn={root / 'models'}",
                 "--input", f"stability={tmp_path / 'judged.parquet'}",
                 "--output", f"screening={tmp_path / 'NaCl.parquet'}"])  # fmt: skip
    assert code == 0
    screened = read_table(tmp_path / "NaCl.parquet", "screening")
    expected = predict(
        [json.dumps(relaxed.as_dict()), cands["structure_json"].iloc[1]],
        model_dir=root / "models", device="cpu",
    )  # fmt: skip
    pd.testing.assert_frame_equal(screened[list(PROPERTY_COLUMNS)], expected, check_exact=False)
    assert read_metadata(tmp_path / "NaCl.parquet")["relaxed_structures"] == 1
    generated = predict([cands["structure_json"].iloc[0]], model_dir=root / "models", device="cpu")
    assert not np.allclose(generated.iloc[0], expected.iloc[0], equal_nan=True)
