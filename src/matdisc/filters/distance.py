"""Shortest interatomic distance of a periodic crystal, periodic images included.

The seed's first filter (pymatgen's validity check, 0.5 Å threshold) asks that every pair
of sites be further apart than a minimum distance. Here "every pair" includes a site and
its own periodic images and pairs whose closest approach is across a cell face: all
lattice translations that can bring two sites within ``cutoff`` are searched
(:func:`matdisc.geometry.shortest_distance`), so the answer is exact for any cell shape,
not only the minimum-image one.
"""

from __future__ import annotations

from typing import Any

from matdisc.geometry import shortest_distance


def min_distance(structure: Any, cutoff: float = 3.0) -> float:
    """Shortest interatomic distance (Å) of a pymatgen ``Structure`` (images included);
    exact below ``cutoff`` Å, NaN without sites."""
    return shortest_distance(structure.frac_coords, structure.lattice.matrix, cutoff)


def distances_valid(structure: Any, threshold: float = 0.5) -> bool:
    """True when no two sites (periodic images included) are closer than ``threshold`` Å."""
    return bool(min_distance(structure, cutoff=max(threshold, 1e-6)) >= threshold)
