"""Write ``src/matdisc/resources/ionic_radii.csv``: the radius (Å) of each element
used by the voxel grids.

The radius is the width σ of the element's Gaussian in the density map and, times the
label fraction, the radius of its label sphere in the species map (seed 000, eq. 1).
See ``resources/ionic_radii.md`` for the choice and the fallbacks.

Sources (pymatgen's element data, Shannon 1976 radii):
1. ``average_ionic_radius``: the mean of the element's Shannon radii over all its oxidation
   states that pymatgen lists (what "the ionic radius of an atom" means when a compound's
   oxidation states are not assigned, as in intermetallics and Heuslers);
2. for elements without any ionic radius (H and the noble gases He, Ne, Ar, Kr, Rn):
   the empirical atomic radius (Slater 1964), else the calculated one (Clementi 1967).
Elements with none of these (Es and heavier) are left out: voxelizing them is an error.

Run from the repository root: ``python resources/ionic_radii.py``.
"""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

from pymatgen.core import Element

log = logging.getLogger("ionic_radii")

#: Package data (read through importlib.resources by matdisc.voxel.radii).
OUT = Path(__file__).resolve().parents[1] / "src" / "matdisc" / "resources" / "ionic_radii.csv"
MAX_Z = 118


def radius(z: int) -> tuple[float, str] | None:
    """(radius Å, source) of element ``z``, or None when pymatgen knows no radius."""
    el = Element.from_Z(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidates = (
            ("average_ionic_radius", el.average_ionic_radius),
            ("atomic_radius", el.atomic_radius),
            ("atomic_radius_calculated", el.atomic_radius_calculated),
        )
    for source, value in candidates:
        if value is not None and float(value) > 0:
            return round(float(value), 4), source
    return None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    missing = []
    for z in range(1, MAX_Z + 1):
        found = radius(z)
        if found is None:
            missing.append(Element.from_Z(z).symbol)
            continue
        rows.append((z, Element.from_Z(z).symbol, *found))
    with OUT.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["z", "symbol", "radius_angstrom", "source"])
        writer.writerows(rows)
    by_source: dict[str, int] = {}
    for row in rows:
        by_source[row[3]] = by_source.get(row[3], 0) + 1
    log.info("wrote %s: %d elements %s; no radius: %s", OUT, len(rows), by_source, missing)


if __name__ == "__main__":
    main()
