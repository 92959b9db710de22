"""What pre-relaxation saves DFT: pw.x vc-relax from a decoded-like structure against the
CHGNet-relaxed, symmetrised one; prints one JSON object.

Four cubic crystals whose elements Debian's pseudopotential set covers (diamond Si,
zinc-blende SiC, BN and CuI; none magnetic) are strained by up to ±3 % per axis and their
sites rattled by 0.1 Å, as a decoded structure comes out. Each is relaxed by pw.x
(vc-relax, reduced cut-offs and k spacing, stated in the output) three times:

- ``raw``: the distorted conventional cell as it is (what the pipeline wrote before);
- ``prerelaxed_conventional``: CHGNet-relaxed (the judge's settings), then symmetrised in
  its conventional cell: the effect of the pre-relaxation alone;
- ``prerelaxed_primitive``: the same in its standard primitive cell (qe.cell: primitive,
  the default): what the pipeline writes now.

For each: k points, BFGS steps, SCF cycles and wall time, and the ratios to ``raw``.
Needs pw.x and /usr/share/espresso/pseudo (apt-get install quantum-espresso
quantum-espresso-data). Run from the repository root: python benchmarks/bench_dft_start.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

from matdisc.qe.pseudo import FolderFamily
from matdisc.qe.pwinput import build_input
from matdisc.qe.run import CONVERGED, run_pw
from matdisc.qe.settings import QEInputSettings
from matdisc.stability.potential import Potential

DEBIAN_PSEUDO = Path("/usr/share/espresso/pseudo")
FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
TETRA = [[x + 0.25, y + 0.25, z + 0.25] for x, y, z in FCC]
#: Experimental lattice constants (Å).
CRYSTALS = {"Si": ("Si", "Si", 5.431), "SiC": ("Si", "C", 4.360), "BN": ("B", "N", 3.615),
            "CuI": ("Cu", "I", 6.054)}  # fmt: skip
#: Reduced cut-offs and k spacing keep every run to minutes on 2 cores; same for all runs.
DFT = {
    "pseudo_family": "folder",
    "pseudo_dir": str(DEBIAN_PSEUDO),
    "ecutwfc_ry": 25.0,
    "ecutrho_ry": 200.0,
    "kpoint_spacing_inv_angstrom": 0.35,
    "spin": "off",
}


def decoded_like(name: str, rng: np.random.Generator) -> Structure:
    first, second, a = CRYSTALS[name]
    structure = Structure(Lattice.cubic(a), [first] * 4 + [second] * 4, FCC + TETRA)
    structure = Structure(
        Lattice.orthorhombic(*(a * (1 + rng.uniform(-0.03, 0.03, size=3)))),
        structure.species, structure.frac_coords,
    )  # fmt: skip
    displacement = rng.normal(0.0, 0.1 / np.sqrt(3), size=(len(structure), 3))
    return Structure(
        structure.lattice, structure.species, structure.cart_coords + displacement,
        coords_are_cartesian=True,
    )  # fmt: skip


def run(structure: Structure, cell: str, family: FolderFamily, workdir: Path) -> dict:
    settings = QEInputSettings.from_config({**DFT, "cell": cell})
    pw = build_input(structure, settings, family)
    result = run_pw(pw.text, workdir, command=["pw.x"], pseudo_dir=DEBIAN_PSEUDO, reuse=False)
    return {
        "nsites": len(pw.structure),
        "spacegroup": pw.spacegroup_number,
        "kpoints": list(pw.kpoints),
        "status": result.check.status,
        "bfgs_steps": result.check.n_bfgs_steps,
        "scf_cycles": result.check.n_scf_cycles,
        "wall_s": round(result.wall_time_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crystals", nargs="*", default=list(CRYSTALS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if shutil.which("pw.x") is None or not DEBIAN_PSEUDO.is_dir():
        raise SystemExit("needs pw.x and Debian's pseudopotentials: apt-get install "
                         "quantum-espresso quantum-espresso-data")  # fmt: skip
    os.environ["OMP_NUM_THREADS"] = "1"
    family = FolderFamily(
        pseudo_dir=DEBIAN_PSEUDO, functional="PBE", preference=["NC", "US", "PAW"]
    )
    potential = Potential(device="cpu", threads=2)
    rng = np.random.default_rng(args.seed)
    report: dict = {"settings": DFT, "cpu_count": os.cpu_count(), "crystals": {}}
    with tempfile.TemporaryDirectory(prefix="bench_dft_start.") as tmp:
        for name in args.crystals:
            raw = decoded_like(name, rng)
            relaxed = potential.relax(raw, fmax=0.05, steps=300, rattle_angstrom=0.0, seed=0)
            rows = {
                "raw": run(raw, "as_generated", family, Path(tmp) / name / "raw"),
                "prerelaxed_conventional": run(
                    relaxed.structure, "conventional", family, Path(tmp) / name / "conv"
                ),
                "prerelaxed_primitive": run(
                    relaxed.structure, "primitive", family, Path(tmp) / name / "prim"
                ),
            }
            rows["chgnet_relax_s"] = round(relaxed.seconds, 1)
            report["crystals"][name] = rows
            # each crystal as it finishes (stderr), so a stopped run keeps what it measured
            print(json.dumps({name: rows}), file=sys.stderr, flush=True)
    ratios = {}
    for variant in ("prerelaxed_conventional", "prerelaxed_primitive"):
        steps, times = [], []
        for rows in report["crystals"].values():
            if rows["raw"]["status"] == CONVERGED and rows[variant]["status"] == CONVERGED:
                steps.append(rows[variant]["bfgs_steps"] / max(1, rows["raw"]["bfgs_steps"]))
                times.append(rows[variant]["wall_s"] / rows["raw"]["wall_s"])
        ratios[variant] = {
            "mean_bfgs_steps_ratio": round(float(np.mean(steps)), 3) if steps else None,
            "mean_wall_time_ratio": round(float(np.mean(times)), 3) if times else None,
            "crystals_compared": len(steps),
        }
    report["ratios_to_raw"] = ratios
    report["goal"] = "pre-relaxed: <= 0.5 of the raw BFGS steps and wall time on average"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
