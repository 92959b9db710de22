"""The judge's cell filter: ASE's UnitCellFilter against FrechetCellFilter, side by side.

Each structure is relaxed twice from the same rattled start (FIRE, CHGNet, fmax 0.05 eV/Å,
at most 300 steps, one thread), once per filter, alternating, so both see the same machine
load. Structures: a seeded sample of the data (``results/data/structures.parquet``, near
their DFT minimum) and the first candidates of each base (``results/candidates/``, generated,
far from one). Prints one JSON object: wall time and steps per filter and per kind, and the
differences of the relaxed energies (meV/atom) and volumes (%).

    python benchmarks/bench_cell_filter.py [--data 25] [--candidates 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Structure

from matdisc.stability.potential import Potential

FILTERS = ("FrechetCellFilter", "UnitCellFilter")


def relax(potential: Potential, structure: Structure, name: str) -> dict[str, float]:
    from ase import filters
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.01, atoms.positions.shape)
    atoms.calc = potential.calculator
    started = time.perf_counter()
    optimizer = FIRE(getattr(filters, name)(atoms), logfile=None)
    converged = optimizer.run(fmax=0.05, steps=300)
    return {
        "seconds": time.perf_counter() - started,
        "steps": optimizer.nsteps,
        "converged": bool(converged),
        "energy": float(atoms.get_potential_energy()) / len(atoms),
        "volume": float(atoms.get_volume()) / len(atoms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=int, default=25, help="structures sampled from the data")
    parser.add_argument("--candidates", type=int, default=3, help="candidates per base")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    potential = Potential(device="cpu", threads=1)
    data = pd.read_parquet("results/data/structures.parquet").sample(
        args.data, random_state=args.seed
    )
    structures = [("data", s) for s in data["structure_json"]]
    for path in sorted(Path("results/candidates").glob("*.parquet")):
        table = pd.read_parquet(path)
        structures += [("generated", s) for s in table["structure_json"][: args.candidates]]
    rows = []
    for kind, text in structures:
        structure = Structure.from_dict(json.loads(text))
        rows.append({"kind": kind} | {f: relax(potential, structure, f) for f in FILTERS})
    out: dict = {"benchmark": "cell_filter", "threads": 1, "structures": len(rows)}
    for kind in ("data", "generated", "all"):
        part = [r for r in rows if kind in ("all", r["kind"])]
        out[kind] = {
            f: {
                "n": len(part),
                "seconds": round(sum(r[f]["seconds"] for r in part), 1),
                "steps": int(sum(r[f]["steps"] for r in part)),
                "converged": int(sum(r[f]["converged"] for r in part)),
            }
            for f in FILTERS
        }
    d_energy = [1000 * (r[FILTERS[1]]["energy"] - r[FILTERS[0]]["energy"]) for r in rows]
    d_volume = [100 * (r[FILTERS[1]]["volume"] / r[FILTERS[0]]["volume"] - 1) for r in rows]
    out["speedup"] = round(out["all"][FILTERS[0]]["seconds"] / out["all"][FILTERS[1]]["seconds"], 2)
    out["energy_difference_mev_per_atom"] = {
        "mean": round(float(np.mean(d_energy)), 3),
        "min": round(float(np.min(d_energy)), 3),
        "max": round(float(np.max(d_energy)), 3),
    }
    out["volume_difference_percent"] = {
        "min": round(float(np.min(d_volume)), 3),
        "max": round(float(np.max(d_volume)), 3),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
