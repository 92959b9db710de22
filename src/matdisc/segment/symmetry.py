"""Partly filled orbits of a decoded crystal rounded to whole (invert step 5).

A blurred decoded density can show five of the eight tetrahedral holes of a Heusler cell,
or spurious atoms in the holes of a rock-salt cell, and the UNet labels every atom on its
own, so equivalent sites can get different elements; no cubic crystal has a partly filled
orbit or an orbit of two species. The generated cells are cubic, so the sites' positions
and species carry the symmetry:

1. :func:`partial_symmetries`: the operations x -> R x + t of the cubic holohedry m-3m
   (the 48 signed axis permutations R of :func:`cubic_rotations`, any translation t)
   under which at least ``support`` of the sites land on a site of their own species.
2. :func:`complete_orbits`: the sites' images under them are added as empty positions
   until the set is closed; positions linked by an operation form orbits, an orbit at
   least ``occupancy`` full is filled and the others are emptied, and every orbit takes
   the species with the most votes (voxels) over its sites.
"""

from __future__ import annotations

import itertools

import numpy as np

from matdisc.geometry import (
    close_groups,
    components,
    min_image,
    nearest_sites,
    squared_distances,
)


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
#: sites whose images :func:`partial_symmetries` checks at once (then drops the candidate
#: operations that can no longer reach their support)
_SITES_PER_STEP = 4


def partial_symmetries(
    frac: np.ndarray,
    numbers: np.ndarray,
    lattice: np.ndarray,
    *,
    tolerance: float,
    support: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The operations x -> R x + t (R in m-3m, any t) under which at least ``support`` of
    the sites land within ``tolerance`` Å of a site of their own atomic number.

    A site may land on nothing: a decoded crystal with an atom missing from an orbit, or
    one too many, keeps the operations of its crystal.
    Returns rotations (m, 3, 3) and translations (m, 3) in [0, 1), the identity first.

    Candidates come from a histogram: a translation that moves k sites onto sites is
    hit by k of the differences x_j - R x_i (i, j of one species) within its bin or the
    neighbouring ones, so only bins that reach ``support`` get the exact check; a kept
    operation's translation is the mean difference over the pairs it matches. Unless
    one of them moves an atom onto another atom, only the identity is returned: mapping
    atoms onto themselves (a rotation about the one atom of each species) says nothing.
    """
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3) % 1.0
    numbers = np.asarray(numbers).reshape(-1)
    lattice = np.asarray(lattice, dtype=np.float64).reshape(3)
    n = len(frac)
    identity = (np.eye(3)[None], np.zeros((1, 3)))
    need = int(np.ceil(float(support) * n - 1e-9))
    if n < 2 or need < 1:
        return identity
    tol = float(tolerance)
    rx = np.einsum("rij,nj->rni", _ROTATIONS, frac)  # (48, n, 3)
    diff = (frac[None, None, :, :] - rx[:, :, None, :]) % 1.0  # (48, n_i, n_j, 3)
    same = numbers[:, None] == numbers[None, :]
    bins = np.maximum(1, np.floor(lattice / max(tol, 1e-9)).astype(np.int64))
    cell = np.minimum((diff * bins).astype(np.int64), bins - 1)
    flat = (cell[..., 0] * bins[1] + cell[..., 1]) * bins[2] + cell[..., 2]  # (48, n, n)
    n_bins = int(np.prod(bins))
    keyed = (np.arange(len(_ROTATIONS))[:, None, None] * n_bins + flat)[:, same]
    counts = np.bincount(keyed.ravel(), minlength=len(_ROTATIONS) * n_bins)
    counts = counts.reshape(len(_ROTATIONS), *bins)
    near = counts  # the sum over the bin and its 26 neighbours, one axis at a time
    for axis in (1, 2, 3):
        near = near + np.roll(near, 1, axis=axis) + np.roll(near, -1, axis=axis)
    hot = (near >= need).reshape(len(_ROTATIONS), -1)
    rot, i, j = np.nonzero(same[None] & hot[np.arange(len(_ROTATIONS))[:, None, None], flat])
    if rot.size == 0:
        return identity
    # one candidate per (rotation, fine cell of its translation)
    fine = np.floor(diff[rot, i, j] * bins * 4).astype(np.int64)
    _, first = np.unique(np.column_stack([rot, fine]), axis=0, return_index=True)
    rot, shift = rot[first], diff[rot[first], i[first], j[first]]
    moved = rx[rot] + shift[:, None, :]  # (c, n, 3)
    # each moved site's nearest site of its own species, a few sites at a time from the
    # species of fewest sites (dense (c, k, m) searches); a candidate that has already
    # missed more than n - need sites is dropped
    target = np.zeros(moved.shape[:2], dtype=np.int64)
    d2 = np.full(moved.shape[:2], np.inf)
    alive = np.arange(len(rot))
    misses = np.zeros(len(rot), dtype=np.int64)
    species, counts = np.unique(numbers, return_counts=True)
    for z in species[np.argsort(counts, kind="stable")]:
        of_z = np.flatnonzero(numbers == z)
        for part in np.array_split(of_z, -(-len(of_z) // _SITES_PER_STEP)):
            to_each = squared_distances(moved[alive[:, None], part], frac[of_z], lattice)
            nearest = to_each.argmin(axis=-1)
            found = np.take_along_axis(to_each, nearest[..., None], axis=-1)[..., 0]
            d2[alive[:, None], part] = found
            target[alive[:, None], part] = of_z[nearest]
            misses[alive] += (found > tol * tol).sum(axis=1)
            alive = alive[misses[alive] <= n - need]
    hit = d2 <= tol * tol
    ok = np.zeros(len(rot), dtype=bool)
    ok[alive] = True
    # operations that only map atoms onto themselves are no evidence (any rotation about
    # the one atom of each species does that): one must move an atom onto another
    if not (ok & (hit & (target != np.arange(n))).any(axis=1)).any():
        return identity
    rot, shift, target, hit, moved = rot[ok], shift[ok], target[ok], hit[ok], moved[ok]
    # refine each translation on the pairs it matches
    delta = min_image(frac[target] - moved)
    shift = (shift + (delta * hit[..., None]).sum(axis=1) / hit.sum(axis=1)[:, None]) % 1.0
    # one operation per rotation and site mapping (candidates of one operation agree)
    _, first = np.unique(
        np.column_stack([rot, np.where(hit, target, -1)]), axis=0, return_index=True
    )
    rotations, translations = _ROTATIONS[rot[first]], shift[first]
    # the identity again: no rotation, and a translation shorter than the tolerance
    is_identity = (rotations == np.eye(3)).all(axis=(1, 2)) & (
        squared_distances(translations, np.zeros((1, 3)), lattice)[:, 0] < tol**2
    )
    return (
        np.concatenate([identity[0], rotations[~is_identity]]),
        np.concatenate([identity[1], translations[~is_identity]]),
    )


def complete_orbits(
    frac: np.ndarray,
    votes: np.ndarray,
    lattice: np.ndarray,
    *,
    tolerance: float,
    support: float,
    occupancy: float,
    max_positions: int = 160,
    extra: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Round every orbit of a decoded crystal to whole: filled, or empty.

    A blurred density can show five of the eight tetrahedral holes of a Heusler cell, or
    two spurious atoms in the holes of a rock-salt cell; no cubic crystal has a partly
    filled orbit. With the operations of :func:`partial_symmetries` (``support``), the
    sites' images are added as empty positions until the set is closed, positions linked
    by an operation form orbits, and an orbit whose share of occupied positions is at
    least ``occupancy`` is filled (its empty positions become atoms) while the others are
    removed. Every position of an orbit takes the orbit's summed votes, so the orbit has
    one species.

    frac: (n, 3); votes: (n, 256) voxel votes per site and atomic number; lattice: cell
    lengths (Å). Returns (frac, votes) of the rounded crystal, or the input unchanged when
    it already holds more than ``max_positions`` sites (no search is made), the only
    operation is the identity, the closure would pass ``max_positions`` or every
    orbit would be removed. ``extra``: (n, k) more per-site scores, summed per orbit like
    the votes and returned third.
    """
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3) % 1.0
    votes = np.asarray(votes, dtype=np.float64)
    lattice = np.asarray(lattice, dtype=np.float64).reshape(3)
    unchanged = (frac, votes) if extra is None else (frac, votes, extra)
    if len(frac) > max_positions:
        # the closure would pass the bound anyway; the operations' search alone needs
        # (48, n, n) arrays, gigabytes for the thousands of sites of a garbled map
        return unchanged
    rotations, translations = partial_symmetries(
        frac, votes.argmax(axis=1), lattice, tolerance=tolerance, support=support
    )
    if len(rotations) < 2:
        return unchanged
    tol2 = float(tolerance) ** 2
    m = len(rotations)
    positions = frac
    while True:
        images = (np.einsum("rij,nj->rni", rotations, positions) + translations[:, None]) % 1.0
        flat = images.reshape(-1, 3)
        d2, nearest = nearest_sites(flat, positions, lattice)  # (m * p,)
        outside = d2 > tol2
        if not outside.any():
            break
        new = flat[outside]
        # one new position per group of images within tolerance of each other
        group = close_groups(new, lattice, float(tolerance))
        _, first = np.unique(group, return_index=True)
        positions = np.concatenate([positions, new[first]])
        if len(positions) > max_positions:
            return unchanged
    # the set is closed: every image lies on a position, the nearest one
    n, p = len(frac), len(positions)
    nearest = nearest.reshape(m, p)
    linked = np.zeros((p, p), dtype=bool)
    linked[np.broadcast_to(np.arange(p), nearest.shape), nearest] = True
    orbit = components(linked | linked.T)
    k = int(orbit.max()) + 1
    size = np.bincount(orbit, minlength=k)
    filled = np.bincount(orbit[:n], minlength=k)
    keep = filled / size >= float(occupancy)
    if not keep.any():
        return unchanged
    chosen = keep[orbit]
    summed = np.zeros((k, votes.shape[1]))
    np.add.at(summed, orbit[:n], votes)
    if extra is None:
        return positions[chosen], summed[orbit[chosen]]
    summed_extra = np.zeros((k, extra.shape[1]))
    np.add.at(summed_extra, orbit[:n], extra)
    return positions[chosen], summed[orbit[chosen]], summed_extra[orbit[chosen]]
