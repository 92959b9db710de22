"""Crystal <-> voxel grid mapping (seed 000, Methods: Data Preparation and Formatting).

Contract (the UNet/VAE training reads the store, the sampler inverts grids):

* :func:`voxelize` ``(structure, *, grid_size=32, padding=0.25, ...) -> VoxelResult``
  with ``density`` (d, d, d) float32 e/Å³, ``species`` (d, d, d) uint8 atomic numbers
  (0 = background), ``mask`` (d, d, d) bool, ``coords`` (3, d, d, d) float32 Å and
  ``lattice`` (3,) Å; raises :class:`VoxelizeError` (``.reason``: ``unreadable``,
  ``disordered``, ``empty``, ``not_cubic``, ``too_many_sites``, ``no_radius``).
* :func:`coordinate_grid` ``(lattice_abc (B, 3), grid_size, padding) -> (B, 3, d, d, d)``,
  numpy or torch in, same out.
* :func:`matdisc.voxel.augment.random_rot90` ``(rng, *arrays)``: one random proper 90°
  rotation applied to (d, d, d) maps and (3, d, d, d) coordinate grids alike
  (:data:`~matdisc.voxel.augment.TETRAHEDRAL_ROTATIONS`: the 12 that keep a face-centred
  cell's tetrahedral holes in place).
* :func:`matdisc.voxel.store.open_store` ``(path) -> VoxelStore`` (zarr, written by the
  ``voxelize-structures`` stage).
* The inverse lives in :mod:`matdisc.segment`.

Conventions:

* Axes: grid axes 0, 1, 2 = Cartesian x, y, z = cell vectors a, b, c. Index ``i`` along
  axis k has its centre at fractional coordinate ``u_i = -p + (1 + 2p)(i + 0.5)/d``
  (``p`` = padding), Cartesian ``L_k u_i`` (:mod:`matdisc.voxel.grid`); channel k of C
  holds that coordinate.
* The cell is the conventional cubic cell (:mod:`matdisc.voxel.cell`), origin where the
  stored cell has it; lattice-vector translations and site permutations leave M and S
  unchanged (S exactly, M to float rounding). With ``voxel.setting: canonical`` the
  voxelize stage then moves it to its canonical setting
  (:func:`matdisc.voxel.setting.canonical_setting`): a site of the heaviest element at the
  origin and one of the 48 orientations, so that every setting of a crystal gives the
  same M and S.
* Periodic images ARE drawn: the padding shows the neighbouring cells' atoms, in M (the
  Gaussian sum runs over all images) and in S (every image whose label sphere reaches
  the grid is labelled). So an atom near a face or corner appears 2-8 times; the inverse
  merges these images (:func:`matdisc.segment.invert`).
* M: ``sum_i Z_i N(x; site_i, σ_i² I)`` with ``N`` the normalised 3-D Gaussian and σ_i
  the element's radius from the package's ``resources/ionic_radii.csv`` (see the
  checkout's ``resources/ionic_radii.md``).
* S: the atomic number of the nearest site whose label sphere, radius
  ``max(label_fraction × σ_i, min_label_radius_voxels × voxel spacing)``, contains the
  voxel centre (ties: the smaller atomic number); mask = S > 0.
"""

from __future__ import annotations

from matdisc.voxel.cell import CubicCell, conventional_cubic
from matdisc.voxel.core import VoxelResult, voxelize, voxelize_cell
from matdisc.voxel.errors import VoxelizeError
from matdisc.voxel.grid import coordinate_grid

__all__ = [
    "CubicCell",
    "VoxelResult",
    "VoxelizeError",
    "conventional_cubic",
    "coordinate_grid",
    "voxelize",
    "voxelize_cell",
]
