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


# -- orbit completion ------------------------------------------------------------------


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

    Unlike :func:`position_symmetries` a site may land on nothing: a decoded crystal with
    an atom missing from an orbit, or one too many, keeps the operations of its crystal.
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
    near = np.zeros_like(counts)
    for offset in itertools.product((-1, 0, 1), repeat=3):
        near += np.roll(counts, offset, axis=(1, 2, 3))
    hot = (near >= need).reshape(len(_ROTATIONS), -1)
    rot, i, j = np.nonzero(same[None] & hot[np.arange(len(_ROTATIONS))[:, None, None], flat])
    if rot.size == 0:
        return identity
    # one candidate per (rotation, fine cell of its translation)
    fine = np.floor(diff[rot, i, j] * bins * 4).astype(np.int64)
    _, first = np.unique(np.column_stack([rot, fine]), axis=0, return_index=True)
    rot, shift = rot[first], diff[rot[first], i[first], j[first]]
    moved = rx[rot] + shift[:, None, :]  # (c, n, 3)
    d2 = _squared_distances(moved, frac, lattice)
    d2[:, ~same] = np.inf
    target = d2.argmin(axis=-1)
    hit = np.take_along_axis(d2, target[..., None], axis=-1)[..., 0] <= tol * tol
    ok = hit.sum(axis=1) >= need
    # operations that only map atoms onto themselves are no evidence (any rotation about
    # the one atom of each species does that): one must move an atom onto another
    if not (ok & (hit & (target != np.arange(n))).any(axis=1)).any():
        return identity
    rot, shift, target, hit, moved = rot[ok], shift[ok], target[ok], hit[ok], moved[ok]
    # refine each translation on the pairs it matches
    delta = frac[target] - moved
    delta -= np.rint(delta)
    shift = (shift + (delta * hit[..., None]).sum(axis=1) / hit.sum(axis=1)[:, None]) % 1.0
    # one operation per rotation and site mapping (candidates of one operation agree)
    _, first = np.unique(
        np.column_stack([rot, np.where(hit, target, -1)]), axis=0, return_index=True
    )
    rotations, translations = _ROTATIONS[rot[first]], shift[first]
    is_identity = (rotations == np.eye(3)).all(axis=(1, 2)) & (
        np.sum(((translations - np.rint(translations)) * lattice) ** 2, axis=1) < tol**2
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
) -> tuple[np.ndarray, np.ndarray]:
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
    the only operation is the identity, the closure would pass ``max_positions`` or every
    orbit would be removed.
    """
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3) % 1.0
    votes = np.asarray(votes, dtype=np.float64)
    lattice = np.asarray(lattice, dtype=np.float64).reshape(3)
    rotations, translations = partial_symmetries(
        frac, votes.argmax(axis=1), lattice, tolerance=tolerance, support=support
    )
    if len(rotations) < 2:
        return frac, votes
    tol2 = float(tolerance) ** 2
    m = len(rotations)
    positions = frac
    while True:
        images = (np.einsum("rij,nj->rni", rotations, positions) + translations[:, None]) % 1.0
        flat = images.reshape(-1, 3)
        d2 = _squared_distances(flat[None], positions, lattice)[0]  # (m * p, p)
        outside = d2.min(axis=1) > tol2
        if not outside.any():
            break
        new = flat[outside]
        # one new position per group of images within tolerance of each other
        group = _components(_squared_distances(new[None], new, lattice)[0] <= tol2)
        _, first = np.unique(group, return_index=True)
        positions = np.concatenate([positions, new[first]])
        if len(positions) > max_positions:
            return frac, votes
    # the set is closed: every image lies on a position, the nearest one
    n, p = len(frac), len(positions)
    nearest = d2.argmin(axis=1).reshape(m, p)
    linked = np.zeros((p, p), dtype=bool)
    linked[np.broadcast_to(np.arange(p), nearest.shape), nearest] = True
    orbit = _components(linked | linked.T)
    k = int(orbit.max()) + 1
    size = np.bincount(orbit, minlength=k)
    filled = np.bincount(orbit[:n], minlength=k)
    keep = filled / size >= float(occupancy)
    if not keep.any():
        return frac, votes
    summed = np.zeros((k, votes.shape[1]))
    np.add.at(summed, orbit[:n], votes)
    chosen = keep[orbit]
    return positions[chosen], summed[orbit[chosen]]
