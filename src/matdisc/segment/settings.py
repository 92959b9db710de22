"""Settings of the grid -> crystal inverse (:func:`matdisc.segment.invert`).

They come from the config section ``voxel`` (``max_sites`` and the sub-section
``inverse``); their defaults live in ``config/schema.yaml`` alone, so an
:class:`InverseSettings` is built from a validated config (:func:`matdisc.config.load_config`
or :func:`matdisc.config.validate_config` fill the defaults in) and has none of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, kw_only=True)
class InverseSettings:
    """How :func:`matdisc.segment.invert` reads a crystal from a species map.

    max_sites: most atoms a crystal may have (``voxel.max_sites``), else ``too_many_sites``.
    merge_tolerance: Å within which two regions are images of one atom.
    border_reach: Å a region cut by the grid edge may lie inside its atom's centre.
    min_region_voxels: labelled regions with fewer voxels are dropped as noise.
    split_touching: watershed-split regions that hold several atoms.
    min_peak_separation: voxels between two atoms' distance maxima in one region.
    species_conflict: images of one atom that disagree in species: ``"vote"`` (by voxels)
    or ``"reject"`` (the grid is ``inconsistent``).
    regions: what delimits a region: ``"species"`` (connected voxels of one species) or
    ``"mask"`` (connected occupied voxels, species by vote).
    symmetry_tolerance: Å within which a symmetry operation must map an atom onto another.
    fuse_distance: Å below which two atoms found are one, or None (off).
    orbit_occupancy: share (0-1] of an orbit's positions that must hold an atom for the
    orbit to be filled (else it is emptied), or None (no orbit rounding).
    orbit_support: share (0-1] of the atoms a cubic operation must map onto atoms of
    their own species to define the orbits.
    """

    max_sites: int
    merge_tolerance: float
    border_reach: float
    min_region_voxels: int
    split_touching: bool
    min_peak_separation: int
    species_conflict: Literal["vote", "reject"]
    regions: Literal["species", "mask"]
    symmetry_tolerance: float
    fuse_distance: float | None
    orbit_occupancy: float | None
    orbit_support: float

    def __post_init__(self) -> None:
        # The schema checks the config; this catches settings built or replaced in code.
        if self.species_conflict not in ("vote", "reject"):
            raise ValueError(
                f"species_conflict must be 'vote' or 'reject', got {self.species_conflict!r}"
            )
        if self.regions not in ("species", "mask"):
            raise ValueError(f"regions must be 'species' or 'mask', got {self.regions!r}")

    @classmethod
    def from_config(cls, voxel: Mapping[str, Any], *, decoded: bool = False) -> InverseSettings:
        """The settings of the validated ``voxel`` config section. ``decoded``: for the
        UNet's maps of VAE-decoded densities (sampling, chain evaluation), whose noise
        regions are larger and whose atoms blur: the keys of ``inverse.decoded`` then
        replace their namesakes."""
        inverse = dict(voxel["inverse"])
        overrides = inverse.pop("decoded")
        if decoded:
            inverse.update(overrides)
        return cls(max_sites=voxel["max_sites"], **inverse)
