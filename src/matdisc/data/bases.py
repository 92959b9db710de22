"""Base compounds: the configured formulas, checked against the downloaded data.

Each base must name a cubic structure with at most ``voxel.max_sites`` sites in its
conventional cell (the VAE works on cubic voxel grids).

The seed drew its base compounds from the VAE training set: the encoder has seen them,
so μ_base decodes to (something near) the base. When a formula has several cubic
polymorphs, one of the train split is taken if there is one, then the lowest formation
energy (then fewer sites, then the material id), so the choice is reproducible. A base
only in the validation or test split works too but is logged as a warning, since the
VAE may encode it far from where its decoder draws that structure; the table records
each base's split.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence

import pandas as pd
from pymatgen.core import Composition
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matdisc.data.records import structure_from_json
from matdisc.errors import UserError

log = logging.getLogger(__name__)


def _reduced(formula: str) -> str:
    try:
        return Composition(formula).reduced_formula
    except (ValueError, KeyError) as exc:
        raise UserError(
            f"base compound '{formula}' is not a chemical formula ({exc}); "
            "fix base_compounds in config/config.yaml."
        ) from exc


def closest_formulas(formula: str, known: Sequence[str], n: int = 5) -> list[str]:
    """Known formulas most like ``formula``: same elements first, then by spelling."""
    unique = sorted(set(known))
    try:
        elements = set(Composition(formula).elements)
        same = [f for f in unique if set(Composition(f).elements) == elements]
    except (ValueError, KeyError):
        same = []
    spelled = difflib.get_close_matches(formula, unique, n=n, cutoff=0.5)
    ordered = list(dict.fromkeys([*same, *spelled]))
    return ordered[:n]


def check_bases(bases: Sequence[str], table: pd.DataFrame) -> None:
    """Fail with one sentence for the first base whose formula is not in ``table``."""
    formulas = set(table["formula"])
    for base in bases:
        reduced = _reduced(base)
        if reduced not in formulas:
            near = closest_formulas(reduced, table["formula"].tolist())
            hint = (
                f"closest formulas that exist: {', '.join(near)}"
                if near
                else "no similar formula exists"
            )
            raise UserError(
                f"base compound '{base}' is not in the downloaded data ({hint}); "
                "change base_compounds in config/config.yaml."
            )


def conventional_nsites(structure_json: str) -> int:
    structure = structure_from_json(structure_json)
    return len(SpacegroupAnalyzer(structure, symprec=0.1).get_conventional_standard_structure())


def select_bases(bases: Sequence[str], table: pd.DataFrame, max_sites: int) -> pd.DataFrame:
    """One row per base (schema ``base_compounds``): the cubic entry sampling starts from."""
    check_bases(bases, table)
    rows = []
    for base in bases:
        reduced = _reduced(base)
        entries = table[table["formula"] == reduced]
        cubic = entries[entries["crystal_system"] == "cubic"].copy()
        if cubic.empty:
            systems = ", ".join(sorted(set(entries["crystal_system"])))
            raise UserError(
                f"base compound '{base}' is in the data only as {systems}, not cubic, and the VAE "
                "works on cubic cells; choose a cubic compound in base_compounds."
            )
        cubic["conventional_nsites"] = [conventional_nsites(s) for s in cubic["structure_json"]]
        fitting = cubic[cubic["conventional_nsites"] <= max_sites]
        if fitting.empty:
            raise UserError(
                f"base compound '{base}' has {cubic['conventional_nsites'].min()} sites in its "
                f"conventional cubic cell, more than voxel.max_sites = {max_sites}; "
                "choose a smaller compound or raise voxel.max_sites."
            )
        fitting = fitting.assign(_held_out=fitting["split"] != "train")
        best = fitting.sort_values(
            ["_held_out", "e_form_ev_per_atom", "conventional_nsites", "material_id"],
            na_position="last",
        ).iloc[0]
        log.info(
            "base %s -> %s (%s, space group %d, Ef %.3f eV/atom; %d cubic candidates)",
            base,
            best["material_id"],
            best["structure_class"],
            best["spacegroup_number"],
            best["e_form_ev_per_atom"],
            len(cubic),
        )
        if best["split"] != "train":
            log.warning(
                "base %s (%s) is in the %s split, which the VAE and UNet did not train on: "
                "draws around it may not resemble it; the seed took its bases from the "
                "training set",
                base,
                best["material_id"],
                best["split"],
            )
        rows.append(
            {
                "base": base,
                **{c: best[c] for c in best.index if c not in ("conventional_nsites", "_held_out")},
            }
        )
    frame = pd.DataFrame(rows)
    keep = ["base", "material_id", "formula", "formula_anonymous", "structure_class",
            "spacegroup_number", "nsites", "e_form_ev_per_atom", "split", "structure_json"]  # fmt: skip
    return frame[keep]


def base_row(bases: pd.DataFrame, base: str) -> pd.Series:
    """The row of ``base`` in the base compounds table (schema ``base_compounds``), or one
    sentence why it is missing."""
    rows = bases[bases["base"] == base]
    if rows.empty:
        raise UserError(
            f"base compound '{base}' is not in the base compounds table "
            f"({', '.join(bases['base'])}); add it to base_compounds in config/config.yaml."
        )
    return rows.iloc[0]
