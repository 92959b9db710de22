"""Symmetry-equivalent sites of an inverted crystal take one species.

The UNet labels every atom on its own, so the equivalent sites of one Wyckoff orbit (the
three oxygens of a perovskite, the four anions of a rock-salt cell) often get different
elements and the crystal loses its stoichiometry, although the positions are right. The
generated cells are cubic, so the sites' positions alone carry the symmetry:

1. :func:`position_symmetries`: the operations x -> R x + t of the cubic holohedry m-3m
   (the 48 signed axis permutations R, any translation t) that map the set of positions
   onto itself, every site landing within ``tolerance`` Å of a distinct site (the
   permutation of the sites each one induces is returned).
2. The positions alone can be more symmetric than the crystal: in rock salt a shift by
   half a cell edge maps the cations onto the anions. An operation is kept only if the
   labels agree with it: at least ``agreement`` of the sites it moves land on a site of
   their own species (sites it leaves in place say nothing). A true operation of a
   well-labelled crystal keeps all of them; in rock salt the half-edge shift keeps none;
   in a full Heusler X2YZ the shift swapping Y and Z keeps half (the X sites).
3. :func:`species_orbits`: sites linked by a kept operation form one orbit, and
   :func:`symmetrize_species` gives every orbit the element with the most votes (voxels)
   summed over its sites.
"""

from __future__ import annotations

import itertools

import numpy as np

from matdisc.segment.invert import _components


def cubic_rotations() -> np.ndarray:
    """(48, 3, 3) the point operations of m-3m on fractional coordinates of a cubic cell
    (signed permutation matrices), the identity first."""
    ops = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[np.arange(3), perm] = signs
            ops.append(m)
    return np.stack(ops)


_ROTATIONS = cubic_rotations()


def position_symmetries(frac: np.ndarray, lattice: np.ndarray, tolerance: float) -> np.ndarray:
    """(m, n) site permutations of the m distinct operations R x + t (R in m-3m) that map
    the n positions ``frac`` (n, 3) onto themselves within ``tolerance`` Å (periodic;
    ``lattice``: the cell lengths a, b, c in Å). Row 0 is the identity."""
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    lattice = np.asarray(lattice, dtype=np.float64).reshape(3)
    n = len(frac)
    identity = np.arange(n)
    if n < 2:
        return identity[None, :]
    tol2 = float(tolerance) ** 2
    rx = np.einsum("rij,nj->rni", _ROTATIONS, frac)  # (48, n, 3)
    t = frac[None, :, :] - rx[:, :1, :]  # (48, n, 3): site 0 lands on site j
    # Pre-check on a grid of bins at least ``tolerance`` wide: a point within tolerance of
    # a site lies in the site's bin or a neighbouring one, so a candidate whose moved sites
    # all fall in marked bins is kept for the exact check (the rest cannot be symmetries).
    bins = np.maximum(1, np.floor(lattice / max(float(tolerance), 1e-9)).astype(np.int64))
    marked = np.zeros(tuple(bins), dtype=bool)
    home = np.floor((frac % 1.0) * bins).astype(np.int64)
    for offset in itertools.product((-1, 0, 1), repeat=3):
        cell = (home + np.array(offset)) % bins
        marked[cell[:, 0], cell[:, 1], cell[:, 2]] = True
    flat = np.zeros((len(_ROTATIONS), n, n), dtype=np.int64)  # (48, n_t, n) bin index
    for axis in range(3):
        u = rx[:, None, :, axis] + t[:, :, None, axis]
        u %= 1.0
        u *= bins[axis]
        flat = flat * bins[axis] + np.minimum(u.astype(np.int64), bins[axis] - 1)
    hit = marked.ravel()[flat].all(axis=-1)
    rot, shift = np.nonzero(hit)
    if rot.size == 0:
        return identity[None, :]
    moved = rx[rot] + t[rot, shift][:, None, :]  # (c, n, 3)
    d2 = _squared_distances(moved, frac, lattice)  # (c, n, n)
    target = d2.argmin(axis=-1)
    close = (np.take_along_axis(d2, target[..., None], axis=-1)[..., 0] <= tol2).all(axis=1)
    bijective = (np.sort(target, axis=1) == identity).all(axis=1)
    target = target[close & bijective]
    # distinct permutations (rows keyed by a random 64-bit hash: collisions ~ 2^-64)
    weights = np.random.default_rng(0).integers(1, 2**62, size=n, dtype=np.int64)
    _, first = np.unique(target @ weights, return_index=True)
    perms = target[np.sort(first)]
    perms = perms[~(perms == identity).all(axis=1)]
    return np.concatenate([identity[None, :], perms])


def _squared_distances(moved: np.ndarray, frac: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """(c, n, m) squared minimum-image distances (Å²) of moved (c, n, 3) to frac (m, 3),
    accumulated axis by axis (several times faster than on (..., 3) arrays)."""
    out = np.zeros((*moved.shape[:2], len(frac)))
    for axis in range(3):
        d = moved[:, :, None, axis] - frac[None, None, :, axis]
        d -= np.rint(d)
        d *= lattice[axis]
        out += d * d
    return out


def species_orbits(
    frac: np.ndarray,
    numbers: np.ndarray,
    lattice: np.ndarray,
    *,
    tolerance: float,
    agreement: float,
) -> np.ndarray:
    """Orbit id (0..k-1) per site: sites linked by a position symmetry under which at least
    ``agreement`` of the sites it moves land on a site of the same atomic number
    (``numbers``)."""
    numbers = np.asarray(numbers).reshape(-1)
    n = len(numbers)
    perms = position_symmetries(frac, lattice, tolerance)[1:]
    linked = np.zeros((n, n), dtype=bool)
    if len(perms):
        # agreement among the sites an operation moves (fixed sites say nothing)
        moved = perms != np.arange(n)
        same = (numbers[perms] == numbers[None, :]) & moved
        keeps = same.sum(axis=1) / np.maximum(moved.sum(axis=1), 1)
        for perm in perms[keeps >= agreement]:
            linked[np.arange(n), perm] = True
    return _components(linked | linked.T)


def symmetrize_species(
    frac: np.ndarray,
    votes: np.ndarray,
    lattice: np.ndarray,
    *,
    tolerance: float,
    agreement: float,
) -> np.ndarray:
    """Atomic numbers (n,) after every orbit of :func:`species_orbits` takes the element
    with the most votes over its sites. votes: (n, 256) voxel votes per site and atomic
    number; a site's own species is its row's argmax (ties: the smaller atomic number)."""
    votes = np.asarray(votes, dtype=np.float64)
    numbers = votes.argmax(axis=1)
    orbit = species_orbits(frac, numbers, lattice, tolerance=tolerance, agreement=agreement)
    summed = np.zeros((int(orbit.max()) + 1, votes.shape[1]))
    np.add.at(summed, orbit, votes)
    return summed.argmax(axis=1)[orbit].astype(np.int64)
