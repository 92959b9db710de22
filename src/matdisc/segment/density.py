"""Crystals read from the density alone: its peaks, each site's element fitted, the residual.

The density of the voxel grids is a sum of Z-weighted normalised Gaussians whose σ is the
element's radius (:mod:`matdisc.voxel.core`), so a map holds each atom's (Z, σ) pair, and
Z names the element. :func:`read_density` reads a crystal from the map without the UNet:

1. **Sites**: local maxima of the map (3 × 3 × 3, away from the grid's faces) above
   ``floor`` × its maximum, refined to sub-voxel precision by a parabola per axis,
   wrapped into the cell; maxima that are images of one atom (within ``merge`` Å) are one.
2. **Elements** (:func:`choose_elements`): each site's (Z, σ) is first estimated from a
   non-negative fit of the map with Gaussians of a few fixed widths at every site (the
   fitted mass is Z, the mass-weighted mean of σ² is σ²), and the nearest candidate
   element in (Z, σ) is the start. The sites of one orbit (spglib's equivalent atoms of
   the sites labelled by their estimates) then choose one element together: group by
   group, each takes the candidate whose Gaussians, beside the others, leave the least
   squared residual, and every pair of overlapping groups is tried at its best pair of
   candidates (a wide cation takes its anions' density unless both change at once);
   first with coarse labels, then with finer ones that split orbits of look-alike
   elements (Zr and Sn of ZrNiSn). From there each site is free: a site-by-site
   descent, and each site's next-best elements tried (``kicks``); a move is kept when
   it lowers the residual. On a map drawn from the read sites the residual is zero.
3. **Hidden atoms**: a light atom beside a heavy one can have no maximum of its own. It
   shows in the residual (map minus the fitted sites): residual maxima above
   ``residual_floor`` × the peak height of the weakest candidate element, further than
   ``min_distance`` Å from every site, become sites, and step 2 runs again (at most
   ``rounds`` times). A site that no element improves is emptied.
4. **Positions** (``polish``): each site moves to the maximum of the map minus the other
   sites' fitted Gaussians, and step 2 runs again.
5. **Hidden atoms whose neighbours took their density**: an O²⁻ between two heavy
   cations leaves no residual peak when the cations were read as wider, heavier elements.
   While the residual is above ``special_above`` of the map's squared norm, each group of
   special positions of the cubic cells (coordinates in {0, 1/4, 1/2, 3/4}: corners, face
   centres, edge centres, quarter positions, ...) is tried as sites beside the others,
   all elements chosen afresh, and the best group is kept if it removes ``special_gain``
   of the residual (at most ``special_rounds`` groups). The groups are orbits under the
   centring of the read sites and under that of the map's maxima (rock salt's anion
   orbit includes the body centre only with the F centring, which a half-read cell
   may have lost).

On the val maps of the default data the reader recovers the composition of most crystals
(``docs/experiments.md``); its failures are light, wide anions (O²⁻) in large cells.

The inner products need no (sites, d³) basis: a site's Gaussian on the grid is the outer
product of three axis profiles (:func:`matdisc.voxel.core.site_profiles`), so overlaps
are products of three dot products and the map is contracted one axis at a time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.linalg import cholesky, solve_triangular
from scipy.optimize import nnls

from matdisc.segment.species import normal_equations, project
from matdisc.voxel.core import site_profiles
from matdisc.voxel.grid import fraction_of_index, voxel_fractions

log = logging.getLogger(__name__)

#: Gaussian widths (Å) of the first, element-free fit of each site's mass and width; they
#: span the radius table (0.25 to 1.8 Å).
MOMENT_WIDTHS = (0.25, 0.4, 0.6, 0.8, 1.0, 1.25, 1.55, 1.9)
# Distances in (Z, σ) between a site's estimate and an element: one unit is this much.
_Z_UNIT = 2.0
_SIGMA_UNIT = 0.08


@dataclass(frozen=True)
class DensityRead:
    """A crystal read from a density map: ``frac`` (n, 3) fractional coordinates in the
    cell, ``numbers`` (n,) atomic numbers, ``residual`` the share of the map's squared
    norm its fit leaves unexplained, ``rounds`` how many rounds (residual peaks, special
    positions) added sites."""

    frac: np.ndarray
    numbers: np.ndarray
    residual: float
    rounds: int

    def structure(self, lattice_abc: Sequence[float]) -> Any:
        """The crystal as a pymatgen ``Structure`` in the orthogonal cell ``lattice_abc`` Å."""
        from pymatgen.core import Lattice, Structure

        a, b, c = (float(x) for x in lattice_abc)
        return Structure(Lattice.orthorhombic(a, b, c), self.numbers.tolist(), self.frac)


def peaks(
    grid: np.ndarray, lattice_abc: np.ndarray, padding: float, *, floor: float, merge: float
) -> np.ndarray:
    """(m, 3) fractional positions in [0, 1) of the map's local maxima above ``floor`` ×
    its maximum (images within ``merge`` Å are one; the highest image's position kept)."""
    grid = np.asarray(grid, dtype=np.float64)
    d = grid.shape[0]
    top = grid.max()
    if top <= 0:
        return np.zeros((0, 3))
    is_max = (grid == ndimage.maximum_filter(grid, size=3, mode="nearest")) & (grid > floor * top)
    index = np.argwhere(is_max)
    index = index[((index > 0) & (index < d - 1)).all(axis=1)]
    if not len(index):
        return np.zeros((0, 3))
    heights = grid[tuple(index.T)]
    index = index[np.argsort(-heights, kind="stable")]
    frac = fraction_of_index(index + _subvoxel(grid, index), d, padding) % 1.0
    return _merge_images(frac, np.asarray(lattice_abc, np.float64), merge)


def _subvoxel(grid: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(m, 3) offsets (voxels, within ±1/2) of the maxima of a parabola through each
    interior voxel ``index`` (m, 3) and its two neighbours along each axis."""
    offset = np.zeros(index.shape)
    centre = grid[tuple(index.T)]
    for axis in range(3):
        step = np.zeros(3, dtype=np.int64)
        step[axis] = 1
        up = grid[tuple((index + step).T)]
        down = grid[tuple((index - step).T)]
        curve = up - 2.0 * centre + down
        safe = np.where(curve < 0, curve, -1.0)
        offset[:, axis] = np.where(curve < 0, np.clip(0.5 * (down - up) / safe, -0.5, 0.5), 0.0)
    return offset


def _merge_images(frac: np.ndarray, abc: np.ndarray, merge: float) -> np.ndarray:
    """Keep the first of every set of positions within ``merge`` Å (minimum image)."""
    kept = np.zeros((0, 3))
    for f in frac:
        if len(_far_from(f[None], kept, abc, merge)):
            kept = np.vstack([kept, f])
    return kept


def _profiles(
    abc: np.ndarray, frac: np.ndarray, sigmas: np.ndarray, d: int, padding: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axis profiles (n, S, d) of every site's normalised Gaussian at every width."""
    n, s = len(frac), len(sigmas)
    u = voxel_fractions(d, padding)
    gx, gy, gz = site_profiles(
        abc, np.repeat(frac % 1.0, s, axis=0), np.tile(sigmas, n), u, padding
    )
    return gx.reshape(n, s, d), gy.reshape(n, s, d), gz.reshape(n, s, d)


def _project(grid: np.ndarray, gx: np.ndarray, gy: np.ndarray, gz: np.ndarray) -> np.ndarray:
    """<map, Gaussian> for every (site, width) of the profiles: (n, S)."""
    n, s, d = gx.shape
    return project(grid, *(a.reshape(n * s, d) for a in (gx, gy, gz))).reshape(n, s)


def _moments(
    grid: np.ndarray, abc: np.ndarray, frac: np.ndarray, padding: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each site's mass and rms width (Å) from a non-negative fit with the fixed
    :data:`MOMENT_WIDTHS` at every site."""
    widths = np.asarray(MOMENT_WIDTHS)
    gx, gy, gz = (
        a.reshape(-1, a.shape[-1]) for a in _profiles(abc, frac, widths, len(grid), padding)
    )
    gram, rhs = normal_equations(grid, gx, gy, gz)
    # the widths are nearly collinear: a small ridge keeps the factorisation stable
    ridge = 1e-6 * np.trace(gram) / len(gram)
    chol = cholesky(gram + ridge * np.eye(len(gram)), lower=True)
    target = solve_triangular(chol, rhs, lower=True)
    weights, _ = nnls(chol.T, target, maxiter=50 * len(gram))
    weights = weights.reshape(len(frac), len(widths))
    mass = weights.sum(axis=1)
    width = np.sqrt((weights * widths**2).sum(axis=1) / np.maximum(mass, 1e-12))
    return mass, width


def choose_elements(
    grid: np.ndarray,
    lattice_abc: np.ndarray,
    frac: np.ndarray,
    padding: float,
    candidates: Sequence[int],
    radii: np.ndarray,
    *,
    kicks: int = 4,
    alike: tuple[float, float] = (0.3, 0.1),
    symprec: float = 0.1,
    max_sweeps: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """The element of each site at ``frac`` (n, 3) that best explains ``grid``, among
    ``candidates`` (atomic numbers) with Gaussian widths ``radii`` (Å, same order); see
    the module (step 2). Returns ((n,) atomic numbers, (n,) their widths Å); 0 for a site
    that no candidate improves (the fit is better without an atom there).

    The sites of an orbit first take one element together: orbits are spglib's equivalent
    atoms (within ``symprec`` Å) of the sites labelled by their (mass, width) moments, alike
    within ``alike`` (differences of the logarithms), then within a quarter of that (which
    splits orbits of look-alike elements). At each level a descent over the orbits, then
    every pair of overlapping orbits at its best pair of elements (a wide cation can take
    its anions' density only while the anions change with it). From there each site is
    free: a site-by-site descent, and each site's ``kicks`` next-best elements tried, each
    followed by a descent; a move is kept when it lowers the residual."""
    grid = np.asarray(grid, dtype=np.float64)
    abc = np.asarray(lattice_abc, dtype=np.float64)
    cand = np.asarray(list(candidates), dtype=np.int64)
    sig = np.asarray(radii, dtype=np.float64)
    if len(frac) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    mass, width = _moments(grid, abc, frac, padding)
    # the last candidate is "no atom" (Z = 0): a site no element improves is emptied
    cand = np.append(cand, 0)
    sig = np.append(sig, sig[0])
    sites = _ElementFit(grid, abc, frac, padding, cand, sig)
    coarse = _orbits(abc, frac, _alike_groups(mass, width, alike), symprec)
    # finer orbits split sites of different elements that look alike (Zr and Sn of ZrNiSn)
    fine_alike = _alike_groups(mass, width, tuple(t / 4.0 for t in alike))
    fine = _orbits(
        abc, frac, np.unique(coarse * len(frac) + fine_alike, return_inverse=True)[1], symprec
    )
    count = np.bincount(coarse)
    cost = ((cand[None] - (np.bincount(coarse, mass) / count)[:, None]) / _Z_UNIT) ** 2
    cost += ((sig[None] - (np.bincount(coarse, width) / count)[:, None]) / _SIGMA_UNIT) ** 2
    cost[:, -1] = np.inf  # a peak starts as an atom
    choice = cost.argmin(axis=1)[coarse]
    for label in (coarse, fine):
        group_choice = np.zeros(int(label.max()) + 1, dtype=np.int64)
        group_choice[label] = choice
        tied = sites.grouped(label)
        choice = tied.search(group_choice, max_sweeps, pairs=True, kicks=0)[label]
    choice = sites.search(choice, max_sweeps, pairs=False, kicks=kicks)
    return cand[choice], sig[choice]


def _alike_groups(
    mass: np.ndarray, width: np.ndarray, tolerance: tuple[float, float]
) -> np.ndarray:
    """(n,) group labels 0..K-1 of sites whose log mass and log width differ by at most
    ``tolerance`` (each) from the group's first site's."""
    key = np.column_stack([np.log(np.maximum(mass, 1e-9)), np.log(np.maximum(width, 1e-9))])
    label = np.full(len(key), -1, dtype=np.int64)
    for i in range(len(key)):
        if label[i] < 0:
            alike = (np.abs(key - key[i]) <= np.asarray(tolerance)).all(axis=1)
            label[(label < 0) & alike] = label.max() + 1
    return label


def _orbits(abc: np.ndarray, frac: np.ndarray, label: np.ndarray, symprec: float) -> np.ndarray:
    """(n,) labels 0..K-1 of the orbits of the sites labelled ``label`` in the orthogonal
    cell ``abc`` (spglib's equivalent atoms within ``symprec`` Å; every site its own
    orbit where spglib finds no symmetry)."""
    from matdisc.voxel.cell import symmetry_dataset

    dataset = symmetry_dataset(
        (np.diag(abc), np.asarray(frac) % 1.0, np.asarray(label) + 1), symprec
    )
    if dataset is None:
        return np.arange(len(frac))
    return np.unique(np.asarray(dataset.equivalent_atoms), return_inverse=True)[1]


class _ElementFit:
    """The squared residual of a map explained by one candidate Gaussian per group of
    sites (all sites of a group take the same candidate), as a function of the choice (K,)
    of candidate per group, up to the map's constant norm.

    Overlaps are held per pair of groups and pair of distinct widths: ``overlap`` (K, K,
    W, W) between the groups' unit Gaussians (summed over their sites), ``proj`` (K, W)
    their inner products with the map; a candidate is its charge and its width's index.
    A descent keeps the field (K, W) of the current choice, Σ_l z_l <group k at each
    width, group l>, and updates it when a group changes."""

    def __init__(
        self,
        grid: np.ndarray,
        abc: np.ndarray,
        frac: np.ndarray,
        padding: float,
        cand: np.ndarray,
        sig: np.ndarray,
        share: float = 0.05,
    ) -> None:
        widths, self.width_of = np.unique(sig, return_inverse=True)
        profiles = _profiles(abc, frac, widths, len(grid), padding)  # 3 x (n, W, d)
        n, w = len(frac), len(widths)
        overlap = np.ones((n * w, n * w))
        for axis in profiles:
            flat = axis.reshape(n * w, -1)
            overlap *= flat @ flat.T
        self.z = cand.astype(np.float64)
        # sites whose Gaussians overlap (at some width, ``share`` of the geometric mean of
        # their norms) can trade density: only their pairs are tried jointly
        norm = np.sqrt(np.diagonal(overlap)).reshape(n, w)
        self.overlap = overlap.reshape(n, w, n, w).transpose(0, 2, 1, 3)
        close = np.abs(self.overlap) > share * norm[:, None, :, None] * norm[None, :, None, :]
        self.close = close.any(axis=(2, 3))
        self._setup(_project(grid, *profiles))

    def _setup(self, proj: np.ndarray) -> None:
        w, z = self.width_of, self.z
        k = np.arange(len(proj))
        self.proj = proj
        diagonal = self.overlap[k, k][:, w][:, :, w]  # (K, C, C)
        self.own = np.diagonal(diagonal, axis1=1, axis2=2) * z**2 - 2.0 * z * proj[:, w]

    def grouped(self, label: np.ndarray) -> _ElementFit:
        """The same fit with the sites of each label (n,) tied to one candidate."""
        order = np.argsort(label, kind="stable")
        starts = np.flatnonzero(np.diff(label[order], prepend=-1))
        fit = object.__new__(_ElementFit)
        fit.width_of, fit.z = self.width_of, self.z
        half = np.add.reduceat(self.overlap[order], starts, axis=0)  # (K, n, W, W)
        fit.overlap = np.add.reduceat(half[:, order], starts, axis=1)
        close = np.add.reduceat(self.close[order].astype(np.int64), starts, axis=0)
        fit.close = np.add.reduceat(close[:, order], starts, axis=1) > 0
        fit._setup(np.add.reduceat(self.proj[order], starts, axis=0))
        return fit

    def _field(self, choice: np.ndarray) -> np.ndarray:
        """(K, W): Σ_l z_l <group k at each width, group l at its chosen width>."""
        groups = np.arange(len(choice))
        columns = self.overlap[:, groups, :, self.width_of[choice]]  # (K_l, K, W)
        return np.einsum("lkw,l->kw", columns, self.z[choice])

    def _column(self, k: int, c: int) -> np.ndarray:
        """(K, W) group k's term in the field when it takes candidate c."""
        return self.z[c] * self.overlap[:, k, :, self.width_of[c]]

    def _terms(
        self, choice: np.ndarray, field: np.ndarray, k: int, skip: Sequence[int] = ()
    ) -> np.ndarray:
        """(C,) the residual terms of group k taking each candidate, beside the groups
        other than k and ``skip`` at their current choice."""
        cross = field[k].copy()
        for m in (k, *skip):
            cross -= self.z[choice[m]] * self.overlap[k, m, :, self.width_of[choice[m]]]
        return self.own[k] + 2.0 * self.z * cross[self.width_of]

    def _moved(self, field: np.ndarray, choice: np.ndarray, trial: np.ndarray) -> np.ndarray:
        """The field of ``trial`` from that of ``choice``."""
        field = field.copy()
        for k in np.flatnonzero(trial != choice):
            field += self._column(k, trial[k]) - self._column(k, choice[k])
        return field

    def descend(
        self, choice: np.ndarray, max_sweeps: int, field: np.ndarray | None = None
    ) -> np.ndarray:
        """Group by group, the best candidate given the others, until nothing changes
        (``field``: the choice's, when known)."""
        choice = choice.copy()
        field = self._field(choice) if field is None else field.copy()
        for _ in range(max_sweeps):
            changed = False
            for k in range(len(choice)):
                best = int(self._terms(choice, field, k).argmin())
                if best != choice[k]:
                    field += self._column(k, best) - self._column(k, choice[k])
                    choice[k] = best
                    changed = True
            if not changed:
                break
        return choice

    def objective(self, choice: np.ndarray) -> float:
        """||map - model||² - ||map||²."""
        w, z, k = self.width_of[choice], self.z[choice], np.arange(len(choice))
        gram = self.overlap[k[:, None], k[None], w[:, None], w[None]]
        return float(z @ gram @ z - 2.0 * (z * self.proj[k, w]).sum())

    def _pair(self, choice: np.ndarray, field: np.ndarray, k: int, m: int) -> np.ndarray:
        """The choice with groups k and m at their best pair of candidates, given the others."""
        w, z = self.width_of, self.z
        both = (
            self._terms(choice, field, k, skip=(m,))[:, None]
            + self._terms(choice, field, m, skip=(k,))[None]
            + 2.0 * np.outer(z, z) * self.overlap[k, m][w][:, w]
        )
        trial = choice.copy()
        trial[k], trial[m] = np.unravel_index(int(both.argmin()), both.shape)
        return trial

    def search(self, choice: np.ndarray, max_sweeps: int, *, pairs: bool, kicks: int) -> np.ndarray:
        """From ``choice``: a descent, then moves (every pair of overlapping groups at its
        best pair of candidates; each group's ``kicks`` next-best candidates), each
        followed by a descent, kept when they lower the residual, until none does (at
        most 3 rounds)."""
        choice = self.descend(choice, max_sweeps)
        best = self.objective(choice)
        for _ in range(3):
            improved = False
            trials: list[tuple[int, ...]] = []
            if pairs:
                trials += [tuple(p) for p in np.argwhere(np.triu(self.close, 1)).tolist()]
            if kicks:
                trials += [(k,) for k in range(len(choice))]
            field = self._field(choice)
            for move in trials:
                if len(move) == 2:
                    options = [self._pair(choice, field, *move)]
                else:
                    change = self._terms(choice, field, move[0])
                    change[choice[move[0]]] = np.inf
                    options = []
                    for alternative in np.argsort(change)[:kicks]:
                        trial = choice.copy()
                        trial[move[0]] = alternative
                        options.append(trial)
                for trial in options:
                    # the others adapt to the move first, then all descend
                    trial = self.descend(trial, max_sweeps, self._moved(field, choice, trial))
                    value = self.objective(trial)
                    if value < best - 1e-9 * abs(best):
                        choice, best, improved = trial, value, True
                        field = self._field(choice)
                        break
            if not improved:
                break
        return choice


def model_map(
    lattice_abc: np.ndarray,
    frac: np.ndarray,
    numbers: np.ndarray,
    sigma: np.ndarray,
    d: int,
    padding: float,
) -> np.ndarray:
    """(d, d, d) the density of sites at ``frac`` with charges ``numbers`` and widths ``sigma``."""
    if not len(frac):
        return np.zeros((d, d, d))
    u = voxel_fractions(d, padding)
    gx, gy, gz = site_profiles(
        np.asarray(lattice_abc, np.float64),
        np.asarray(frac) % 1.0,
        np.asarray(sigma, np.float64),
        u,
        padding,
    )
    return np.einsum("n,ni,nj,nk->ijk", np.asarray(numbers, np.float64), gx, gy, gz, optimize=True)


def read_density(
    grid: np.ndarray,
    lattice_abc: Sequence[float],
    padding: float,
    candidates: Sequence[int],
    radii: np.ndarray,
    *,
    floor: float = 1e-3,
    merge: float = 0.3,
    residual_floor: float = 0.5,
    min_distance: float = 0.7,
    rounds: int = 3,
    polish: int = 2,
    special_rounds: int = 2,
    kicks: int = 4,
    special_above: float = 1e-4,
    special_gain: float = 0.3,
    max_sites: int = 40,
) -> DensityRead:
    """Read a crystal from a density map (see the module). radii: Å per candidate;
    ``polish``: passes that move each site to the maximum of the map minus the other
    sites' fitted Gaussians (a light atom's own maximum leans towards a heavy neighbour)."""
    grid = np.asarray(grid, dtype=np.float64)
    abc = np.asarray(list(lattice_abc), dtype=np.float64)
    d = grid.shape[0]
    # a hidden atom is one whose residual peak reaches this share of the weakest
    # candidate's peak height Z / ((2π)^1.5 σ³) (O²⁻ and Li⁺, ~0.25 e/Å³)
    weakest = float(
        np.min(
            np.asarray(candidates, np.float64)
            / ((2.0 * np.pi) ** 1.5 * np.asarray(radii, np.float64) ** 3)
        )
    )
    norm = float((grid**2).sum())
    fit = dict(candidates=candidates, radii=radii, polish=polish, kicks=kicks)
    frac = peaks(grid, abc, padding, floor=floor, merge=merge)[:max_sites]
    # the maxima's own centring, whatever their elements (the read may break it)
    peak_centring = _centring(frac, np.zeros(len(frac), dtype=np.int64), abc, merge)
    frac, numbers, sigma = _fit_sites(grid, abc, frac, padding, **fit)
    added = 0
    for _ in range(rounds):
        residual = grid - model_map(abc, frac, numbers, sigma, d, padding)
        new = peaks(np.clip(residual, 0.0, None), abc, padding, floor=0.0, merge=merge)
        new = new[_values_at(residual, new, padding) > residual_floor * weakest]
        new = _far_from(new, frac, abc, min_distance)[: max(max_sites - len(frac), 0)]
        if not len(new):
            break
        added += 1
        frac, numbers, sigma = _fit_sites(grid, abc, np.vstack([frac, new]), padding, **fit)
    left = _left(grid, abc, frac, numbers, sigma, padding, norm)
    for _ in range(special_rounds if left > special_above else 0):
        # A hidden atom whose neighbours' elements grew to explain its density leaves no
        # residual peak. Each group of special positions is tried with every element
        # chosen afresh; the best is kept if it removes ``special_gain`` of the residual.
        trials = []
        centrings = _sub_centrings(_centring(frac, numbers, abc, merge), peak_centring)
        for group in _unique_groups(*(_special_groups(c) for c in centrings)):
            group = _far_from(group, frac, abc, min_distance)
            if not len(group) or len(frac) + len(group) > max_sites:
                continue
            # trials kick once: only the best trial is fitted in full
            trial = _fit_sites(
                grid, abc, np.vstack([frac, group]), padding, **{**fit, "polish": 0, "kicks": 1}
            )
            trials.append((_left(grid, abc, *trial, padding, norm), trial))
        if not trials:
            break
        best, trial = min(trials, key=lambda t: t[0])
        if best > (1.0 - special_gain) * left:
            break
        added += 1
        frac, numbers, sigma = _fit_sites(grid, abc, trial[0], padding, **fit)
        left = _left(grid, abc, frac, numbers, sigma, padding, norm)
    return DensityRead(frac=frac, numbers=numbers, residual=left, rounds=added)


def _far_from(points: np.ndarray, frac: np.ndarray, abc: np.ndarray, distance: float) -> np.ndarray:
    """The ``points`` (m, 3) further than ``distance`` Å (minimum image) from every site."""
    if not len(frac) or not len(points):
        return points
    delta = (points[:, None] - frac[None] + 0.5) % 1.0 - 0.5
    return points[np.sqrt(((delta * abc) ** 2).sum(-1)).min(axis=1) > distance]


def _left(
    grid: np.ndarray,
    abc: np.ndarray,
    frac: np.ndarray,
    numbers: np.ndarray,
    sigma: np.ndarray,
    padding: float,
    norm: float,
) -> float:
    """Share of the map's squared norm the sites leave unexplained."""
    if norm <= 0:
        return 0.0
    fitted = model_map(abc, frac, numbers, sigma, grid.shape[0], padding)
    return float(((grid - fitted) ** 2).sum()) / norm


#: The centring translations of the cubic lattices (F: the first three, I: the last).
_CENTRINGS = ((0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0), (0.5, 0.5, 0.5))


def _centring(frac: np.ndarray, numbers: np.ndarray, abc: np.ndarray, tolerance: float) -> tuple:
    """The centring translations (of :data:`_CENTRINGS`) that map the sites onto sites of
    the same element within ``tolerance`` Å."""
    found = []
    for t in _CENTRINGS:
        moved = (frac + np.asarray(t)) % 1.0
        delta = (moved[:, None] - frac[None] + 0.5) % 1.0 - 0.5
        dist = np.sqrt(((delta * abc) ** 2).sum(-1))
        same = numbers[:, None] == numbers[None]
        if len(frac) and np.all((np.where(same, dist, np.inf)).min(axis=1) < tolerance):
            found.append(t)
    return tuple(found)


def _sub_centrings(*found: tuple) -> list[tuple]:
    """Every centring of ``found`` (tuples of :data:`_CENTRINGS`), and its F part and its
    I part alone: the sites of antifluorite Li2O are both F- and I-centred as a set, but
    its hidden O²⁻ fill an orbit of the F centring only."""
    out = {()}
    for centring in found:
        out.add(centring)
        out.add(tuple(t for t in centring if t != _CENTRINGS[3]))
        out.add(tuple(t for t in centring if t == _CENTRINGS[3]))
    return sorted(out)


def _unique_groups(*families: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """The distinct groups of positions of several families of groups, in order."""
    seen: set[tuple] = set()
    out = []
    for family in families:
        for group in family:
            key = tuple(sorted(map(tuple, np.round(group, 6).tolist())))
            if key not in seen:
                seen.add(key)
                out.append(group)
    return out


@functools.cache
def _special_groups(centring: tuple = ()) -> tuple[np.ndarray, ...]:
    """The 64 positions with every coordinate in {0, 1/4, 1/2, 3/4} (special positions of
    the cubic space groups' conventional cells) in orbits of the cubic point group about
    the origin and the ``centring`` translations: corners, body centre, face centres,
    edge centres, the quarter positions, ...; with an F centring the edge centres and the
    body centre are one orbit (the anion sites of rock salt)."""
    import itertools

    q = np.arange(4)
    points = np.stack(np.meshgrid(q, q, q, indexing="ij"), axis=-1).reshape(-1, 3)  # quarters
    code = {tuple(p): k for k, p in enumerate(points.tolist())}
    parent = list(range(len(points)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    shifts = [np.zeros(3, dtype=np.int64)] + [
        np.rint(np.asarray(t) * 4).astype(np.int64) for t in centring
    ]
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            for shift in shifts:
                image = (points[:, perm] * np.asarray(signs) + shift) % 4
                for k, other in enumerate(image.tolist()):
                    a, b = root(k), root(code[tuple(other)])
                    if a != b:
                        parent[a] = b
    roots = np.array([root(k) for k in range(len(points))])
    return tuple(points[roots == r] / 4.0 for r in np.unique(roots))


def _fit_sites(
    grid: np.ndarray,
    abc: np.ndarray,
    frac: np.ndarray,
    padding: float,
    *,
    candidates: Sequence[int],
    radii: np.ndarray,
    polish: int,
    kicks: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elements of the sites (emptied ones dropped), their positions polished: (frac,
    numbers, σ)."""
    for step in range(polish + 1):
        numbers, sigma = choose_elements(grid, abc, frac, padding, candidates, radii, kicks=kicks)
        keep = numbers > 0
        frac, numbers, sigma = frac[keep], numbers[keep], sigma[keep]
        if step == polish or not len(frac):
            break
        frac = _polished(grid, abc, frac, numbers, sigma, padding)
    return frac, numbers, sigma


def _polished(
    grid: np.ndarray,
    abc: np.ndarray,
    frac: np.ndarray,
    numbers: np.ndarray,
    sigma: np.ndarray,
    padding: float,
    reach: int = 2,
) -> np.ndarray:
    """Each site moved to the sub-voxel maximum, within ``reach`` voxels of its in-cell
    image, of the map minus every other site's fitted Gaussian."""
    from matdisc.voxel.grid import index_of_fraction

    d = grid.shape[0]
    u = voxel_fractions(d, padding)
    gx, gy, gz = site_profiles(abc, frac % 1.0, np.asarray(sigma, np.float64), u, padding)
    z = np.asarray(numbers, np.float64)
    total = np.einsum("n,ni,nj,nk->ijk", z, gx, gy, gz, optimize=True)
    out = frac.copy()
    for i in range(len(frac)):
        own = grid - total + z[i] * np.einsum("i,j,k->ijk", gx[i], gy[i], gz[i])
        centre = np.rint(index_of_fraction(frac[i] % 1.0, d, padding)).astype(np.int64)
        lo = np.clip(centre - reach, 1, d - 2)
        hi = np.clip(centre + reach + 1, 2, d - 1)
        window = own[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        if not window.size:
            continue
        best = lo + np.array(np.unravel_index(int(window.argmax()), window.shape))
        out[i] = fraction_of_index(best + _subvoxel(own, best[None])[0], d, padding) % 1.0
    return out


def _values_at(grid: np.ndarray, frac: np.ndarray, padding: float) -> np.ndarray:
    """The map's value at the voxel nearest each position's in-cell image."""
    from matdisc.voxel.grid import index_of_fraction

    d = grid.shape[0]
    index = np.clip(np.rint(index_of_fraction(frac, d, padding)).astype(np.int64), 0, d - 1)
    return grid[tuple(index.T)] if len(index) else np.zeros(0)
