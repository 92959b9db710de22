"""The candidate judge: composition validity, CHGNet, the hull and its references, S.U.N."""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from matdisc.stability.hull import Hulls
from matdisc.stability.references import (
    RelaxSettings,
    chemical_system,
    elemental_reference,
    reference_phases,
    relax_references,
    screen_polymorphs,
)
from matdisc.stability.sun import sun_row, wilson_interval
from matdisc.stability.validity import is_valid

RELAX = RelaxSettings(fmax=0.05, steps=200, rattle_angstrom=0.01, seed=0)


def rocksalt(a: float, cation: str = "Na", anion: str = "Cl") -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


@pytest.fixture(scope="module")
def potential():
    from matdisc.stability.potential import Potential

    return Potential(device="cpu", threads=2)


# --- composition validity ---------------------------------------------------------------


@pytest.mark.parametrize("formula", ["NaCl", "CaTiO3", "KMgF3", "LaMnO3"])
def test_common_compounds_are_valid_under_strict(formula):
    assert is_valid(formula, "strict") and is_valid(formula, "cdvae")


@pytest.mark.parametrize("formula", ["GdMgO3", "CsGdO3", "SmMgO3"])
def test_charged_compositions_fail_strict_but_pass_cdvae(formula):
    assert not is_valid(formula, "strict")
    assert is_valid(formula, "cdvae")  # CDVAE's rule is lenient


def test_intermetallics_pass_both_and_none_passes_all():
    assert is_valid("HfNi2Sn", "strict") and is_valid("HfNi2Sn", "cdvae")
    assert is_valid("GdMgO3", "none")
    assert not is_valid("CaO2", "strict")  # a peroxide: the known false rejection
    with pytest.raises(ValueError, match="unknown composition validity rule"):
        is_valid("NaCl", "loose")


# --- the hull ---------------------------------------------------------------------------


def references(rows: list[tuple[str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["formula", "energy_ev_per_atom"])


def test_energy_above_hull_and_coverage():
    hulls = Hulls(references([("Na", -1.3), ("Cl", -1.8), ("NaCl", -3.6)]), missing={})
    on = hulls.judge("NaCl", -3.6)
    assert on.e_above_hull == pytest.approx(0.0, abs=1e-9) and on.reason is None
    above = hulls.judge("NaCl", -3.4)
    assert above.e_above_hull == pytest.approx(0.2)
    below = hulls.judge("NaCl", -3.7)  # a new ground state lies below the hull
    assert below.e_above_hull == pytest.approx(-0.1)
    assert on.n_reference_phases == 3 and on.empty_subsystems == ()
    # a ternary whose binaries are missing: reported, not hidden
    hulls = Hulls(references([("Na", -1.3), ("Cl", -1.8), ("O", -4.9), ("NaCl", -3.6)]), missing={})
    ternary = hulls.judge("NaClO3", -3.0)
    assert set(ternary.empty_subsystems) == {"Cl-O", "Na-O", "Cl-Na-O"}
    assert ternary.thin and not on.thin
    # a binary system with no compound of its own: the hull is the elements' line, thin
    lone = Hulls(references([("Cs", -0.9), ("F", -2.0)]), missing={}).judge("CsF", -4.2)
    assert lone.empty_subsystems == ("Cs-F",) and lone.thin
    # a ternary whose binaries all have phases is not thin, though no ternary is known
    full = Hulls(
        references([("Na", -1.3), ("Cl", -1.8), ("O", -4.9), ("NaCl", -3.6), ("Na2O", -4.0),
                    ("ClO2", -3.0)]),
        missing={},
    ).judge("NaClO3", -3.0)  # fmt: skip
    assert full.empty_subsystems == ("Cl-Na-O",) and not full.thin


def test_missing_elemental_reference_gives_nan_and_the_reason():
    hulls = Hulls(
        references([("O", -4.9)]), missing={"Mn": "ASE cannot build the reference crystal of Mn"}
    )
    result = hulls.judge("MnO", -4.0)
    assert np.isnan(result.e_above_hull)
    assert result.reason == "ASE cannot build the reference crystal of Mn"


def test_elemental_references_from_ase():
    o2, reason = elemental_reference("O")
    assert reason is None and len(o2) == 2 and o2.lattice.a == 10.0
    assert o2.get_distance(0, 1) == pytest.approx(1.21)
    k, _ = elemental_reference("K")
    assert len(k) == 1
    mn, reason = elemental_reference("Mn")
    assert mn is None and "Mn" in reason


def test_reference_phases_take_the_data_and_fill_missing_elements():
    data = pd.DataFrame(
        {
            "material_id": ["mp-1", "mp-2", "mp-3"],
            "formula": ["Na", "NaCl", "KCl"],
            "structure_json": [json.dumps(rocksalt(5.6).as_dict())] * 3,
        }
    )
    phases = reference_phases(data, [chemical_system("NaCl")])
    assert list(phases["reference_id"]) == ["mp-1", "mp-2", "ase:Cl"]
    assert list(phases["source"]) == ["data", "data", "none"]  # Cl2 needs a basis in ASE
    assert "Cl" in phases["reason"].iloc[-1]


# --- S.U.N. -----------------------------------------------------------------------------


def test_wilson_interval():
    low, high = wilson_interval(5, 100)
    assert low == pytest.approx(0.0215, abs=1e-3) and high == pytest.approx(0.1118, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0
    assert np.isnan(wilson_interval(0, 0)[0])


def test_sun_counts_stable_unique_novel_over_every_draw():
    nacl = json.dumps(rocksalt(5.64).as_dict())
    kcl = json.dumps(rocksalt(6.29, "K").as_dict())
    judged = pd.DataFrame(
        {
            "formula": ["NaCl", "NaCl", "KCl", "KCl"],
            "n_draws": [10, 5, 3, 2],
            "relaxed": [True, True, True, False],
            "stable": [True, True, True, False],
            "novel": [True, True, False, True],
            "e_above_hull_ev_per_atom": [0.05, 0.05, -0.01, np.nan],
            "relaxed_structure_json": [nacl, nacl, kcl, None],
        }
    )
    row = sun_row("X", "vae", judged, draws=40)
    assert (row["valid"], row["judged"], row["relaxed"]) == (20, 4, 3)
    assert (row["stable"], row["stable_below_hull"], row["unique"], row["novel"]) == (3, 1, 2, 1)
    assert row["sun_rate"] == pytest.approx(1 / 40) and row["lower_bound"]


# --- CHGNet -----------------------------------------------------------------------------


def test_chgnet_loads_with_the_network_blocked(monkeypatch):
    """The wheel ships the weights: loading must not touch the network."""
    from matdisc.stability.potential import Potential

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    potential = Potential(device="cpu")
    assert potential.info.checkpoint.endswith(".pth.tar") and len(potential.info.sha256) == 64
    energy = potential.energies([rocksalt(5.64)])
    assert np.isfinite(energy).all() and -4.5 < energy[0] < -3.0


def test_a_polymorph_far_above_its_composition_is_not_relaxed(potential, caplog):
    """Of three NaCl cells, the one compressed 15 % lies more than the window above the
    lowest by single point and is left out with its reason; a phase alone in its
    composition gets no single point; no window keeps every phase."""
    caplog.set_level("INFO", logger="matdisc.stability.references")
    cells = {"good": rocksalt(5.70), "near": rocksalt(5.60), "far": rocksalt(4.8)}
    rows = [
        {"reference_id": k, "formula": "NaCl", "source": "data",
         "structure_json": json.dumps(v.as_dict()), "reason": None}
        for k, v in cells.items()
    ]  # fmt: skip
    rows.append(
        {"reference_id": "ase:Na", "formula": "Na", "source": "ase",
         "structure_json": json.dumps(elemental_reference("Na")[0].as_dict()), "reason": None}
    )  # fmt: skip
    rows.append(
        {"reference_id": "none:Cl", "formula": "Cl", "source": "none",
         "structure_json": None, "reason": "no reference"}
    )  # fmt: skip
    phases = pd.DataFrame(rows)
    seen: list[int] = []
    real = potential.energies
    energies = potential.energies([cells["good"], cells["near"], cells["far"]])
    assert energies[0] < energies[1] < energies[0] + 0.5 < energies[2]
    kept, skipped = screen_polymorphs(
        phases.assign(), potential=_Counting(potential, seen), window_ev_per_atom=0.5
    )
    assert kept["reference_id"].tolist() == ["good", "near", "ase:Na", "none:Cl"]
    assert list(skipped) == ["far"] and "above good (window 0.5)" in skipped["far"]
    assert seen == [3]  # one call, for the three NaCl cells; Na alone needs none
    assert "1 of 4 phases not relaxed" in caplog.text and "far: NaCl single point" in caplog.text
    every, none_skipped = screen_polymorphs(phases, potential=real, window_ev_per_atom=None)
    assert every.equals(phases) and none_skipped == {}


class _Counting:
    """A potential that records how many structures each single-point call gets."""

    def __init__(self, potential, seen: list[int]) -> None:
        self.potential, self.seen = potential, seen

    def energies(self, structures, batch_size: int = 1):
        self.seen.append(len(structures))
        return self.potential.energies(structures, batch_size)


def test_reference_cache_is_reused(tmp_path, potential, monkeypatch):
    phases = pd.DataFrame(
        {
            "reference_id": ["ase:Cu"],
            "formula": ["Cu"],
            "source": ["ase"],
            "structure_json": [json.dumps(elemental_reference("Cu")[0].as_dict())],
            "reason": [None],
        }
    )
    cache = tmp_path / "cache" / "references.parquet"
    first = relax_references(phases, potential=potential, settings=RELAX, cache_path=cache)
    assert cache.is_file() and first["converged"].all()

    def no_relaxation(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(potential, "relax", no_relaxation)
    second = relax_references(phases, potential=potential, settings=RELAX, cache_path=cache)
    assert second["energy_ev_per_atom"].tolist() == first["energy_ev_per_atom"].tolist()
    # other relaxation settings are another cache key: relaxed again
    with pytest.raises(AssertionError, match="cache should have been used"):
        relax_references(
            phases,
            potential=potential,
            settings=RelaxSettings(fmax=0.1, steps=200, rattle_angstrom=0.03, seed=0),
            cache_path=cache,
        )


def test_killed_reference_relaxation_keeps_the_phases_it_finished(tmp_path, potential, monkeypatch):
    """The cache is saved while phases are relaxed: a job killed at the second phase keeps
    the first, and the re-run relaxes only the rest."""
    import matdisc.stability.references as references

    phases = pd.DataFrame(
        {
            "reference_id": ["ase:Cu", "ase:Al"],
            "formula": ["Cu", "Al"],
            "source": ["ase", "ase"],
            "structure_json": [
                json.dumps(elemental_reference(e)[0].as_dict()) for e in ("Cu", "Al")
            ],
            "reason": [None, None],
        }
    )
    monkeypatch.setattr(references, "CACHE_SAVE_SECONDS", 0.0)
    real = potential.relax
    calls: list[str] = []

    def killed_at_al(structure, **kwargs):
        calls.append(structure.composition.reduced_formula)
        if structure.composition.reduced_formula == "Al":
            raise KeyboardInterrupt
        return real(structure, **kwargs)

    monkeypatch.setattr(potential, "relax", killed_at_al)
    cache = tmp_path / "references.parquet"
    with pytest.raises(KeyboardInterrupt):
        relax_references(phases, potential=potential, settings=RELAX, cache_path=cache)
    from matdisc.io import read_table

    assert read_table(cache, "references")["reference_id"].tolist() == ["ase:Cu"]
    monkeypatch.setattr(potential, "relax", real)
    calls.clear()
    monkeypatch.setattr(
        potential, "relax", lambda s, **kw: calls.append(s.formula) or real(s, **kw)
    )
    done = relax_references(phases, potential=potential, settings=RELAX, cache_path=cache)
    assert calls == ["Al1"] and done["reference_id"].tolist() == ["ase:Cu", "ase:Al"]


@pytest.mark.slow
def test_known_binary_lies_on_the_hull_and_strained_above(tmp_path, potential, snapshot_table):
    """NaCl of the snapshot, relaxed by CHGNet, lies on the hull of the snapshot's Na-Cl
    phases; the same cell strained 5 % (a single point) lies above it."""
    phases = reference_phases(snapshot_table, [chemical_system("NaCl")])
    assert {"NaCl", "Na"} <= set(phases["formula"])
    refs = relax_references(
        phases, potential=potential, settings=RELAX, cache_path=tmp_path / "refs.parquet"
    )
    hulls = Hulls(refs, missing={})
    row = snapshot_table[snapshot_table["formula"] == "NaCl"].iloc[0]
    nacl = Structure.from_dict(json.loads(row["structure_json"]))
    relaxed = potential.relax(nacl, fmax=0.05, steps=200, rattle_angstrom=0.01, seed=0)
    on = hulls.judge("NaCl", relaxed.energy_ev_per_atom)
    assert abs(on.e_above_hull) < 0.02, on
    strained = nacl.copy()
    strained.apply_strain(0.05)
    above = hulls.judge("NaCl", float(potential.energies([strained])[0]))
    assert above.e_above_hull > 0.02, above


@pytest.mark.slow
def test_judge_stages_end_to_end(tmp_path, snapshot_table, monkeypatch):
    """relax_references → fetch_mp_phases → relax_candidates → collect_sun on a pool of
    three draws: two of one rock-salt NaCl structure and one KCl (both known in the data:
    judged, not novel)."""
    from mp_server import FakeMPServer, thermo_doc

    from matdisc.io import read_table, write_table
    from matdisc.stability.stage import (
        collect_sun,
        fetch_mp_phases,
        relax_candidates,
        relax_references,
    )
    from matdisc.stage import StageCall

    structures = snapshot_table[
        snapshot_table["formula"].map(lambda f: set(chemical_system(f)) <= {"Na", "K", "Cl"})
    ]
    write_table(structures, tmp_path / "structures.parquet", "structures")
    draws = [rocksalt(5.70), rocksalt(5.66), rocksalt(6.35, "K")]
    pool = pd.DataFrame(
        {
            "base": "NaCl",
            "generator": ["vae", "vae", "substitution"],  # KCl: the ion-exchange baseline's
            "sample_index": [0, 1, 0],
            "formula": ["NaCl", "NaCl", "KCl"],
            "formula_anonymous": "AB",
            "nsites": 8,
            "valid_strict": True,
            "valid_cdvae": True,
            "in_training": [True, True, False],
            "candidate_id": [None, "NaCl-s00001", None],
            "structure_json": [json.dumps(s.to_conventional().as_dict()) for s in draws],
        }
    )
    write_table(pool, tmp_path / "pool.parquet", "pool")
    section = {
        "run": True, "threshold_ev_per_atom": 0.1, "max_relax": 5, "draws_per_structure": 4,
        "symprec_angstrom": 0.1, "batch_size": 1, "fmax_ev_per_angstrom": 0.05,
        "max_steps": 200, "rattle_angstrom": 0.01, "polymorph_window_ev_per_atom": 0.5,
    }  # fmt: skip
    settings = {"seed": 3, "stability": section, "train": {"device": "cpu"}}
    results = tmp_path / "results" / "stability"
    relax_references(
        StageCall(
            settings=settings,
            inputs={"pool:NaCl": tmp_path / "pool.parquet", "structures": tmp_path / "structures.parquet"},
            outputs={"references": results / "references.parquet"},
            threads=2,
        )
    )  # fmt: skip
    assert (results / "cache" / "references.parquet").is_file()
    # data.source mp: the Materials Project's phases from the loopback server; here its
    # energies are the CHGNet references', so e_above_hull_mp must equal e_above_hull
    references = read_table(results / "references.parquet", "references")
    thermo = [
        thermo_doc(f"mp-{9000 + i}", formula, energy)
        for i, (formula, energy) in enumerate(
            zip(references["formula"], references["energy_ev_per_atom"], strict=True)
        )
    ] + [thermo_doc("mp-1", "NaCl", -9.0, thermo_type="R2SCAN")]  # another scale: left out
    key = "K" * 32
    with FakeMPServer([], api_key=key, thermo_docs=thermo) as fake:
        monkeypatch.setenv("MP_API_KEY", key)
        mp = {
            "endpoint": fake.url,
            "page_size": 100,
            "retries": 0,
            "backoff_s": 0.01,
            "timeout_s": 10.0,
            "max_sites": 40,
            "general_limit": 0,
        }
        fetch_mp_phases(
            StageCall(
                settings={"seed": 3, "data": {"source": "mp", "mp": mp}},
                inputs={"pool:NaCl": tmp_path / "pool.parquet"},
                outputs={"mp_phases": results / "mp_phases.parquet"},
            )
        )  # fmt: skip
    assert len(read_table(results / "mp_phases.parquet", "mp_phases")) == len(references)
    relax_candidates(
        StageCall(
            settings=settings,
            inputs={"pool": tmp_path / "pool.parquet", "references": results / "references.parquet",
                    "structures": tmp_path / "structures.parquet",
                    "mp_phases": results / "mp_phases.parquet"},
            outputs={"stability": results / "NaCl.parquet", "cifs": results / "NaCl"},
            threads=2, wildcards={"base": "NaCl"},
        )
    )  # fmt: skip
    judged = read_table(results / "NaCl.parquet", "stability").set_index("formula")
    assert sorted(judged.index) == ["KCl", "NaCl"]
    nacl = judged.loc["NaCl"]
    # the seed's candidate is the draw kept for its structure; both draws counted
    assert nacl["candidate_id"] == "NaCl-s00001" and nacl["n_draws"] == 2
    assert nacl["relaxed"] and nacl["relax_converged"] and nacl["spacegroup_relaxed"] == 225
    assert abs(nacl["e_above_hull_ev_per_atom"]) < 0.03 and nacl["stable"]
    assert not nacl["novel"] and nacl["matched_material_id"].startswith("mp-")
    assert Structure.from_file(nacl["cif_path"]).composition.reduced_formula == "NaCl"
    assert judged.loc["KCl", "n_reference_phases"] >= 3  # K from ASE, Cl2 and KCl from data
    # each generator's structures judged on their own; both compositions are in the data
    assert judged.loc["KCl", "generator"] == "substitution"
    assert judged.loc["KCl", "structure_id"] == "NaCl-x00000"
    assert judged["composition_known"].all()
    relaxed = judged[judged["relaxed"]]
    assert np.allclose(
        relaxed["e_above_hull_mp_ev_per_atom"], relaxed["e_above_hull_ev_per_atom"], atol=1e-9
    )
    assert (relaxed["n_mp_phases"] == relaxed["n_reference_phases"]).all()
    pd.DataFrame({"sample_index": range(10)}).to_parquet(tmp_path / "samples.parquet")
    pd.DataFrame({"sample_index": range(4)}).to_parquet(tmp_path / "substitution.parquet")
    collect_sun(
        StageCall(
            settings=settings,
            inputs={"stability:NaCl": results / "NaCl.parquet", "samples:NaCl": tmp_path / "samples.parquet",
                    "substitution:NaCl": tmp_path / "substitution.parquet"},
            outputs={"sun": tmp_path / "sun.parquet"},
        )
    )  # fmt: skip
    sun = read_table(tmp_path / "sun.parquet", "sun").set_index(["base", "generator"])
    assert sun.loc[("NaCl", "vae"), "draws"] == 10 and sun.loc[("NaCl", "vae"), "valid"] == 2
    assert sun.loc[("NaCl", "vae"), "stable"] == 1 and sun.loc[("NaCl", "vae"), "novel"] == 0
    assert sun.loc[("NaCl", "substitution"), "draws"] == 4
    assert sun.loc[("NaCl", "substitution"), "valid"] == 1
    assert sun.loc[("all", "vae"), "sun_rate"] == 0.0
    assert sun.loc[("all", "substitution"), "sun_rate"] == 0.0


def test_generators_table_from_sun_and_benchmark_records(tmp_path):
    """Cost per generator from the rules' benchmark records, S.U.N. per CPU-hour, and the
    S.U.N. structures split into known and new compositions."""
    from matdisc.io import read_table, write_table
    from matdisc.io.schemas import STABILITY
    from matdisc.stability.stage import collect_generators
    from matdisc.stage import StageCall

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    costs = {"vae:train_unet": 3000.0, "vae:sample_structures:A": 600.0,
             "substitution:substitute_structures:A": 2.0}  # fmt: skip
    inputs = {}
    for name, cpu in costs.items():
        path = tmp_path / f"{name.replace(':', '_')}.tsv"
        path.write_text(header + f"1.0\t0:00:01\t1\t1\t1\t1\t0\t0\t50\t{cpu}\n")
        inputs[f"cost:{name}"] = path
    sun = pd.DataFrame(
        [{"base": "all", "generator": g, "draws": d, "valid": 5, "judged": 5, "relaxed": 5,
          "stable": s, "stable_below_hull": 0, "unique": n, "novel": n, "sun_rate": n / d,
          "sun_rate_low": 0.0, "sun_rate_high": 1.0, "lower_bound": False}
         for g, d, s, n in (("vae", 1000, 3, 2), ("substitution", 40, 4, 3))]
    )  # fmt: skip
    write_table(sun, tmp_path / "sun.parquet", "sun")
    pairs = [("Na", "Cl"), ("K", "Cl"), ("Li", "F"), ("Na", "F"), ("K", "F")]
    cells = [json.dumps(rocksalt(5.0, a, b).as_dict()) for a, b in pairs]
    judged = pd.DataFrame(
        {"base": "A", "generator": ["vae", "vae", "substitution", "substitution", "substitution"],
         "structure_id": [f"A-{i}" for i in range(5)], "sample_index": range(5), "n_draws": 1,
         "formula": [a + b for a, b in pairs], "nsites": 8, "spacegroup_number": 225,
         "valid_strict": True, "valid_cdvae": True, "relaxed": True, "n_reference_phases": 2,
         "thin_hull": False, "stable": True, "novel": True,
         "composition_known": [False, True, True, True, True], "structure_json": cells,
         "relaxed_structure_json": cells}
    ).reindex(columns=STABILITY.names)  # fmt: skip
    write_table(judged, tmp_path / "A.parquet", "stability")
    collect_generators(
        StageCall(
            settings={"seed": 1},
            inputs={"sun": tmp_path / "sun.parquet", "stability:A": tmp_path / "A.parquet", **inputs},
            outputs={"generators": tmp_path / "generators.parquet"},
        )
    )  # fmt: skip
    table = read_table(tmp_path / "generators.parquet", "generators").set_index("generator")
    assert table.loc["vae", "cpu_seconds"] == 3600.0 and table.loc["vae", "sun"] == 2
    assert table.loc["vae", "sun_per_cpu_hour"] == 2.0
    assert table.loc["substitution", "sun_per_cpu_hour"] == pytest.approx(3 / (2 / 3600))
    assert json.loads(table.loc["vae", "cpu_seconds_json"])["train_unet"] == 3000.0
    assert (table.loc["vae", "sun_known_composition"], table.loc["vae", "sun_new_composition"]) == (
        1,
        1,
    )
    assert table.loc["substitution", "sun_known_composition"] == 3


def test_references_relaxed_in_two_processes_equal_those_relaxed_here(tmp_path, potential, caplog):
    caplog.set_level("INFO", logger="matdisc.stability.references")
    phases = pd.DataFrame(
        {
            "reference_id": [f"ase:{e}" for e in ("Cu", "Al", "Ni")],
            "formula": ["Cu", "Al", "Ni"],
            "source": ["ase"] * 3,
            "structure_json": [
                json.dumps(elemental_reference(e)[0].as_dict()) for e in ("Cu", "Al", "Ni")
            ],
            "reason": [None] * 3,
        }
    )
    here = relax_references(
        phases, potential=potential, settings=RELAX, cache_path=tmp_path / "a.parquet"
    )
    spread = relax_references(
        phases, potential=potential, settings=RELAX, cache_path=tmp_path / "b.parquet", workers=2
    )
    assert spread["reference_id"].tolist() == here["reference_id"].tolist()  # in order
    np.testing.assert_allclose(
        spread["energy_ev_per_atom"], here["energy_ev_per_atom"], rtol=0, atol=1e-5
    )
    assert (spread["steps"] == here["steps"]).all() and spread["converged"].all()
    # the workers' cell filters reach the log of the calling process
    assert "cell filters of the relaxed: {'UnitCellFilter': 3}" in caplog.text


def test_a_relaxation_the_first_cell_filter_cannot_finish_goes_to_the_next(potential):
    from matdisc.stability.potential import CELL_FILTERS

    strained = rocksalt(6.2)  # 10 % too large: a few steps do not relax it
    done = potential.relax(strained, fmax=0.05, steps=300, rattle_angstrom=0.01, seed=0)
    assert done.converged and done.cell_filter == CELL_FILTERS[0]
    assert done.force_calls == done.steps + 1
    cut = potential.relax(strained, fmax=0.05, steps=3, rattle_angstrom=0.01, seed=0)
    assert not cut.converged and cut.cell_filter == CELL_FILTERS[-1]
    assert cut.steps == 3 and cut.force_calls == len(CELL_FILTERS) * (3 + 1)
