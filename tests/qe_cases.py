"""Shared pieces of the tests that run the real pw.x (test_qe_pwx, test_qe_slurm)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Lattice, Structure

from matdisc.io.schemas import PROPERTY_COLUMNS
from matdisc.qe.stage import write_qe_inputs
from matdisc.stage import StageCall

DEBIAN_PSEUDO = Path("/usr/share/espresso/pseudo")
FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
TETRA = [[x + 0.25, y + 0.25, z + 0.25] for x, y, z in FCC]

#: Low-cost settings: pw.x runs in seconds (the physics stays PBE + D2 + smearing), with
#: Debian's pseudopotentials (the folder family). The shifted 2x2x2 grid of the 8-atom
#: diamond cell, kept as given, reduces to one k point by symmetry.
CHEAP = {
    "pseudo_family": "folder",
    "pseudo_dir": str(DEBIAN_PSEUDO),
    "cell": "as_generated",
    "ecutwfc_ry": 12.0,
    "kpoint_spacing_inv_angstrom": 0.6,
    "kpoint_shift": [1, 1, 1],
    "conv_thr_ry": 1e-7,
}


def zincblende(a: float, first: str, second: str) -> Structure:
    """The 8-atom cubic cell of zinc blende (diamond when both species are the same)."""
    return Structure(Lattice.cubic(a), [first] * 4 + [second] * 4, FCC + TETRA)


def references_table(phases: dict[str, tuple[Structure, float]]) -> pd.DataFrame:
    """A judge's reference table (schema ``references``): id → (structure, eV/atom)."""
    from matdisc.io.schemas import REFERENCES

    rows = [
        {"reference_id": rid, "formula": s.composition.reduced_formula, "source": "data",
         "model": "test", "settings": "test", "nsites": len(s), "energy_ev_per_atom": e,
         "converged": True, "steps": 1, "seconds": 0.0,
         "structure_json": json.dumps(s.as_dict())}
        for rid, (s, e) in phases.items()
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=REFERENCES.names)


def write_qe_folder(
    tmp_path: Path,
    structures: dict[str, Structure],
    qe: dict,
    base: str = "Si",
    references: pd.DataFrame | None = None,
) -> Path:
    """Candidates + screening tables of ``structures`` (and the judge's reference phases)
    → the write_qe_inputs stage; its folder."""
    candidates = pd.DataFrame(
        [
            {"candidate_id": cid, "base": base, "formula": s.composition.reduced_formula,
             "structure_json": json.dumps(s.as_dict())}
            for cid, s in structures.items()
        ]
    )  # fmt: skip
    screening = pd.DataFrame(
        {
            "candidate_id": list(structures),
            **{c: np.full(len(structures), -0.25) for c in PROPERTY_COLUMNS},
        }
    )
    candidates.to_parquet(tmp_path / "candidates.parquet")
    screening.to_parquet(tmp_path / "screening.parquet")
    folder = tmp_path / "qe" / base
    inputs = {
        "candidates": tmp_path / "candidates.parquet",
        "screening": tmp_path / "screening.parquet",
    }
    if references is not None:
        from matdisc.io import write_table

        write_table(references, tmp_path / "references.parquet", "references")
        inputs["references"] = tmp_path / "references.parquet"
    write_qe_inputs(
        StageCall(
            settings={"qe": qe},
            inputs=inputs,
            outputs={"inputs": folder},
            wildcards={"base": base},
        )
    )
    return folder
