"""Geometry of the voxel grid: where the voxel centres sit relative to the cell.

A grid of side ``d`` spans the cell plus a padding fraction ``p`` of each cell length on
every side. Along axis k (0, 1, 2 = x, y, z = cell vectors a, b, c) voxel ``i`` has its
centre at the fractional coordinate

    u_i = -p + (1 + 2p) (i + 0.5) / d,        i = 0 .. d-1,

and at the Cartesian coordinate ``L_k u_i`` (Å), with ``L_k`` the cell length. The
spacing is ``h_k = L_k (1 + 2p) / d``. The grid is symmetric about the cell centre
(``u_{d-1-i} = 1 - u_i``).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

ArrayT = TypeVar("ArrayT")


def voxel_fractions(grid_size: int, padding: float) -> np.ndarray:
    """(d,) float64 fractional coordinate u_i of the voxel centres along one axis."""
    i = np.arange(grid_size, dtype=np.float64)
    return -padding + (1.0 + 2.0 * padding) * (i + 0.5) / grid_size


def frac_step(grid_size: int, padding: float) -> float:
    """Spacing of voxel centres in fractional units of the cell length."""
    return (1.0 + 2.0 * padding) / grid_size


def index_of_fraction(u, grid_size: int, padding: float):
    """Continuous voxel index (float) of fractional coordinate(s) ``u``; inverse of u_i."""
    return (np.asarray(u) + padding) / frac_step(grid_size, padding) - 0.5


def fraction_of_index(index, grid_size: int, padding: float):
    """Fractional coordinate(s) of continuous voxel index(es); ``u_i`` for integers."""
    return -padding + frac_step(grid_size, padding) * (np.asarray(index) + 0.5)


def coordinate_grid(lattice_abc: ArrayT, grid_size: int, padding: float) -> ArrayT:
    """Cartesian x, y, z (Å) of every voxel centre, for a batch of cells.

    lattice_abc: (B, 3) cell lengths a, b, c in Å, a numpy array or a torch tensor.
    Returns the same type, shape (B, 3, d, d, d): channel k holds ``L_k u_i`` varying
    along grid axis k only (channel 0 = x along axis 0, ...). numpy input gives float32;
    a tensor keeps its dtype and device.
    """
    u = voxel_fractions(grid_size, padding)
    d = grid_size
    if _is_tensor(lattice_abc):
        import torch

        lat = lattice_abc
        if lat.ndim != 2 or lat.shape[1] != 3:
            raise ValueError(f"lattice_abc must have shape (B, 3), got {tuple(lat.shape)}")
        ut = torch.as_tensor(u, dtype=lat.dtype if lat.is_floating_point() else torch.float32)
        ut = ut.to(lat.device)
        lat = lat.to(ut.dtype)
        b = lat.shape[0]
        x = (lat[:, 0, None] * ut).view(b, d, 1, 1).expand(b, d, d, d)
        y = (lat[:, 1, None] * ut).view(b, 1, d, 1).expand(b, d, d, d)
        z = (lat[:, 2, None] * ut).view(b, 1, 1, d).expand(b, d, d, d)
        return torch.stack((x, y, z), dim=1)
    lat = np.asarray(lattice_abc, dtype=np.float64)
    if lat.ndim != 2 or lat.shape[1] != 3:
        raise ValueError(f"lattice_abc must have shape (B, 3), got {lat.shape}")
    b = lat.shape[0]
    out = np.empty((b, 3, d, d, d), dtype=np.float32)
    out[:, 0] = (lat[:, 0, None] * u)[:, :, None, None]
    out[:, 1] = (lat[:, 1, None] * u)[:, None, :, None]
    out[:, 2] = (lat[:, 2, None] * u)[:, None, None, :]
    return out


def _is_tensor(x: object) -> bool:
    return type(x).__module__.startswith("torch")
