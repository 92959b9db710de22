"""One setting per crystal: the origin and orientation of a cubic cell, chosen from its sites.

A cubic crystal can be placed in its cube in many ways: any site may sit at the origin and
any of the 48 operations of the cube's point group (m-3m: axis permutations and sign flips)
may turn it. The Materials Project's cells come in whichever setting their source used.
Where the crystal has the full m-3m symmetry about the origin the choice changes nothing;
where it lacks an operation, the map changes. A half-Heusler XYZ (F-43m) fills one of the
two sets of tetrahedral holes of its cell and leaves the other empty; inversion swaps the two
sets, so the store holds half-Heuslers with either set filled. A VAE that cannot tell the two
from the rest of the map decodes their mean: a full Heusler (docs/experiments.md).

:func:`canonical_setting` removes the choice. The origin goes to a site of the heaviest
element, and of the (sites of that element) × 48 settings the one whose sites score highest
on a fixed list of plane waves is kept. Each score is ``sum_i Z_i cos(2π k·u_i + φ)`` over
the sites i; the settings are compared on the first wave, those within a tolerance of the
best on the next, and so on. The first wave, ``sin 2π(x + y + z)``, is odd under inversion:
of the two face-centred sets a quarter and three quarters along a half-Heusler's cell
diagonal, the heavier always goes to ¾, so its empty set always lands at ¼ (or at ½ when the
heaviest atom is the one between the other two). The later waves break the ties left in
P and I cells.
Settings that tie on every wave give the same sites (up to the tolerance), hence the same map.
"""

from __future__ import annotations

import itertools

import numpy as np

from matdisc.voxel.cell import CubicCell

#: The 48 operations of m-3m as signed permutation matrices (identity first).
POINT_OPERATIONS = np.array(
    [
        np.diag(signs)[list(perm)]
        for perm in itertools.permutations(range(3))
        for signs in itertools.product((1, -1), repeat=3)
    ],
    dtype=np.float64,
)
#: (k, φ) of the scoring waves, in the order they are compared. (1, 1, 1) vanishes on an I
#: cell, (1, 2, 3) on an F cell; (2, 4, 6) is seen by every centring. No signed permutation
#: other than the identity maps (1, 2, 3) or (2, 4, 6) onto itself, and φ ∉ {0, π} makes
#: each wave odd as well as even parts, so together they separate every setting that
#: changes the sites.
WAVES = (
    (np.array([1.0, 1.0, 1.0]), -np.pi / 2),
    (np.array([1.0, 2.0, 3.0]), 0.7),
    (np.array([2.0, 4.0, 6.0]), 0.7),
)
#: Scores within this share of sum(Z) of the best count as ties: rounding in the stored
#: coordinates of sites on special positions, not a real difference of settings.
TIE_TOLERANCE = 1e-3


def canonical_setting(cell: CubicCell) -> CubicCell:
    """The cell moved to its canonical origin and orientation (see the module docstring).

    Lattice, species and method are kept; the sites are transformed, wrapped into [0, 1)
    and sorted by atomic number, then by position.
    """
    frac = np.asarray(cell.frac, dtype=np.float64)
    numbers = np.asarray(cell.numbers, dtype=np.int64)
    origins = frac[numbers == numbers.max()]
    candidates = _settings(frac, origins).reshape(-1, len(numbers), 3)
    alive = np.arange(len(candidates))
    weight = numbers.astype(np.float64)
    tolerance = TIE_TOLERANCE * weight.sum()
    for k, phase in WAVES:
        score = np.cos(2.0 * np.pi * candidates[alive] @ k + phase) @ weight
        alive = alive[score >= score.max() - tolerance]
        if len(alive) == 1:
            break
    best = candidates[alive[0]] % 1.0
    best[best > 1.0 - 1e-9] = 0.0
    order = np.lexsort((best[:, 2], best[:, 1], best[:, 0], numbers))
    return CubicCell(
        lattice=cell.lattice, frac=best[order], numbers=numbers[order], method=cell.method
    )


def _settings(frac: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """(origins, 48, n, 3) fractional coordinates of the sites with each origin site moved
    to 0 and each point operation applied."""
    shifted = frac[None, :, :] - origins[:, None, :]  # (o, n, 3)
    return np.einsum("pij,onj->opni", POINT_OPERATIONS, shifted)
