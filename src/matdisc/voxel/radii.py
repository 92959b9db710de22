"""The per-element radius table (``matdisc/resources/ionic_radii.csv``) of the voxel grids."""

from __future__ import annotations

import csv
import functools
from importlib import resources
from pathlib import Path

import numpy as np

#: The table the package ships (package data, so it is found from an installed wheel
#: too); the checkout's ``resources/ionic_radii.py`` writes it.
DEFAULT_TABLE = Path(str(resources.files("matdisc") / "resources" / "ionic_radii.csv"))

MAX_Z = 118


def table_sha256(path: Path | str = DEFAULT_TABLE) -> str:
    """sha256 hex digest of a radius table file (recorded in the voxel store's attributes)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=4)
def radius_lookup(path: Path | str = DEFAULT_TABLE) -> np.ndarray:
    """(MAX_Z + 1,) float64 radius in Å indexed by atomic number; NaN = no radius known."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"radius table {path} is missing; regenerate it with python resources/ionic_radii.py "
            f"(from the repository root)"
        )
    table = np.full(MAX_Z + 1, np.nan)
    with path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            table[int(row["z"])] = float(row["radius_angstrom"])
    table.setflags(write=False)
    return table
