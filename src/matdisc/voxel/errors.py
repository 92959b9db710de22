"""Why a structure cannot be voxelized."""

from __future__ import annotations


class VoxelizeError(ValueError):
    """A structure the voxel representation cannot hold.

    ``reason`` is a short code, stable for counting and logging (the voxelize stage counts
    skipped structures by it): ``unreadable``, ``disordered``, ``empty``, ``not_cubic``,
    ``too_many_sites``, ``no_radius``. The message is one sentence for a person.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
