"""What any species reader could give around a base: every substitution of its cell.

    python benchmarks/substitution_bound.py --base KF --out samples_KF.parquet
        [--store PATH] [--template PATH]

The base's cell from the voxel store with each of its elements replaced by a distinct one of
the elements the models know (those of the train split's maps), every assignment, the cell
length scaled by the ratio of the summed voxel radii (so a larger ion gets a larger cell).
Written as a samples table of the base (schema ``samples``; the other columns copied from
``--template``, a samples table of the run) for ``matdisc filter-candidates``: its funnel
then counts how many of these crystals the seed's filter keeps, the most a reader of the
base's structure could find. Binary bases give about 7,000 crystals; a ternary one about
600,000 (allowed, slow). Prints one JSON line: the crystals written.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def substitutions(base, classes: list[int], radii: np.ndarray):
    """Every crystal of ``base``'s cell with its elements replaced by distinct ``classes``."""
    from pymatgen.core import Lattice, Structure

    numbers = np.array(base.atomic_numbers)
    elements = sorted(set(numbers.tolist()))
    old = radii[numbers].sum()
    for new in itertools.permutations(classes, len(elements)):
        swapped = numbers.copy()
        for z, z_new in zip(elements, new, strict=True):
            swapped[numbers == z] = z_new
        scale = radii[swapped].sum() / old
        lattice = Lattice(base.lattice.matrix * scale)
        yield Structure(lattice, swapped.tolist(), base.frac_coords)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a base compound of the run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--store", type=Path, default=ROOT / "results/voxels/cubic.zarr")
    parser.add_argument("--template", type=Path, default=None,
                        help="a samples table of the run (default results/samples/BASE.parquet)")  # fmt: skip
    args = parser.parse_args()
    template = args.template or ROOT / f"results/samples/{args.base}.parquet"
    if not args.store.exists() or not template.exists():
        raise SystemExit(
            "no run here; run `snakemake --cores all all` or pass --store, --template."
        )
    from matdisc.voxel.radii import radius_lookup
    from matdisc.voxel.store import open_store

    store = open_store(args.store)
    hits = np.flatnonzero(store.formula == args.base)
    if not len(hits):
        raise SystemExit(
            f"{args.base} is not a formula of the voxel store; name a base of the run."
        )
    base = store.structure(int(hits[0]))
    first = pd.read_parquet(template).iloc[0].to_dict()
    rows = []
    for s in substitutions(base, store.elements(), radius_lookup()):
        a, b, c = s.lattice.abc
        formula = s.composition.reduced_formula
        rows.append(
            first
            | {
                "sample_index": len(rows),
                "structure_json": json.dumps(s.as_dict()),
                "formula": formula,
                "formula_unconstrained": formula,
                "formula_anonymous": s.composition.anonymized_formula,
                "n_sites": len(s),
                "lattice_a_angstrom": a,
                "lattice_b_angstrom": b,
                "lattice_c_angstrom": c,
                "reason": None,
                "choice_rank": 0,
            }
        )
    frame = pd.DataFrame(rows)
    frame["sample_index"] = frame["sample_index"].astype(np.int32)
    frame.to_parquet(args.out)
    print(json.dumps({"base": args.base, "crystals": len(frame), "out": str(args.out)}))


if __name__ == "__main__":
    main()
