"""Elements read from density maps: the fit of Z at known sites, and descriptor channels.

The density of the voxel grids is a sum of Z-weighted, normalised Gaussians whose σ is
the element's radius (:mod:`matdisc.voxel.core`). Two readings of the elements follow:

* **Species fidelity** (:func:`fit_charges`). With the true sites and their true σ, the
  map is linear in the Z of the sites: a least-squares fit of the map onto the sites'
  unit Gaussians returns every Z exactly on a true map. On a decoded map, how far the
  fitted Z fall from the true ones measures how much of the elements the decoder still
  carries, apart from any reader (``within_1``, ``within_3``, median relative error).
* **Descriptor channels** (:func:`descriptor_grids`, :func:`read_descriptors`). Beside the
  density, an occupancy channel holds a narrow Gaussian of height 1 at every site and
  channel k the same Gaussians weighted by the site's descriptor ``d_ik`` in [0, 1]. The
  peaks are 1.5 voxels wide, so neighbours barely overlap (the density's σ is the ionic
  radius, and they do). At a site the ratio channel / occupancy is its descriptor, and it
  stays so when a decoder gets the peaks' height or width wrong by a common factor. The
  descriptor is the element's place in the 32-column periodic table (row, column), so a
  near miss is a neighbour in the table; the element read back is the nearest one, in
  table cells, among the elements the models know, one per species group of the inverse
  (a decoder shrinks descriptors towards their mean: the VAE keeps where it puts each
  training element, and the reader compares with those reference points).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

from matdisc.voxel.core import site_profiles
from matdisc.voxel.grid import voxel_fractions

#: Descriptor sets of the VAE's species channels (``vae.species_channels``).
DESCRIPTOR_KINDS = ("none", "table_position")

# First atomic number of each period (H, Li, Na, K, Rb, Cs, Fr) and of none after.
_PERIOD_START = (1, 3, 11, 19, 37, 55, 87, 119)
_ROWS = 7
_COLUMNS = 32


def table_position(z: int) -> tuple[int, int]:
    """(row 1..7, column 1..32) of element ``z`` in the 32-column periodic table
    (s block 1-2, f block 3-16, d block 17-26, p block 27-32; He in column 32)."""
    if not 1 <= z < _PERIOD_START[-1]:
        raise ValueError(f"atomic number {z} is outside 1..118")
    row = next(r for r in range(_ROWS) if z < _PERIOD_START[r + 1])
    k = z - _PERIOD_START[row]  # 0-based place in the period
    length = _PERIOD_START[row + 1] - _PERIOD_START[row]
    # periods of 32 fill every column; the others put their first two in the s block
    # (He, the second of two, goes to the noble gases)
    if length == 32 or (k < 2 and not (length == 2 and k == 1)):
        column = k + 1
    else:
        column = _COLUMNS - (length - 1 - k)  # the period's last elements end at 32
    return row + 1, column


#: Per descriptor set, the table cells its unit range spans (rows, columns).
_CELLS = {"table_position": (_ROWS - 1, _COLUMNS - 1)}


@functools.lru_cache(maxsize=4)
def descriptor_table(kind: str) -> np.ndarray:
    """(256, k) float64 descriptor of each atomic number (row 0 and Z > 118 are 0).

    ``table_position``: ((row - 1) / 6, (column - 1) / 31), both in [0, 1].
    """
    cells = _table_units(kind)
    table = np.zeros((256, len(cells)))
    for z in range(1, _PERIOD_START[-1]):
        table[z] = (np.array(table_position(z)) - 1) / cells
    table.setflags(write=False)
    return table


def _table_units(kind: str) -> np.ndarray:
    """Scale from descriptor units back to table cells (rows, columns)."""
    if kind not in _CELLS:
        raise ValueError(f"no descriptor set {kind!r}; choose one of {', '.join(DESCRIPTOR_KINDS)}")
    return np.array(_CELLS[kind], dtype=np.float64)


def site_gaussians(
    lattice: np.ndarray, frac: np.ndarray, sigma: np.ndarray, grid_size: int, padding: float
) -> np.ndarray:
    """(n, d³) float64: each site's normalised Gaussian (periodic images included) on the grid."""
    u = voxel_fractions(grid_size, padding)
    gx, gy, gz = site_profiles(
        np.asarray(lattice, np.float64),
        np.asarray(frac, np.float64) % 1.0,
        np.asarray(sigma, np.float64),
        u,
        padding,
    )
    return np.einsum("ni,nj,nk->nijk", gx, gy, gz).reshape(len(frac), -1)


def fit_charges(
    density: np.ndarray,
    lattice: np.ndarray,
    frac: np.ndarray,
    sigma: np.ndarray,
    *,
    padding: float,
) -> np.ndarray:
    """Least-squares Z (n,) of sites at ``frac`` (n, 3) with Gaussian widths ``sigma`` (n,) Å
    that best explain ``density`` (d, d, d) e/Å³ of a cell with lengths ``lattice`` (3,).

    Each site's Gaussian is a product of three axis profiles, so the normal equations come
    without the (n, d³) basis: (BᵀB)_mn = (x_m·x_n)(y_m·y_n)(z_m·z_n) and Bᵀρ contracts
    the grid one axis at a time. Solved by lstsq on the small n × n system (the same Z as
    lstsq on the basis to 1e-9; 30 times faster at 32³).
    """
    density = np.asarray(density, dtype=np.float64)
    u = voxel_fractions(density.shape[0], padding)
    gx, gy, gz = site_profiles(
        np.asarray(lattice, np.float64),
        np.asarray(frac, np.float64) % 1.0,
        np.asarray(sigma, np.float64),
        u,
        padding,
    )
    gram, rhs = normal_equations(density, gx, gy, gz)
    z, *_ = np.linalg.lstsq(gram, rhs, rcond=None)
    return z


def normal_equations(
    grid: np.ndarray, gx: np.ndarray, gy: np.ndarray, gz: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The Gram matrix (m, m) of m 3-D Gaussians given by their axis profiles (m, d) each,
    and their inner products with ``grid`` (d, d, d): (m,), the grid contracted one axis
    at a time."""
    gram = (gx @ gx.T) * (gy @ gy.T) * (gz @ gz.T)
    return gram, project(grid, gx, gy, gz)


def project(grid: np.ndarray, gx: np.ndarray, gy: np.ndarray, gz: np.ndarray) -> np.ndarray:
    """(m,) inner products of ``grid`` (d, d, d) with the 3-D Gaussians of axis profiles
    (m, d) each."""
    projected = np.einsum("nk,nj,ijk->ni", gz, gy, grid, optimize=True)
    return np.einsum("ni,ni->n", gx, projected)


class Fidelity:
    """Fitted against true Z over many sites: the species-fidelity metric."""

    def __init__(self) -> None:
        self.fitted: list[np.ndarray] = []
        self.true: list[np.ndarray] = []

    def add(self, fitted: np.ndarray, true: np.ndarray) -> None:
        self.fitted.append(np.asarray(fitted, np.float64))
        self.true.append(np.asarray(true, np.float64))

    def scores(self) -> dict[str, tuple[float, int]]:
        """``species_fit_within_1`` / ``_within_3`` (share of sites whose fitted Z is within
        ±1 / ±3 of the true Z) and ``species_fit_median_rel_error`` (median |ΔZ| / Z)."""
        if not self.fitted:
            nan = (float("nan"), 0)
            return dict.fromkeys(
                ("species_fit_within_1", "species_fit_within_3", "species_fit_median_rel_error"),
                nan,
            )
        fitted = np.concatenate(self.fitted)
        true = np.concatenate(self.true)
        err = np.abs(fitted - true)
        n = len(true)
        return {
            "species_fit_within_1": (float(np.mean(err <= 1.0)), n),
            "species_fit_within_3": (float(np.mean(err <= 3.0)), n),
            "species_fit_median_rel_error": (float(np.median(err / true)), n),
        }


#: Width of the descriptor channels' peaks in voxel spacings of the cell's shortest axis.
MARKER_VOXELS = 1.5


def marker_sigma(lattice: np.ndarray, grid_size: int, padding: float) -> float:
    """σ (Å) of the descriptor channels' peaks: :data:`MARKER_VOXELS` voxel spacings."""
    return MARKER_VOXELS * float(np.min(lattice)) * (1.0 + 2.0 * padding) / grid_size


def _marker_basis(
    lattice: np.ndarray, frac: np.ndarray, grid_size: int, padding: float
) -> np.ndarray:
    """(n, d³) the sites' marker Gaussians, height 1 (σ from :func:`marker_sigma`)."""
    lattice = np.asarray(lattice, np.float64)
    sigma = marker_sigma(lattice, grid_size, padding)
    basis = site_gaussians(lattice, frac, np.full(len(frac), sigma), grid_size, padding)
    return basis * (2.0 * np.pi) ** 1.5 * sigma**3


def descriptor_grids(
    lattice: np.ndarray,
    frac: np.ndarray,
    numbers: np.ndarray,
    *,
    kind: str,
    grid_size: int,
    padding: float,
) -> np.ndarray:
    """(1 + k, d, d, d) float32 channels of one cell: an occupancy channel ``sum_i g_i``
    and the descriptor channels ``sum_i d_ik g_i``, where ``g_i`` is a narrow Gaussian of
    height 1 (σ from :func:`marker_sigma`) at site i and its images."""
    numbers = np.asarray(numbers, dtype=np.int64)
    weights = np.concatenate([np.ones((len(numbers), 1)), descriptor_table(kind)[numbers]], 1)
    out = weights.T @ _marker_basis(lattice, frac, grid_size, padding)
    return out.reshape(-1, grid_size, grid_size, grid_size).astype(np.float32)


def read_descriptors(
    channels: np.ndarray, lattice: np.ndarray, frac: np.ndarray, *, padding: float
) -> np.ndarray:
    """(n, k) descriptor of each site at ``frac`` (n, 3) from the channels of
    :func:`descriptor_grids` (1 + k, d, d, d): every channel is least-squares fitted onto
    the sites' marker Gaussians (so neighbours that overlap are told apart), and a site's
    descriptor is the ratio of its descriptor amplitudes to its occupancy amplitude."""
    basis = _marker_basis(lattice, frac, channels.shape[-1], padding)
    flat = np.asarray(channels, np.float64).reshape(len(channels), -1)
    amplitudes, *_ = np.linalg.lstsq(basis @ basis.T, basis @ flat.T, rcond=None)  # (n, 1+k)
    return amplitudes[:, 1:] / np.maximum(amplitudes[:, :1], 1e-12)


def nearest_elements(
    values: np.ndarray,
    kind: str,
    candidates: Sequence[int],
    reference: Mapping[int, Sequence[float]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The candidate element nearest to each descriptor row of ``values`` (n, k), in table
    cells, and that distance: ((n,) atomic numbers, (n,) cells). ``reference``: where a
    decoder puts an element on average ({Z: descriptor}), used instead of the element's
    table position for the elements it names."""
    table = np.array(descriptor_table(kind))
    for z, value in (reference or {}).items():
        table[int(z)] = value
    scale = _table_units(kind)
    candidates = np.asarray(list(candidates), dtype=np.int64)
    diff = (np.asarray(values)[:, None, :] - table[candidates][None]) * scale
    dist = np.sqrt((diff**2).sum(axis=-1))
    best = dist.argmin(axis=1)
    return candidates[best], dist[np.arange(len(best)), best]


#: Sites of one UNet label whose decoded descriptors lie further apart than this many table
#: cells (average linkage) are taken for two species.
CLUSTER_CELLS = 5.0


def species_from_descriptors(
    structure: object,
    channels: np.ndarray,
    *,
    kind: str,
    candidates: Sequence[int],
    padding: float,
    reference: Mapping[int, Sequence[float]] | None = None,
) -> object:
    """``structure`` (sites from the inverse, in the grid's cell, labelled by the UNet) with
    each species group's element read from the channels of :func:`descriptor_grids`. The
    inverse gives every orbit one label (orbit completion); sites keep the grouping of
    their labels, except that a label whose sites' descriptors fall apart by more than
    :data:`CLUSTER_CELLS` (average linkage) is split, and every group takes the candidate
    nearest to its sites' mean descriptor (``reference``: see :func:`nearest_elements`).
    A decoder's noise thus does not split an orbit into several elements, while a UNet that
    calls K and F one element is overruled."""
    from pymatgen.core import Structure
    from scipy.cluster.hierarchy import fcluster, linkage

    frac = np.asarray(structure.frac_coords)  # type: ignore[attr-defined]
    lattice = np.asarray(structure.lattice.abc)  # type: ignore[attr-defined]
    values = read_descriptors(channels, lattice, frac, padding=padding)
    # the sites' own labels (the UNet's species), each split where its sites' descriptors
    # fall apart by more than CLUSTER_CELLS (a UNet that calls K and F one element)
    given = np.array([site.specie.Z for site in structure])  # type: ignore[attr-defined]
    groups = np.zeros(len(values), dtype=int)
    for z in np.unique(given):
        members = np.flatnonzero(given == z)
        sub = np.ones(len(members), dtype=int)
        if len(members) > 1:
            tree = linkage(values[members] * _table_units(kind), method="average")
            sub = fcluster(tree, t=CLUSTER_CELLS, criterion="distance")
        groups[members] = groups.max() + sub
    _, labels = np.unique(groups, return_inverse=True)
    means = np.stack([values[labels == k].mean(axis=0) for k in range(labels.max() + 1)])
    elements, _ = nearest_elements(means, kind, candidates, reference)
    return Structure(
        structure.lattice,  # type: ignore[attr-defined]
        [int(elements[k]) for k in labels],
        frac,
    )
