"""Small shared inputs of the tests: cubic cells for tiny voxel stores, and a training-loop
configuration of plain choices."""

from __future__ import annotations

import json

import numpy as np
from pymatgen.core import Lattice, Structure

from matdisc.io.schemas import PROPERTY_COLUMNS
from matdisc.train import TrainConfig

#: Rock-salt binaries (cation, anion, cubic a in Å).
ROCK_SALTS = [("Na", "Cl", 5.64), ("K", "Cl", 6.29), ("Mg", "O", 4.21), ("Li", "F", 4.03)]
#: Cubic perovskites ABO3 (A, B, a in Å).
PEROVSKITES = [("Sr", "Ti", 3.905), ("Ca", "Ti", 3.84)]


def cubic_cells(n_rock_salts: int) -> list[Structure]:
    """The first ``n_rock_salts`` rock salts, then the two perovskites."""
    out = [
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [x, y], [[0, 0, 0], [0.5] * 3])
        for x, y, a in ROCK_SALTS[:n_rock_salts]
    ]
    for x, y, a in PEROVSKITES:
        out.append(
            Structure.from_spacegroup(
                "Pm-3m", Lattice.cubic(a), [x, y, "O"], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0]]
            )
        )
    return out


def loop_config(**kw: object) -> TrainConfig:
    """A TrainConfig of the loop's plain choices (constant lr, fp32, CPU), ``kw`` on top."""
    plain: dict[str, object] = dict(
        patience=None, weight_decay=0.0, device="cpu", bf16=False, seed=0, grad_clip=None,
        num_threads=1, max_minutes=None, lr_schedule="constant", lr_final=0.01,
    )  # fmt: skip
    return TrainConfig(**{**plain, **kw})  # type: ignore[arg-type]


def structures_row(
    material_id: str, structure: Structure, *, system: str, spacegroup: int, split: str,
    e_form: float,
) -> dict:  # fmt: skip
    """One row of a structures table (schema ``structures``), only Ef known."""
    row = {
        "material_id": material_id,
        "formula": structure.composition.reduced_formula,
        "formula_anonymous": structure.composition.anonymized_formula,
        "structure_class": "other",
        "crystal_system": system,
        "spacegroup_number": spacegroup,
        "nsites": len(structure),
        "structure_json": json.dumps(structure.as_dict()),
        "source": "test",
        "split": split,
    }
    row.update({name: np.nan for name in PROPERTY_COLUMNS})
    row["e_form_ev_per_atom"] = e_form
    return row
