"""Voxel grids back to crystals: segmentation, watershed, centroids, lattice fit.

Contract (used by the sampler and the VAE/UNet evaluation):

* :func:`lattice_from_coords` ``(coords (3, d, d, d) or (B, 3, d, d, d), padding) ->
  (a, b, c)`` Å, a least-squares fit of the coordinate channels.
* :func:`invert` ``(species_map (d, d, d) int atomic numbers, *, lattice_abc, padding,
  settings) -> InversionResult(structure | None, reason | None, n_sites)``;
  :func:`invert_many` over a batch; :class:`InverseSettings` ``.from_config(voxel
  section)`` holds its settings. Reasons: ``no_atoms``, ``too_many_sites``,
  ``inconsistent``, ``bad_lattice``.
* :mod:`matdisc.segment.metrics`: ``site_emd`` (Å, periodic), ``delta_n_sites``,
  ``lattice_mae``.

The grid conventions (padding images drawn, axes x, y, z = grid axes 0, 1, 2) are those
of :mod:`matdisc.voxel`.
"""

from __future__ import annotations

from matdisc.segment import metrics
from matdisc.segment.invert import (
    BAD_LATTICE,
    INCONSISTENT,
    NO_ATOMS,
    TOO_MANY_SITES,
    InversionResult,
    invert,
    invert_many,
)
from matdisc.segment.lattice import lattice_from_coords
from matdisc.segment.settings import InverseSettings

__all__ = [
    "BAD_LATTICE",
    "INCONSISTENT",
    "NO_ATOMS",
    "TOO_MANY_SITES",
    "InverseSettings",
    "InversionResult",
    "invert",
    "invert_many",
    "lattice_from_coords",
    "metrics",
]
