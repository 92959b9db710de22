"""Reconstruction metrics of the representation (seed 000, Table 5 and Fig. 4).

* :func:`site_emd`: earth-mover distance between the predicted and the true sites, Å.
  Every site carries mass 1/n of its structure; the cost of moving mass is the periodic
  minimum-image distance, with both structures' fractional coordinates measured in the
  *true* cell (so an error in the cell lengths, reported by :func:`lattice_mae`, does
  not count twice). With equal site counts this is the mean distance of the optimal
  one-to-one assignment; with unequal ones, of the assignment between lcm(n_p, n_t)
  copies of the sites (a linear program when that is large). Species are not part of it
  (the paper's definition).
* :func:`delta_n_sites`: |n_pred - n_true|.
* :func:`lattice_mae`: mean |Δa|, |Δb|, |Δc| in Å.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment, linprog

from matdisc.geometry import distances, lattice_translations

#: Largest number of site copies (the lcm of the two site counts) solved as an assignment;
#: above it the transport problem goes to a linear program.
_MAX_ASSIGNMENT = 240


def _frac_and_matrix(structure: Any) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.asarray(structure.frac_coords, dtype=np.float64).reshape(-1, 3),
        np.asarray(structure.lattice.matrix, dtype=np.float64),
    )


def site_emd(pred: Any, true: Any) -> float:
    """Earth-mover distance (Å) between the sites of two structures; NaN if one is empty."""
    frac_p, _ = _frac_and_matrix(pred)
    frac_t, matrix = _frac_and_matrix(true)
    n_p, n_t = len(frac_p), len(frac_t)
    if n_p == 0 or n_t == 0:
        return float("nan")
    # The home cell and its 26 neighbours (cutoff 0): exact for the orthogonal cells of the
    # voxel grids; in skewed cells the nearest of these 27 images counts.
    cost = distances(frac_p, frac_t, matrix, lattice_translations(matrix, 0.0))
    copies = math.lcm(n_p, n_t)
    if copies <= _MAX_ASSIGNMENT:
        # Masses in units of 1/lcm: the transport problem has an optimum with whole units
        # (its constraint matrix is totally unimodular), so it is the optimal one-to-one
        # assignment between copies, lcm/n of each site, exact and many times faster
        # than the linear program.
        cost = np.repeat(np.repeat(cost, copies // n_p, axis=0), copies // n_t, axis=1)
        rows, cols = linear_sum_assignment(cost)
        return float(cost[rows, cols].mean())
    # Transport problem: flows f_ij >= 0, row sums 1/n_p, column sums 1/n_t.
    a_rows = np.kron(np.eye(n_p), np.ones(n_t))
    a_cols = np.kron(np.ones(n_p), np.eye(n_t))
    result = linprog(
        cost.ravel(),
        A_eq=np.vstack([a_rows, a_cols]),
        b_eq=np.concatenate([np.full(n_p, 1.0 / n_p), np.full(n_t, 1.0 / n_t)]),
        bounds=(0, None),
        method="highs",
    )
    if not result.success:
        raise RuntimeError(f"earth-mover transport problem failed: {result.message}")
    return float(result.fun)


def delta_n_sites(pred: Any, true: Any) -> int:
    """|number of predicted sites - number of true sites|; structures or counts."""
    n_p = pred if isinstance(pred, (int, np.integer)) else len(pred)
    n_t = true if isinstance(true, (int, np.integer)) else len(true)
    return abs(int(n_p) - int(n_t))


def lattice_mae(pred: Any, true: Any) -> float:
    """Mean absolute error (Å) of the cell lengths a, b, c; structures or (3,) arrays."""
    return float(np.mean(np.abs(_abc(pred) - _abc(true))))


def _abc(x: Any) -> np.ndarray:
    if hasattr(x, "lattice"):
        return np.asarray(x.lattice.abc, dtype=np.float64)
    out = np.asarray(x, dtype=np.float64).reshape(-1)
    if out.shape != (3,):
        raise ValueError(f"expected cell lengths (a, b, c), got shape {out.shape}")
    return out
