"""Shortest interatomic distance of a periodic crystal, periodic images included.

The seed's first filter (pymatgen's validity check, 0.5 Å threshold) asks that every pair
of sites be further apart than a minimum distance. Here "every pair" includes a site and
its own periodic images and pairs whose closest approach is across a cell face: all
lattice translations that can bring two sites within ``cutoff`` are searched, so the
answer is exact for any cell shape, not only the minimum-image one.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


def _image_range(matrix: np.ndarray, cutoff: float) -> np.ndarray:
    """Integer translations (M, 3) that can bring two wrapped sites within ``cutoff`` Å.

    Separations are first wrapped to [-0.5, 0.5) of a cell along each axis; a translation
    n then moves two sites at least (|n| - 0.5) plane spacings apart.
    """
    volume = abs(float(np.linalg.det(matrix)))
    counts = []
    for k in range(3):
        other = np.cross(matrix[(k + 1) % 3], matrix[(k + 2) % 3])
        spacing = volume / float(np.linalg.norm(other))  # distance between lattice planes
        counts.append(max(1, int(np.ceil(cutoff / spacing + 0.5))))
    ranges = [range(-n, n + 1) for n in counts]
    return np.array(list(itertools.product(*ranges)), dtype=np.float64)


def min_distance_arrays(frac: np.ndarray, matrix: np.ndarray, cutoff: float = 3.0) -> float:
    """Shortest distance (Å) between any two sites or a site and its own image.

    frac: (n, 3) fractional coordinates; matrix: (3, 3) lattice vectors as rows (Å).
    cutoff: translations are searched far enough to find every distance below this (Å)
    exactly; above it, the value is the minimum over the searched translations (at least
    the 26 neighbouring cells). NaN for a structure without sites.
    """
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    matrix = np.asarray(matrix, dtype=np.float64)
    if len(frac) == 0:
        return float("nan")
    shifts = _image_range(matrix, cutoff)  # (M, 3)
    delta = frac[None, :, :] - frac[:, None, :]  # (n, n, 3)
    delta -= np.round(delta)  # wrapped to [-0.5, 0.5]
    # (n, n, M, 3) fractional separations over all searched translations
    cart = (delta[:, :, None, :] + shifts[None, None, :, :]) @ matrix
    dist = np.sqrt(np.einsum("ijmk,ijmk->ijm", cart, cart))
    zero = np.all(shifts == 0, axis=1)
    idx = np.arange(len(frac))
    dist[idx, idx, np.flatnonzero(zero)[0]] = np.inf  # a site with itself, no translation
    return float(dist.min())


def min_distance(structure: Any, cutoff: float = 3.0) -> float:
    """Shortest interatomic distance (Å) of a pymatgen ``Structure`` (images included)."""
    return min_distance_arrays(structure.frac_coords, structure.lattice.matrix, cutoff)


def distances_valid(structure: Any, threshold: float = 0.5) -> bool:
    """True when no two sites (periodic images included) are closer than ``threshold`` Å."""
    return bool(min_distance(structure, cutoff=max(threshold, 1e-6)) >= threshold)
