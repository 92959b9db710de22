"""ContinuouSP stages end to end on a few pymatgen-built perovskites (tiny settings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fake_cgcnn_dir
from pymatgen.core import Lattice, Structure

from matdisc.config import default_section, load_config
from matdisc.csp.energy import ContinuousEnergy
from matdisc.csp.sampler import energy_and_grad, random_crystals
from matdisc.csp.stage import evaluate_csp, predict_structures, select_structures, train_ebm
from matdisc.csp.train import (
    EBMSettings,
    _negatives,
    _with_grad,
    reduced_numbers,
    sample_multiplicities,
    squared_gradient,
)
from matdisc.csp.train import (
    train_ebm as fit_ebm,
)
from matdisc.graphs import CrystalArrays
from matdisc.io import read_table, write_table
from matdisc.io.schemas import PROPERTY_COLUMNS
from matdisc.stage import StageCall

CONFIG = Path(__file__).parents[1] / "config" / "config.yaml"

PEROVSKITES = [
    ("Sr", "Ti", 3.905),
    ("Ba", "Ti", 4.00),
    ("Ca", "Ti", 3.84),
    ("Sr", "Zr", 4.10),
    ("Ba", "Zr", 4.19),
    ("Sr", "Hf", 4.07),
]


def ebm_settings(**overrides: object) -> EBMSettings:
    """EBM training settings of a ``csp`` section with ``overrides`` (the schema's otherwise;
    the seed's loss: no energy L2 or gradient penalty unless given)."""
    plain = {"energy_l2": 0.0, "grad_penalty": 0.0, "max_minutes": None}
    return EBMSettings.from_section(default_section("csp", **{**plain, **overrides}))


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


def test_persistent_negatives_continue_their_chains() -> None:
    """Fresh negatives start from random cells at a sampled multiplicity; kept ones go on
    from the stored state of their data crystal, with the same species, at the final β."""
    torch.manual_seed(0)
    model = ContinuousEnergy(node_features=8, edge_features=8, n_conv=1)
    units = [np.array([8, 8, 8, 22, 38]), np.array([11, 17])]
    settings = ebm_settings(max_sites=10, train_steps=4, target_acceptance=0.5, persistent=1.0)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    chains: list = [None, None]
    first, _ = _negatives(
        model, np.array([0, 1]), np.array([], int), chains, units, settings, rng, gen
    )
    stored = [(z.copy(), f.copy(), lat.copy()) for z, f, lat in chains]
    assert all(len(z) % len(u) == 0 for (z, _, _), u in zip(stored, units, strict=True))
    second, acceptance = _negatives(
        model, np.array([], int), np.array([1, 0]), chains, units, settings, rng, gen
    )
    assert 0.0 <= acceptance <= 1.0
    for i in (0, 1):
        assert np.array_equal(chains[i][0], stored[i][0])  # same species and multiplicity
        # held at the last step size (0.0005): a continued cell moves by hundredths of an Å
        assert np.abs(chains[i][2] - stored[i][2]).max() < 0.5
    assert second.n_graphs == first.n_graphs == 2


def test_squared_gradient_is_the_samplers_gradient_and_trains() -> None:
    """The penalty is |∂E/∂frac|² + |∂E/∂L|² per crystal (the gradients MALA follows),
    averaged, and it back-propagates to the parameters."""
    torch.manual_seed(0)
    model = ContinuousEnergy(node_features=8, edge_features=8, n_conv=1)
    species = [np.array([8, 8, 8, 22, 38]), np.array([11, 17, 11, 17])]
    batch = random_crystals(species, generator=torch.Generator().manual_seed(1))
    _, g_frac, g_lat = energy_and_grad(model, batch)
    per_crystal = torch.zeros(2, dtype=g_frac.dtype).index_add(
        0, batch.node_graph, (g_frac**2).sum(1)
    ) + (g_lat**2).sum((1, 2))
    leaf = _with_grad(batch)
    network, _ = model.energy_parts(leaf, differentiable_twice=True)
    # the density penalty has no parameters: the term regularises the learned part only
    slope = squared_gradient(network, leaf)
    _, g_frac_n, g_lat_n = energy_and_grad(lambda b: model.energy_parts(b)[0], batch)
    expected = (
        torch.zeros(2, dtype=g_frac.dtype).index_add(0, batch.node_graph, (g_frac_n**2).sum(1))
        + (g_lat_n**2).sum((1, 2))
    ).mean()
    torch.testing.assert_close(slope, expected)
    assert float(per_crystal.mean()) > 0
    slope.backward()
    # every weight shapes the slope (biases of the last layer do not: no gradient there)
    grads = [p.grad for p in model.convs.parameters()]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_gradient_penalty_flattens_the_learned_energy() -> None:
    """Trained alike but for γ, the penalised energy is flatter where MALA starts."""
    cell = [np.diag([3.9, 3.9, 3.9])]
    frac = [np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])]
    numbers = [np.array([38, 22, 8, 8, 8])]
    crystals = CrystalArrays(lattices=cell * 4, frac_coords=frac * 4, numbers=numbers * 4)
    slopes = []
    for gamma in (0.0, 10.0):
        torch.manual_seed(0)
        model = ContinuousEnergy(node_features=8, edge_features=8, n_conv=1)
        settings = ebm_settings(
            epochs=8, batch_size=4, lr=1e-2, max_sites=10, train_steps=3, grad_penalty=gamma
        )
        history = fit_ebm(model, crystals, settings, seed=0)
        assert math.isnan(history[-1]["squared_gradient"]) == (gamma == 0)
        starts = _with_grad(
            random_crystals(crystals.numbers * 4, generator=torch.Generator().manual_seed(5))
        )
        network = model.energy_parts(starts, differentiable_twice=True)[0]
        slopes.append(float(squared_gradient(network, starts).detach()))
    assert slopes[1] < 0.5 * slopes[0], slopes


def _tiny_section() -> dict:
    config = load_config(CONFIG)
    return {
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


@pytest.mark.slow
def test_train_and_evaluate_stages(tmp_path: Path) -> None:
    section = _tiny_section()
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
    evaluate_csp(
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
    # one sample (K = 1) or the lowest-energy one match only where some of the K does
    assert (metrics["matched"] >= metrics["matched_k1"]).all()
    assert (metrics["matched"] >= metrics["matched_lowest_energy"]).all()


def test_csp_split_is_seeded_and_keeps_the_fractions() -> None:
    table = pd.DataFrame(
        {
            "material_id": [f"mp-{i}" for i in range(1000)],
            "nsites": np.arange(1000) % 30 + 1,
            "split": "train",
            "structure_class": "other",
            "crystal_system": "cubic",
        }
    )
    section = {"max_sites": 20, "structure_class": None, "crystal_system": None}
    kept = select_structures(table, section)
    assert (kept["split"] == "train").all() and len(kept) == (table["nsites"] <= 20).sum()
    resplit = {**section, "split": [0.6, 0.2, 0.2]}
    a, b = select_structures(table, resplit, seed=1), select_structures(table, resplit, seed=1)
    other = select_structures(table, resplit, seed=2)
    assert a.equals(b) and not a["material_id"].equals(other["material_id"])
    counts = a["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (402, 134, 134)  # of 670
    assert sorted(a["material_id"]) == sorted(kept["material_id"])


@pytest.mark.slow
def test_csp_stage_samples_every_candidate_and_ranks_them(tmp_path: Path) -> None:
    section = _tiny_section()
    settings = {
        "csp": section,
        "seed": 0,
        # a few FIRE steps: the samples of a 1-epoch EBM are far from any minimum
        "stability": {**load_config(CONFIG)["stability"], "max_steps": 10},
        "train": {"device": "cpu"},
    }
    structures = _table(tmp_path / "structures.parquet")
    train_ebm(
        StageCall(
            settings,
            {"structures": structures},
            {"model": tmp_path / "ebm.pt", "metrics": tmp_path / "ebm.parquet"},
        )
    )
    cgcnn = fake_cgcnn_dir(tmp_path / "cgcnn", 1.0)
    table = read_table(structures, "structures").iloc[:2]
    candidates = pd.DataFrame(
        {
            "candidate_id": ["SrTiO3-0", "BaTiO3-1"],
            "base": "SrTiO3",
            "formula": table["formula"].tolist(),
            "structure_json": table["structure_json"].tolist(),
            "e_form_ev_per_atom": [-3.4, -3.3],
        }
    )
    candidates.to_parquet(tmp_path / "candidates.parquet")

    def run(candidates_path: Path, out: Path) -> pd.DataFrame:
        predict_structures(
            StageCall(
                settings,
                {"candidates": candidates_path, "ebm": tmp_path / "ebm.pt", "cgcnn": cgcnn},
                {"csp": out},
                wildcards={"base": "SrTiO3"},
            )
        )
        return read_table(out, "csp_predictions")

    frame = run(tmp_path / "candidates.parquet", tmp_path / "csp.parquet")
    k = section["samples"]
    assert len(frame) == 2 * k
    assert frame.groupby("candidate_id")["sample"].apply(sorted).tolist() == [list(range(k))] * 2
    for _, group in frame.groupby("candidate_id"):
        assert sorted(group["rank_ebm"]) == list(range(1, k + 1))
        assert sorted(group["rank_e_form"]) == list(range(1, k + 1))
        # rank 1 is the lowest energy
        assert group.loc[group["rank_ebm"].idxmin(), "ebm_energy"] == group["ebm_energy"].min()
    assert np.isfinite(frame["ebm_energy"]).all()
    assert np.isfinite(frame["pred_e_form_ev_per_atom"]).all()
    assert frame["matches_candidate"].dtype == bool
    # CHGNet: every sample relaxed and grouped; the candidate's answer on each of its rows
    assert np.isfinite(frame["chgnet_energy_ev_per_atom"]).all()
    assert frame["relaxed_structure_json"].notna().all()
    for _, group in frame.groupby("candidate_id"):
        assert group["candidate_chgnet_energy_ev_per_atom"].nunique() == 1
        lowest = group.loc[group["chgnet_energy_ev_per_atom"].idxmin()]
        assert lowest["polymorph"] == 0
        assert sorted(group["polymorph"].unique()) == list(range(group["n_polymorphs"].iloc[0]))
        above = group["candidate_above_lowest_ev_per_atom"].iloc[0]
        gap = (
            group["candidate_chgnet_energy_ev_per_atom"].iloc[0]
            - lowest["chgnet_energy_ev_per_atom"]
        )
        if group["candidate_is_lowest"].iloc[0]:
            assert above == 0
        else:
            assert above == pytest.approx(gap) and above > 0.001
    for row in frame.itertuples():  # every sample keeps its candidate's composition
        sample = Structure.from_dict(json.loads(row.structure_json))
        assert sample.composition.reduced_formula == row.formula

    empty = candidates.iloc[:0]
    empty.to_parquet(tmp_path / "none.parquet")
    assert run(tmp_path / "none.parquet", tmp_path / "csp_none.parquet").empty


def test_killed_ebm_training_resumes_like_uninterrupted(tmp_path: Path) -> None:
    """Two epochs in one go equal one epoch, a 'kill', and a re-run from the resume file:
    same weights and history (persistent chains and random streams included)."""
    from matdisc.csp.train import train_ebm as fit
    from matdisc.graphs import parse_structures

    frame = read_table(_table(tmp_path / "structures.parquet"), "structures")
    crystals, _, _ = parse_structures(frame["structure_json"].tolist())
    settings = ebm_settings(epochs=2, batch_size=3, max_sites=10, persistent=0.5, train_steps=3)

    def model() -> ContinuousEnergy:
        torch.manual_seed(0)
        return ContinuousEnergy(node_features=8, edge_features=8, n_conv=1)

    full = model()
    history = fit(full, crystals, settings, seed=1)
    resume = tmp_path / "ebm.resume"
    part = model()
    fit(part, crystals, EBMSettings(**{**settings.__dict__, "epochs": 1}), seed=1,
        resume_path=resume)  # fmt: skip
    resumed = model()
    # another seed: only the resume file's random streams can reproduce the full run
    history_resumed = fit(resumed, crystals, settings, seed=99, resume_path=resume)
    assert [h["loss"] for h in history_resumed] == [h["loss"] for h in history]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class _FakePotential:
    """Relaxes nothing; a structure's energy is its volume per atom (so the test chooses)."""

    def relax(self, structure, *, fmax, steps, rattle_angstrom, seed):
        from matdisc.stability.potential import Relaxation

        return Relaxation(structure, structure.volume / len(structure), (), 0, True, 1, 0.0)


def _rocksalt(a: float) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]
    )


def _cscl(a: float) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])


def _judge(candidate: Structure, samples: list[Structure]):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from matdisc.csp.polymorphs import judge_candidate
    from matdisc.stability.references import RelaxSettings

    settings = RelaxSettings(fmax=0.05, steps=10, rattle_angstrom=0.0, seed=0)
    return judge_candidate(
        candidate, samples, _FakePotential(), settings, StructureMatcher(), symprec=0.1
    )


def test_polymorphs_are_numbered_from_the_lowest_energy() -> None:
    # CsCl-type at 3.0 Å: 13.5 Å3/atom; rock salt at 5.0 Å: 15.6; rock salt 5.1: 16.6
    samples = [_rocksalt(5.1), _cscl(3.0), _rocksalt(5.0), _cscl(3.05)]
    per_sample, per_candidate = _judge(_rocksalt(5.0), samples)
    assert [s["polymorph"] for s in per_sample] == [1, 0, 1, 0]
    assert per_candidate["n_polymorphs"] == 2
    assert [s["matches_relaxed_candidate"] for s in per_sample] == [True, False, True, False]
    # the cubic rock salt (15.6) lies 15.625 - 13.5 above the CsCl-type polymorph
    assert not per_candidate["candidate_is_lowest"]
    assert per_candidate["candidate_above_lowest_ev_per_atom"] == pytest.approx(15.625 - 13.5)
    assert per_candidate["candidate_relaxed_spacegroup_number"] == 225
    assert [s["relaxed_spacegroup_number"] for s in per_sample] == [225, 221, 225, 221]


def test_a_candidate_that_is_the_lowest_polymorph_says_so() -> None:
    per_sample, per_candidate = _judge(_cscl(3.0), [_rocksalt(5.0), _cscl(3.02)])
    assert per_candidate["candidate_is_lowest"]
    assert per_candidate["candidate_above_lowest_ev_per_atom"] == 0.0
    assert [s["polymorph"] for s in per_sample] == [1, 0]
