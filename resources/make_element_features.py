"""Write ``src/matdisc/resources/element_features.json``: one-hot binned element
descriptors for CGCNN.

The node features of the crystal graphs (Xie & Grossman 2018, as used by Court et al. 2020):
group, period, Pauling electronegativity, covalent radius, valence electrons, first
ionisation energy, electron affinity, block and atomic volume, each one-hot encoded.
Categorical descriptors (group, period, valence electrons, block) get one slot per value;
continuous ones get ``N_BINS`` equal-width bins between the smallest and largest value
over the elements covered (atomic volume on a log scale, as its values span two decades).
A value pymatgen does not know leaves that descriptor's slots all zero (counted below).

Sources: pymatgen's element data (group, row, X, ionisation energies, electron affinity,
block, molar volume) and ASE's covalent radii (Cordero et al. 2008).

Run from the repository root: ``python resources/make_element_features.py``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
from ase.data import covalent_radii
from pymatgen.core import Element

log = logging.getLogger("make_element_features")

MAX_Z = 100  # H .. Fm: every element with the data below
N_BINS = 10
AVOGADRO = 6.02214076e23
#: Package data (read through importlib.resources by matdisc.graphs).
OUT = (
    Path(__file__).resolve().parents[1] / "src" / "matdisc" / "resources" / "element_features.json"
)


def _valence_electrons(group: int) -> int:
    """s + d electrons for groups 1-12, s + p for 13-18 (lanthanides/actinides: group 3)."""
    return group if group <= 12 else group - 10


def _raw(z: int) -> dict[str, float | int | str | None]:
    el = Element.from_Z(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = el.X
        ies = el.ionization_energies
        ea = el.electron_affinity
        mv = el.molar_volume
    group = int(el.group)
    return {
        "group": group,
        "period": int(el.row),
        "electronegativity": None if x is None or math.isnan(x) else float(x),
        "covalent_radius": float(covalent_radii[z]),
        "valence_electrons": _valence_electrons(group),
        "first_ionisation_energy": float(ies[0]) if ies and ies[0] is not None else None,
        "electron_affinity": None if ea is None else float(ea),
        "block": str(el.block),
        # cm^3/mol -> Å^3 per atom
        "atomic_volume": None if mv is None else float(mv) * 1e24 / AVOGADRO,
    }


CATEGORIES = {
    "group": list(range(1, 19)),
    "period": list(range(1, 8)),
    "valence_electrons": list(range(1, 13)),
    "block": ["s", "p", "d", "f"],
}
CONTINUOUS = {  # name -> log scale?
    "electronegativity": False,
    "covalent_radius": False,
    "first_ionisation_energy": False,
    "electron_affinity": False,
    "atomic_volume": True,
}
ORDER = [
    "group",
    "period",
    "electronegativity",
    "covalent_radius",
    "valence_electrons",
    "first_ionisation_energy",
    "electron_affinity",
    "block",
    "atomic_volume",
]


def build() -> dict:
    raw = {z: _raw(z) for z in range(1, MAX_Z + 1)}
    edges: dict[str, list[float]] = {}
    for name, use_log in CONTINUOUS.items():
        values = np.array([raw[z][name] for z in raw if raw[z][name] is not None], dtype=float)
        values = np.log(values) if use_log else values
        edges[name] = np.linspace(values.min(), values.max(), N_BINS + 1).tolist()
    slots: list[str] = []
    for name in ORDER:
        if name in CATEGORIES:
            slots += [f"{name}={v}" for v in CATEGORIES[name]]
        else:
            slots += [f"{name}_bin{i}" for i in range(N_BINS)]
    matrix = np.zeros((MAX_Z + 1, len(slots)), dtype=np.uint8)  # row 0 unused (no element)
    missing: dict[str, list[str]] = {}
    for z, values in raw.items():
        offset = 0
        for name in ORDER:
            value = values[name]
            width = len(CATEGORIES[name]) if name in CATEGORIES else N_BINS
            if value is None:
                missing.setdefault(name, []).append(Element.from_Z(z).symbol)
            elif name in CATEGORIES:
                matrix[z, offset + CATEGORIES[name].index(value)] = 1
            else:
                v = math.log(value) if CONTINUOUS[name] else value
                idx = int(np.searchsorted(edges[name], v, side="right")) - 1
                matrix[z, offset + min(max(idx, 0), N_BINS - 1)] = 1
            offset += width
    for name, symbols in missing.items():
        log.info("%s unknown for %d elements (slots left zero): %s", name, len(symbols), symbols)
    return {
        "description": "One-hot binned element descriptors (Xie & Grossman 2018 style); "
        "row index = atomic number, row 0 unused. Made by make_element_features.py.",
        "max_z": MAX_Z,
        "slots": slots,
        "bin_edges": {k: {"log_scale": CONTINUOUS[k], "edges": v} for k, v in edges.items()},
        "missing": missing,
        "features": matrix.tolist(),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    data = build()
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    log.info("wrote %s: %d elements x %d slots", OUT, data["max_z"], len(data["slots"]))


if __name__ == "__main__":
    main()
