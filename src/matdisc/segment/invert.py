"""Species map -> crystal: regions, watershed split, centroids, padding images merged.

Steps of :func:`invert` (seed 000, "3-D Multiclass Atom Segmentation"):

1. Connected regions (6-connectivity, ``skimage.measure.label``) of equal atomic number
   (``regions="species"``: exact on true species maps, where touching atoms of different
   species stay apart) or of occupied voxels whatever their species (``regions="mask"``:
   for UNet output, whose per-voxel species are noisier than its occupancy; a region's
   species is then the majority of its voxels' species).
2. Touching atoms of one species are split. Regions that fill less than half the ball
   reaching their farthest voxel (a single atom, even cut by neighbours, fills more) are
   checked: markers are the maxima of the (chessboard) distance to the region's edge, at
   least ``min_peak_separation`` voxels apart, and a watershed on that distance splits
   regions holding several markers.
3. Region centroids (voxel indices, averaged) become fractional coordinates through the
   grid geometry (:mod:`matdisc.voxel.grid`) and are wrapped into the cell.
4. Periodic images are merged. The grid draws every image that falls in the padding, so
   one atom shows up as several regions. Two regions are one atom when their wrapped
   positions agree within ``merge_tolerance`` Å. A region cut by the edge of the grid
   (it touches a face) has its centroid pulled inwards, by up to the atom's radius: it
   joins the nearest atom of its own species that lies within ``merge_tolerance`` on
   every axis, widened by ``border_reach`` Å towards the faces it touches (cut regions
   of atoms without any uncut image are grouped among themselves the same way). An
   atom's position is the voxel-weighted mean of its uncut regions (all of them if every
   image is cut), its species the voxel-weighted majority (``species_conflict="vote"``)
   or, with ``"reject"``, any disagreement makes the grid ``inconsistent``.
   Optionally (``fuse_distance``), atoms closer than that are one atom: their votes add
   up and their positions average, weighted by voxels. Bonds to hydrogen aside, no
   crystal has two atoms within ~1 Å, while a blurred atom read as two regions (or a cut
   piece labelled with another species, which step 4 cannot join) leaves such a pair;
   the config turns it on for the UNet's maps of decoded densities only.
5. Optionally (``orbit_occupancy``), partly filled orbits are rounded to whole
   (:func:`matdisc.segment.symmetry.complete_orbits`): the cubic operations that map
   most atoms (``orbit_support``) onto atoms of their own species give the orbits, an
   orbit with at least ``orbit_occupancy`` of its positions occupied is filled, the
   others are emptied, and each orbit takes one species. A blurred decoded density
   shows, say, five of the eight tetrahedral holes of a Heusler cell; no cubic crystal
   has a partly filled orbit.
6. ``Structure(Lattice.orthorhombic(a, b, c), ...)`` with the given cell lengths.

The settings named above are the fields of :class:`matdisc.segment.settings.InverseSettings`.

A grid yields no structure, with a reason, when it has no labelled voxel (``no_atoms``),
more than ``max_sites`` atoms after merging (``too_many_sites``), images of one atom
that disagree in species under ``species_conflict="reject"`` (``inconsistent``) or cell
lengths that are not finite and positive (``bad_lattice``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from matdisc.geometry import components, distances, min_image
from matdisc.segment.settings import InverseSettings
from matdisc.segment.symmetry import complete_orbits
from matdisc.voxel.grid import fraction_of_index

log = logging.getLogger(__name__)

#: Reasons a grid yields no structure.
NO_ATOMS = "no_atoms"
TOO_MANY_SITES = "too_many_sites"
INCONSISTENT = "inconsistent"
BAD_LATTICE = "bad_lattice"

# The grid spans at most 1.5 cells per axis, so one atom shows at most 3 x 3 x 3 regions
# (whole images and pieces cut by the grid edge).
_MAX_IMAGES = 27


@dataclass(frozen=True)
class InversionResult:
    """The crystal read from a grid, or why there is none.

    structure: pymatgen ``Structure`` or None. reason: None on success, else one of
    ``no_atoms``, ``too_many_sites``, ``inconsistent``, ``bad_lattice``. n_sites: atoms
    found after merging images (0 for ``no_atoms``; also set when the structure is
    rejected). frac: (n_sites, 3) fractional coordinates and numbers: (n_sites,) atomic
    numbers of the atoms found (also when rejected), for diagnostics.
    """

    structure: Any
    reason: str | None
    n_sites: int
    frac: np.ndarray | None = None
    numbers: np.ndarray | None = None
    #: (n_sites, 256) the UNet's class probabilities summed over each site's voxels (its
    #: orbit's, after orbit completion) when ``invert`` got ``scores``; else None
    soft: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class ClassScores:
    """The UNet's species probabilities of a grid's occupied voxels: ``index`` (m,) flat
    voxel indices, ``probs`` (m, k) each voxel's probabilities over the UNet's k element
    classes (background excluded), ``numbers`` (k,) their atomic numbers."""

    index: np.ndarray
    probs: np.ndarray
    numbers: np.ndarray


def invert(
    species_map: np.ndarray,
    *,
    lattice_abc: Iterable[float],
    padding: float,
    settings: InverseSettings,
    mask: np.ndarray | None = None,
    scores: ClassScores | None = None,
) -> InversionResult:
    """Read a crystal from a species map.

    species_map: (d, d, d) integer atomic numbers, 0 = background (the argmax of the
    UNet's class scores mapped to atomic numbers, or the true S). lattice_abc: cell
    lengths a, b, c (Å), e.g. from :func:`matdisc.segment.lattice_from_coords`. padding:
    the grid's padding fraction (a property of the grid, stored with it). settings: see
    :class:`InverseSettings` and the module docstring. mask: optional (d, d, d) bool;
    voxels outside it count as background. scores: the UNet's class probabilities of the
    occupied voxels (:class:`ClassScores`), summed into each atom's ``soft`` votes.
    """
    lattice = np.asarray(list(lattice_abc), dtype=np.float64)
    if lattice.shape != (3,) or not np.all(np.isfinite(lattice)) or np.any(lattice <= 0):
        return InversionResult(None, BAD_LATTICE, 0)
    species = np.asarray(species_map)
    if species.ndim != 3 or len(set(species.shape)) != 1:
        raise ValueError(f"species_map must be (d, d, d), got {species.shape}")
    species = species.astype(np.int64, copy=False)
    if mask is not None:
        species = np.where(np.asarray(mask, dtype=bool), species, 0)
    if not species.any():
        return InversionResult(None, NO_ATOMS, 0)

    if species.min() < 0 or species.max() > 255:
        raise ValueError("species_map must hold atomic numbers 0..255")
    found = _regions(
        species,
        settings.split_touching,
        settings.min_peak_separation,
        settings.min_region_voxels,
        by_mask=settings.regions == "mask",
    )
    if found is None:
        return InversionResult(None, NO_ATOMS, 0)
    max_sites = settings.max_sites
    n_regions = len(found["count"])
    if n_regions > _MAX_IMAGES * max_sites:
        # Even if every atom showed all its images, there would be too many atoms; the
        # count reported is that lower bound (and the dense merge is not attempted).
        return InversionResult(None, TOO_MANY_SITES, -(-n_regions // _MAX_IMAGES))
    d = species.shape[0]
    frac = fraction_of_index(found["centroid"], d, padding)
    cluster = _cluster(frac, found, lattice, settings.merge_tolerance, settings.border_reach)
    site_frac, site_z, votes, conflict = _merge(frac, found, cluster)
    soft = None
    if scores is not None:
        soft = np.zeros((int(cluster.max()) + 1, 256))
        np.add.at(soft, cluster, _region_scores(found, scores))
    if settings.fuse_distance is not None:
        site_frac, site_z, votes, soft = _fuse(
            site_frac, votes, lattice, settings.fuse_distance, extra=soft
        )
    if settings.orbit_occupancy is not None:
        rounded = complete_orbits(
            site_frac,
            votes,
            lattice,
            tolerance=settings.symmetry_tolerance,
            support=settings.orbit_support,
            occupancy=settings.orbit_occupancy,
            max_positions=4 * max_sites,
            extra=soft,
        )
        site_frac, votes = rounded[:2]
        soft = None if soft is None else rounded[2]
        site_z = _species(votes)
    n_sites = len(site_z)
    if conflict and settings.species_conflict == "reject":
        return InversionResult(None, INCONSISTENT, n_sites, site_frac, site_z, soft)
    if n_sites > max_sites:
        return InversionResult(None, TOO_MANY_SITES, n_sites, site_frac, site_z, soft)
    from pymatgen.core import Lattice, Structure

    structure = Structure(Lattice.orthorhombic(*lattice), site_z.tolist(), site_frac)
    return InversionResult(structure, None, n_sites, site_frac, site_z, soft)


def invert_many(
    species_maps: np.ndarray,
    lattices: np.ndarray,
    *,
    padding: float,
    settings: InverseSettings,
    masks: np.ndarray | None = None,
) -> list[InversionResult]:
    """:func:`invert` over a batch: species_maps (B, d, d, d), lattices (B, 3) Å, masks
    None or (B, d, d, d) bool."""
    species_maps = np.asarray(species_maps)
    lattices = np.asarray(lattices, dtype=np.float64)
    return [
        invert(
            species_maps[i],
            lattice_abc=lattices[i],
            padding=padding,
            settings=settings,
            mask=None if masks is None else masks[i],
        )
        for i in range(len(species_maps))
    ]


def _regions(
    species: np.ndarray,
    split_touching: bool,
    min_separation: int,
    min_voxels: int,
    *,
    by_mask: bool = False,
) -> dict[str, np.ndarray] | None:
    """Per region (equal species, or any species if ``by_mask``; 6-connected, touching
    atoms split): centroid (voxel index), voxel count, species (the majority of its voxels)
    and the grid faces it touches; None if none is kept."""
    from skimage.measure import label

    grid = (species > 0) if by_mask else species.astype(np.uint8)
    labels = label(grid.astype(np.uint8), background=0, connectivity=1).astype(np.int32)
    stats = _stats(labels)
    if split_touching:
        candidates = _maybe_several(stats)
        if candidates.size:
            labels, changed = _split(labels, candidates, min_separation)
            if changed:
                stats = _stats(labels)
    counts = stats["count"]
    keep = np.flatnonzero(counts >= max(1, min_voxels))
    keep = keep[keep > 0]
    if keep.size == 0:
        return None
    region_species = _majority_species(labels, species, len(counts))
    low, high = _faces(labels)
    return {
        "labels": labels,
        "ids": keep,
        "centroid": stats["centroid"][keep],
        "count": counts[keep].astype(np.float64),
        "species": region_species[keep],
        "low": low[keep],
        "high": high[keep],
    }


def _majority_species(labels: np.ndarray, species: np.ndarray, n_labels: int) -> np.ndarray:
    """(n_labels,) the most frequent atomic number of each label's voxels (ties: smaller Z)."""
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    votes = np.bincount(
        flat[where] * 256 + species.ravel()[where], minlength=n_labels * 256
    ).reshape(n_labels, 256)
    return votes.argmax(axis=1).astype(np.int64)


def _faces(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n + 1, 3) bool each: the label has a voxel on the low / high face of that axis."""
    n = int(labels.max())
    d = labels.shape[0]
    low = np.zeros((n + 1, 3), dtype=bool)
    high = np.zeros((n + 1, 3), dtype=bool)
    for axis in range(3):
        low[np.take(labels, 0, axis=axis).ravel(), axis] = True
        high[np.take(labels, d - 1, axis=axis).ravel(), axis] = True
    low[0] = high[0] = False
    return low, high


def _stats(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Voxel count, centroid and squared largest distance from it, per label (0 = none)."""
    n = int(labels.max())
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    lab = flat[where]
    index = np.stack(np.unravel_index(where, labels.shape)).astype(np.float64)  # (3, nfg)
    count = np.bincount(lab, minlength=n + 1)
    safe = np.maximum(count, 1)
    centroid = np.stack([np.bincount(lab, weights=index[k], minlength=n + 1) for k in range(3)], 1)
    centroid /= safe[:, None]
    r2 = ((index - centroid[lab].T) ** 2).sum(axis=0)
    far2 = np.zeros(n + 1)
    np.maximum.at(far2, lab, r2)
    return {"count": count, "centroid": centroid, "far2": far2}


# A single atom's region fills at least about this share of the ball around its centroid
# that reaches its farthest voxel (a whole ball: ~1; cut by six neighbours: ~0.7; two
# equal balls that touch: ~0.25; a ball cut in half by the grid edge: ~0.4). Regions
# below it that are big enough for two atoms are checked for several distance maxima;
# that check decides.
_COMPACT_SHARE = 0.5
_MIN_SPLIT_VOXELS = 14


def _maybe_several(stats: dict[str, np.ndarray]) -> np.ndarray:
    """Labels of regions that may hold more than one atom."""
    ball = 4.0 / 3.0 * np.pi * np.sqrt(stats["far2"]) ** 3
    loose = stats["count"] < _COMPACT_SHARE * ball
    loose[0] = False
    return np.flatnonzero(loose & (stats["count"] >= _MIN_SPLIT_VOXELS))


def _split(
    labels: np.ndarray, candidates: np.ndarray, min_separation: int
) -> tuple[np.ndarray, bool]:
    """Split the candidate regions that have several distance maxima (watershed).

    The distance to the region's edge (chessboard metric) and its maxima are computed
    once over the whole grid; maxima closer than ``min_separation`` voxels to a higher
    one are dropped and touching maxima count once.
    """
    from skimage.segmentation import watershed

    inside = np.isin(labels, candidates)
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        differ = labels[tuple(lo)] != labels[tuple(hi)]
        edge[tuple(lo)] |= differ
        edge[tuple(hi)] |= differ
    distance = ndimage.distance_transform_cdt(inside & ~edge, metric="chessboard")
    size = 2 * max(1, int(min_separation)) + 1
    top = ndimage.maximum_filter(distance, size=size)
    peaks = (distance >= top) & (distance > 0)
    markers, n_markers = ndimage.label(peaks, structure=np.ones((3, 3, 3), dtype=bool))
    if n_markers < 2:
        return labels, False
    # Regions holding more than one marker.
    owner = np.zeros(n_markers + 1, dtype=np.int64)
    owner[markers.ravel()] = labels.ravel()
    per_region = np.bincount(owner[1:], minlength=int(labels.max()) + 1)
    several = np.flatnonzero(per_region > 1)
    if several.size == 0:
        return labels, False
    split = np.isin(labels, several)
    parts = watershed(-distance, np.where(split, markers, 0), mask=split)
    # Each split region keeps its label for the part of its first marker; the parts of
    # its other markers get fresh labels.
    marker_ids = np.flatnonzero(np.isin(owner, several))
    marker_ids = marker_ids[marker_ids > 0]
    _, first = np.unique(owner[marker_ids], return_index=True)
    moved = np.delete(marker_ids, first)
    fresh = np.zeros(n_markers + 1, dtype=np.int64)
    fresh[moved] = int(labels.max()) + 1 + np.arange(len(moved))
    out = labels.copy()
    relabel = split & (fresh[parts] > 0)
    out[relabel] = fresh[parts[relabel]]
    return out, True


def _cluster(
    frac: np.ndarray,
    regions: dict[str, np.ndarray],
    lattice: np.ndarray,
    tolerance: float,
    reach: float,
) -> np.ndarray:
    """Cluster id per region: regions that are images of one atom share an id.

    1. Uncut regions (not touching a grid face) within ``tolerance`` Å (minimum image) of
       each other are one atom, whatever their species (a disagreement is resolved or
       rejected in :func:`_merge`).
    2. A cut region joins the one atom of its species, among those of step 1, that lies
       where its centroid allows: within ±tolerance on every axis, widened by ``reach``
       towards each face it touches (its atom's centre is beyond that face); the nearest
       such atom if several do.
    3. Cut regions left over (every image of their atom is cut, e.g. a large ion at the
       corner of a small cell) are grouped among themselves by the same rule.
    """
    m = len(frac)
    cut = (regions["low"] | regions["high"]).any(axis=1)
    z = regions["species"]
    cluster = np.full(m, -1, dtype=np.int64)
    uncut = np.flatnonzero(~cut)
    if uncut.size:
        cluster[uncut] = components(distances(frac[uncut], frac[uncut], lattice) <= tolerance)
    k = int(cluster.max()) + 1
    pieces = np.flatnonzero(cut)
    if pieces.size == 0:
        return cluster
    # Offsets e (centroid -> atom centre) each cut region allows, per axis, in Å.
    e_lo = np.where(regions["low"][pieces], -reach, 0.0) - tolerance
    e_hi = np.where(regions["high"][pieces], reach, 0.0) + tolerance
    if k:
        atoms = _weighted_positions(frac[uncut], regions["count"][uncut], cluster[uncut], k)
        atom_z = np.zeros(k, dtype=np.int64)
        atom_z[cluster[uncut]] = z[uncut]
        delta = min_image(atoms[None, :, :] - frac[pieces][:, None, :]) * lattice  # (p, k, 3)
        fits = np.all((delta >= e_lo[:, None, :]) & (delta <= e_hi[:, None, :]), axis=-1)
        fits &= atom_z[None, :] == z[pieces][:, None]
        dist = np.where(fits, np.linalg.norm(delta, axis=-1), np.inf)
        best = dist.argmin(axis=1)
        matched = np.isfinite(dist[np.arange(len(pieces)), best])
        cluster[pieces[matched]] = best[matched]
        pieces, e_lo, e_hi = pieces[~matched], e_lo[~matched], e_hi[~matched]
    if pieces.size:
        delta = min_image(frac[pieces][None, :, :] - frac[pieces][:, None, :]) * lattice
        lower = e_lo[:, None, :] - e_hi[None, :, :]
        upper = e_hi[:, None, :] - e_lo[None, :, :]
        fits = np.all((delta >= lower) & (delta <= upper), axis=-1)
        fits &= z[pieces][:, None] == z[pieces][None, :]
        cluster[pieces] = k + components(fits)
    return cluster


def _weighted_positions(
    frac: np.ndarray, weight: np.ndarray, cluster: np.ndarray, k: int
) -> np.ndarray:
    """(k, 3) weighted mean position per cluster, images unwrapped next to the heaviest
    member, wrapped into [0, 1)."""
    order = np.lexsort((-weight, cluster))
    first = order[np.r_[True, cluster[order][1:] != cluster[order][:-1]]]
    ref = np.empty(k, dtype=np.int64)
    ref[cluster[first]] = first
    anchor = frac[ref[cluster]]
    unwrapped = anchor + min_image(frac - anchor)
    total = np.bincount(cluster, weights=weight, minlength=k)
    pos = (
        np.stack(
            [np.bincount(cluster, weights=weight * unwrapped[:, a], minlength=k) for a in range(3)],
            axis=1,
        )
        / np.maximum(total, 1e-300)[:, None]
    )
    pos -= np.floor(pos)
    pos[pos > 1 - 1e-9] = 0.0
    return pos


def _fuse(
    frac: np.ndarray,
    votes: np.ndarray,
    lattice: np.ndarray,
    distance: float,
    extra: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Atoms closer than ``distance`` Å (minimum image, chained) become one: votes (and
    ``extra`` scores) summed, position the vote-weighted mean; returns (frac, atomic
    numbers, votes, extra)."""
    group = components(distances(frac, frac, lattice) < distance)
    k = int(group.max()) + 1
    if k < len(frac):
        frac = _weighted_positions(frac, votes.sum(axis=1) + 1e-9, group, k)
        votes = _summed(votes, group, k)
        extra = None if extra is None else _summed(extra, group, k)
    return frac, _species(votes), votes, extra


def _summed(values: np.ndarray, group: np.ndarray, k: int) -> np.ndarray:
    """(k, m): the rows of ``values`` (n, m) summed per ``group`` (n,)."""
    out = np.zeros((k, values.shape[1]))
    np.add.at(out, group, values)
    return out


def _region_scores(regions: dict[str, np.ndarray], scores: ClassScores) -> np.ndarray:
    """(n_regions, 256): the class probabilities of each kept region's voxels, summed,
    in columns of atomic numbers."""
    from scipy.sparse import csr_matrix

    ids = regions["ids"]
    row_of = np.full(int(regions["labels"].max()) + 1, -1)
    row_of[ids] = np.arange(len(ids))
    rows = row_of[regions["labels"].ravel()[scores.index]]
    inside = rows >= 0
    member = csr_matrix(
        (np.ones(int(inside.sum())), (rows[inside], np.flatnonzero(inside))),
        shape=(len(ids), len(rows)),
    )
    out = np.zeros((len(ids), 256))
    out[:, scores.numbers] = member @ np.asarray(scores.probs, dtype=np.float64)
    return out


def _species(votes: np.ndarray) -> np.ndarray:
    """(k,) atomic number with the most votes per atom of (k, 256) votes (ties: smaller Z)."""
    return votes.argmax(axis=1).astype(np.int64)


def _merge(
    frac: np.ndarray, regions: dict[str, np.ndarray], cluster: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Positions (k, 3) in [0, 1), atomic numbers (k,), the votes (k, 256) behind them
    (voxels of the atom's regions, each region voting its majority species) and whether
    species disagreed."""
    k = int(cluster.max()) + 1
    count = regions["count"]
    cut = (regions["low"] | regions["high"]).any(axis=1)
    # Cut regions' centroids are biased: they only count where an atom has no other image.
    has_uncut = np.bincount(cluster, weights=(~cut).astype(np.float64), minlength=k) > 0
    weight = np.where(cut & has_uncut[cluster], 0.0, count)
    pos = _weighted_positions(frac, weight + 1e-9 * count, cluster, k)
    # Species: voxel-weighted vote within each cluster.
    z = regions["species"]
    pairs, inverse = np.unique(np.stack([cluster, z], axis=1), axis=0, return_inverse=True)
    votes = np.bincount(inverse.ravel(), weights=count, minlength=len(pairs))
    site_votes = np.zeros((k, 256))
    site_votes[pairs[:, 0], pairs[:, 1]] = votes
    conflict = len(pairs) > k
    return pos, _species(site_votes), site_votes, conflict
