"""Voxel grids back to crystals: segmentation, watershed, centroids, lattice fit.

Contract (used by the sampler and the VAE/UNet evaluation):

* :func:`lattice_from_coords` ``(coords (3, d, d, d) or (B, 3, d, d, d), padding) ->
  (a, b, c)`` Å, a least-squares fit of the coordinate channels.
* :func:`invert` ``(species_map (d, d, d) int atomic numbers, *, lattice_abc, padding,
  ...) -> InversionResult(structure | None, reason | None, n_sites)``; :func:`invert_many`
  over a batch; :func:`invert_options` maps the ``voxel`` config section to its
  keyword arguments. Reasons: ``no_atoms``, ``too_many_sites``, ``inconsistent``,
  ``bad_lattice``.
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
    invert_options,
)
from matdisc.segment.lattice import lattice_from_coords

__all__ = [
    "BAD_LATTICE",
    "INCONSISTENT",
    "NO_ATOMS",
    "TOO_MANY_SITES",
    "InversionResult",
    "invert",
    "invert_many",
    "invert_options",
    "lattice_from_coords",
    "metrics",
]
