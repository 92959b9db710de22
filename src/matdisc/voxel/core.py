"""Crystal -> voxel grids: density M, species S, mask and coordinate grid C (seed 000, eq. 1).

Everything is vectorised over sites, periodic images and voxels:

* **Density.** A 3-D Gaussian factorises over the axes of the (orthogonal) grid, and so
  does a periodic sum of Gaussians over a cubic lattice:
  ``M = sum_i Z_i Gx_i (x) Gy_i (x) Gz_i`` where ``Gk_i`` is the 1-D normalised Gaussian
  of site i summed over all its periodic images along axis k. That is one (d, n) @ (n, d²)
  matrix product per structure, and it includes every image (inside the padding and
  beyond it), not only those whose centre lies in the grid.
* **Species.** Every periodic image whose label sphere (radius ``label_fraction`` × the
  element's radius, at least ``min_label_radius_voxels`` voxel spacings) reaches the grid
  writes into the voxels of its sphere; a voxel covered by several spheres takes the
  nearest site (ties: the smaller atomic number), by a scatter-min of the packed key
  (squared distance, atomic number).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matdisc.voxel.cell import CubicCell, arrays_from_structure, conventional_cubic
from matdisc.voxel.errors import VoxelizeError
from matdisc.voxel.grid import coordinate_grid, frac_step, voxel_fractions
from matdisc.voxel.radii import DEFAULT_TABLE, radius_lookup

#: Defaults of the representation; config/config.yaml (section voxel) sets them for runs.
GRID_SIZE = 32
PADDING = 0.25
MAX_SITES = 40
LABEL_FRACTION = 0.6
MIN_LABEL_RADIUS_VOXELS = 1.0

#: Gaussian tails beyond this many σ are below exp(-32) of the peak: dropped (the
#: voxelizer and its torch twin, :func:`matdisc.models.losses.site_profiles_torch`).
TAIL_SIGMAS = 8.0
_NO_LABEL = np.iinfo(np.int64).max


@dataclass(frozen=True)
class VoxelResult:
    """The grids of one crystal (axes 0, 1, 2 = x, y, z = cell vectors a, b, c).

    density: (d, d, d) float32, electrons/Å³ (sum of Z-weighted normalised Gaussians).
    species: (d, d, d) uint8 atomic number of the site labelling each voxel, 0 = none.
    mask: (d, d, d) bool, species > 0.
    coords: (3, d, d, d) float32 Cartesian x, y, z (Å) of each voxel centre.
    lattice: (3,) float64 cell lengths a, b, c (Å).
    cell: the conventional cubic cell that was voxelized (sites, fractional coordinates).
    """

    density: np.ndarray
    species: np.ndarray
    mask: np.ndarray
    coords: np.ndarray
    lattice: np.ndarray
    cell: CubicCell = field(repr=False)

    @property
    def structure(self):
        """The voxelized conventional cell as a pymatgen ``Structure``."""
        return self.cell.to_structure()


def voxelize(
    structure: Any,
    *,
    grid_size: int = GRID_SIZE,
    padding: float = PADDING,
    label_fraction: float = LABEL_FRACTION,
    min_label_radius_voxels: float = MIN_LABEL_RADIUS_VOXELS,
    max_sites: int = MAX_SITES,
    tolerance: float = 0.01,
    symprec: float = 0.1,
    check_symmetry: bool = False,
    radius_table: Path | str = DEFAULT_TABLE,
) -> VoxelResult:
    """Voxelize a cubic crystal (a pymatgen ``Structure`` in any cell setting).

    The structure is first taken to its conventional cubic cell
    (:func:`matdisc.voxel.cell.conventional_cubic`; ``tolerance``, ``symprec`` and
    ``check_symmetry`` are passed on). Raises :class:`VoxelizeError` with a reason for a
    disordered or non-cubic structure, more than ``max_sites`` sites in the conventional
    cell, or an element without a radius in the table.
    """
    matrix, frac, numbers = arrays_from_structure(structure)
    cell = conventional_cubic(
        matrix,
        frac,
        numbers,
        tolerance=tolerance,
        symprec=symprec,
        check_symmetry=check_symmetry,
    )
    return voxelize_cell(
        cell,
        grid_size=grid_size,
        padding=padding,
        label_fraction=label_fraction,
        min_label_radius_voxels=min_label_radius_voxels,
        max_sites=max_sites,
        radius_table=radius_table,
    )


def check_cell(
    cell: CubicCell, *, max_sites: int = MAX_SITES, radius_table: Path | str = DEFAULT_TABLE
) -> np.ndarray:
    """The radii (n,) Å of the cell's sites; :class:`VoxelizeError` if it cannot be voxelized."""
    if len(cell) > max_sites:
        raise VoxelizeError(
            "too_many_sites",
            f"the conventional cell has {len(cell)} sites, more than max_sites = {max_sites}.",
        )
    table = radius_lookup(radius_table)
    z = cell.numbers
    if np.any((z < 1) | (z >= len(table))):
        raise VoxelizeError(
            "no_radius", f"atomic numbers {sorted(set(z.tolist()))} are out of range."
        )
    radii = table[z]
    if np.any(np.isnan(radii)):
        from pymatgen.core.periodic_table import Element

        missing = sorted({Element.from_Z(int(x)).symbol for x in z[np.isnan(radii)]})
        raise VoxelizeError(
            "no_radius",
            f"no ionic radius is known for {', '.join(missing)} (table {Path(radius_table).name}); "
            f"such structures cannot be voxelized.",
        )
    return radii


def voxelize_cell(
    cell: CubicCell,
    *,
    grid_size: int = GRID_SIZE,
    padding: float = PADDING,
    label_fraction: float = LABEL_FRACTION,
    min_label_radius_voxels: float = MIN_LABEL_RADIUS_VOXELS,
    max_sites: int = MAX_SITES,
    radius_table: Path | str = DEFAULT_TABLE,
) -> VoxelResult:
    """Voxelize a cell that is already conventional cubic (see :func:`voxelize`)."""
    radii = check_cell(cell, max_sites=max_sites, radius_table=radius_table)
    density, species = density_and_species(
        cell.lattice,
        cell.frac,
        cell.numbers,
        radii,
        grid_size=grid_size,
        padding=padding,
        label_fraction=label_fraction,
        min_label_radius_voxels=min_label_radius_voxels,
    )
    coords = coordinate_grid(cell.lattice[None, :], grid_size, padding)[0]
    return VoxelResult(
        density=density,
        species=species,
        mask=species > 0,
        coords=coords,
        lattice=np.asarray(cell.lattice, dtype=np.float64),
        cell=cell,
    )


def density_and_species(
    lattice: np.ndarray,
    frac: np.ndarray,
    numbers: np.ndarray,
    radii: np.ndarray,
    *,
    grid_size: int = GRID_SIZE,
    padding: float = PADDING,
    label_fraction: float = LABEL_FRACTION,
    min_label_radius_voxels: float = MIN_LABEL_RADIUS_VOXELS,
) -> tuple[np.ndarray, np.ndarray]:
    """Density (d, d, d) float32 and species (d, d, d) uint8 of an orthogonal cell.

    lattice: (3,) cell lengths Å; frac: (n, 3) fractional coordinates; numbers: (n,)
    atomic numbers (< 256); radii: (n,) Å, the Gaussian σ of each site.
    """
    lattice = np.asarray(lattice, dtype=np.float64)
    frac = np.asarray(frac, dtype=np.float64)
    frac = frac - np.floor(frac)
    numbers = np.asarray(numbers, dtype=np.int64)
    radii = np.asarray(radii, dtype=np.float64)
    u = voxel_fractions(grid_size, padding)
    density = _density(lattice, frac, numbers, radii, u, padding)
    spacing = lattice.min() * frac_step(grid_size, padding)
    label_radii = np.maximum(label_fraction * radii, min_label_radius_voxels * spacing)
    species = _species(lattice, frac, numbers, label_radii, grid_size, padding)
    return density, species


def site_profiles(
    lattice: np.ndarray,
    frac: np.ndarray,
    sigma: np.ndarray,
    u: np.ndarray,
    padding: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per site and axis, its normalised 1-D Gaussian summed over periodic images at the
    voxel fractions ``u``: three (n, d) arrays in 1/Å (x, y, z); a site's 3-D unit
    Gaussian on the grid is their outer product."""
    n_img = int(np.ceil(padding + TAIL_SIGMAS * sigma.max() / lattice.min())) + 1
    shifts = np.arange(-n_img, n_img + 1, dtype=np.float64)
    # (n, 3, shifts, d): signed distance (Å) from every 1-D image to every voxel centre.
    delta = u[None, None, None, :] - frac[:, :, None, None] - shifts[None, None, :, None]
    delta *= lattice[None, :, None, None]
    s = sigma[:, None, None, None]
    profile = np.exp(-0.5 * (delta / s) ** 2).sum(axis=2) / (np.sqrt(2.0 * np.pi) * s[..., 0])
    return profile[:, 0], profile[:, 1], profile[:, 2]


def _density(
    lattice: np.ndarray,
    frac: np.ndarray,
    numbers: np.ndarray,
    sigma: np.ndarray,
    u: np.ndarray,
    padding: float,
) -> np.ndarray:
    d = len(u)
    gx, gy, gz = site_profiles(lattice, frac, sigma, u, padding)
    yz = (gy[:, :, None] * gz[:, None, :]).reshape(len(frac), d * d)
    # einsum, not matmul: BLAS would start threads for this small product, which costs
    # more than it saves and oversubscribes the cores when tasks already run in parallel.
    density = np.einsum("ni,nm->im", gx * numbers[:, None], yz)
    return density.reshape(d, d, d).astype(np.float32)


def _species(
    lattice: np.ndarray,
    frac: np.ndarray,
    numbers: np.ndarray,
    label_radii: np.ndarray,
    grid_size: int,
    padding: float,
) -> np.ndarray:
    d = grid_size
    step = frac_step(grid_size, padding)
    n_img = int(np.ceil(padding + label_radii.max() / lattice.min())) + 1
    shifts = np.arange(-n_img, n_img + 1)
    # Per site, axis and image shift: the window of voxel indices its sphere can reach.
    centre = frac[:, :, None] + shifts[None, None, :]  # (n, 3, S) fractional
    reach = label_radii[:, None, None] / lattice[None, :, None]  # fractional radius
    start = np.ceil((centre - reach + padding) / step - 0.5).astype(np.int64)
    width = int(np.floor(2.0 * (reach.max()) / step)) + 1
    index = start[..., None] + np.arange(width)  # (n, 3, S, W)
    offset = (-padding + step * (index + 0.5) - centre[..., None]) * lattice[None, :, None, None]
    dist2 = (offset**2).astype(np.float32)
    valid = (index >= 0) & (index < d) & (dist2 <= (label_radii**2)[:, None, None, None])
    dist2[~valid] = np.inf
    used = valid.any(axis=-1)  # (n, 3, S): the image along this axis touches the grid
    site, sx, sy, sz = np.nonzero(
        used[:, 0, :, None, None] & used[:, 1, None, :, None] & used[:, 2, None, None, :]
    )
    # (K, W) per axis for the K images whose sphere reaches the grid; inf = out of reach.
    dx, dy, dz = dist2[site, 0, sx], dist2[site, 1, sy], dist2[site, 2, sz]
    r2 = (dx[:, :, None] + dy[:, None, :])[..., None] + dz[:, None, None, :]  # (K, W, W, W)
    limit = (label_radii[site] ** 2).astype(np.float32)
    k, a, b, c = np.nonzero(r2 <= limit[:, None, None, None])
    flat = (index[site[k], 0, sx[k], a] * d + index[site[k], 1, sy[k], b]) * d
    flat += index[site[k], 2, sz[k], c]
    # Key = float32 squared distance (monotone as an integer for values >= 0) then Z, so
    # the minimum is the nearest site and, on a tie, the smaller atomic number.
    r2_bits = r2[k, a, b, c].view(np.int32).astype(np.int64)
    keys = (r2_bits << 8) | numbers[site[k]]
    best = np.full(d * d * d, _NO_LABEL, dtype=np.int64)
    np.minimum.at(best, flat, keys)
    species = np.where(best == _NO_LABEL, 0, best & 0xFF).astype(np.uint8)
    return species.reshape(d, d, d)
