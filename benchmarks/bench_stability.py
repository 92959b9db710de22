"""Speed and energy scale of the candidate judge; prints one JSON object.

1. CHGNet single points: structures/s batched (batch 32) against one at a time, for 5-,
   16- and 40-site cubic cells (CaTiO3 perovskite, a full Heusler's conventional cell, the
   perovskite's 2x2x2 supercell).
2. Relaxations (FIRE + the judge's cell filter, fmax 0.05 eV/Å) of the same cells strained 3 %
   and rattled 0.05 Å: relaxations/s, force calls/s, steps.
3. One ternary reference hull (Ca-Ti-O of the run's data): its phases relaxed from
   scratch, then from the cache.
4. The energy scale: CHGNet formation energies (single points of the data's structures,
   elemental chemical potentials from the relaxed elemental phases) of a seeded sample of
   the materials with a DFT formation energy, MAE against those.

Needs results/data/structures.parquet (snakemake --cores 2 results/data/structures.parquet).
Run from the repository root: python benchmarks/bench_stability.py [--sample 200]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Composition, Lattice, Structure

from matdisc.io import read_table
from matdisc.stability.potential import Potential
from matdisc.stability.references import (
    RelaxSettings,
    chemical_system,
    reference_phases,
    relax_references,
)

REPO = Path(__file__).resolve().parents[1]
STRUCTURES = REPO / "results" / "data" / "structures.parquet"
RELAX = RelaxSettings(fmax=0.05, steps=300, rattle_angstrom=0.05, seed=0)


def cells() -> dict[str, Structure]:
    perovskite = Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(3.90), ["Ca", "Ti", "O"], [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0]]
    )
    heusler = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.95), ["Ni", "Hf", "Sn"],
        [[0.25, 0.25, 0.25], [0.5, 0.5, 0.5], [0, 0, 0]],
    ).to_conventional()  # fmt: skip
    return {"5": perovskite, "16": heusler, "40": perovskite * (2, 2, 2)}


def single_points(potential: Potential, structure: Structure, n: int) -> dict:
    batch = [structure] * n
    started = time.perf_counter()
    potential.energies(batch, batch_size=32)
    batched = time.perf_counter() - started
    started = time.perf_counter()
    for s in batch:
        potential.energies([s], batch_size=1)
    single = time.perf_counter() - started
    return {
        "batched_per_s": round(n / batched, 2),
        "one_at_a_time_per_s": round(n / single, 2),
        "batched_speedup": round(single / batched, 2),
    }


def relaxations(potential: Potential, structure: Structure, n: int) -> dict:
    steps, calls, seconds, converged = [], [], [], []
    for i in range(n):
        strained = structure.copy()
        strained.apply_strain(0.03)
        result = potential.relax(
            strained, fmax=RELAX.fmax, steps=RELAX.steps,
            rattle_angstrom=RELAX.rattle_angstrom, seed=i,
        )  # fmt: skip
        steps.append(result.steps)
        calls.append(result.force_calls)
        seconds.append(result.seconds)
        converged.append(result.converged)
    total = sum(seconds)
    return {
        "relaxations_per_s": round(n / total, 3),
        "force_calls_per_s": round(sum(calls) / total, 2),
        "mean_steps": round(float(np.mean(steps)), 1),
        "converged": int(sum(converged)),
        "n": n,
    }


def ternary_hull(potential: Potential, structures: pd.DataFrame) -> dict:
    phases = reference_phases(structures, [chemical_system("CaTiO3")])
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "references.parquet"
        started = time.perf_counter()
        relax_references(phases, potential=potential, settings=RELAX, cache_path=cache)
        scratch = time.perf_counter() - started
        started = time.perf_counter()
        relax_references(phases, potential=potential, settings=RELAX, cache_path=cache)
        cached = time.perf_counter() - started
    return {
        "system": "Ca-O-Ti",
        "phases": len(phases),
        "sites": int(
            sum(len(Structure.from_dict(json.loads(s))) for s in phases["structure_json"])
        ),
        "from_scratch_s": round(scratch, 1),
        "from_cache_s": round(cached, 2),
    }


def energy_scale(potential: Potential, structures: pd.DataFrame, sample: int, seed: int) -> dict:
    labelled = structures[structures["e_form_ev_per_atom"].notna() & (structures["nsites"] <= 40)]
    chosen = labelled.sample(min(sample, len(labelled)), random_state=seed)
    elements = sorted({el for f in chosen["formula"] for el in chemical_system(f)})
    phases = reference_phases(structures, [(el,) for el in elements])
    phases = phases[phases["source"] != "none"]
    with tempfile.TemporaryDirectory() as tmp:
        refs = relax_references(
            phases, potential=potential, settings=RELAX, cache_path=Path(tmp) / "r.parquet"
        )
    # elemental chemical potentials: the lowest phase of each element (O2 counts for O)
    refs = refs.assign(element=[chemical_system(f)[0] for f in refs["formula"]])
    mu = refs.groupby("element")["energy_ev_per_atom"].min().to_dict()
    items = [Structure.from_dict(json.loads(s)) for s in chosen["structure_json"]]
    energies = potential.energies(items, batch_size=32)
    predicted, truth, skipped = [], [], 0
    for formula, energy, dft in zip(
        chosen["formula"], energies, chosen["e_form_ev_per_atom"], strict=True
    ):
        comp = Composition(formula).fractional_composition
        if any(el.symbol not in mu for el in comp):
            skipped += 1
            continue
        predicted.append(energy - sum(x * mu[el.symbol] for el, x in comp.items()))
        truth.append(dft)
    error = np.abs(np.asarray(predicted) - np.asarray(truth))
    return {
        "materials": len(predicted),
        "skipped_no_elemental_reference": skipped,
        "mae_ev_per_atom": round(float(error.mean()), 4),
        "median_abs_error_ev_per_atom": round(float(np.median(error)), 4),
        "note": "DFT: the snapshot's formation energies (MP as of 2015, flla_2015, before the "
        "MP2020 corrections CHGNet's training data carry); CHGNet: single points of the same "
        "structures, elemental phases relaxed",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=200, help="materials for the energy scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--parts", nargs="*", default=["speed", "hull", "energy_scale"],
        choices=["speed", "hull", "energy_scale"], help="which measurements to run",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not STRUCTURES.is_file():
        raise SystemExit(
            f"{STRUCTURES} is missing: snakemake --cores 2 {STRUCTURES.relative_to(REPO)}"
        )
    structures = read_table(STRUCTURES, "structures")
    potential = Potential(device="cpu", threads=2)
    report: dict = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "potential": potential.info.__dict__,
        "single_points": {},
        "relaxations": {},
    }
    if "speed" in args.parts:
        for sites, structure in cells().items():
            report["single_points"][sites] = single_points(potential, structure, 32)
            report["relaxations"][sites] = relaxations(
                potential, structure, 3 if sites != "40" else 1
            )
    if "hull" in args.parts:
        report["ternary_hull"] = ternary_hull(potential, structures)
    if "energy_scale" in args.parts:
        report["energy_scale"] = energy_scale(potential, structures, args.sample, args.seed)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
