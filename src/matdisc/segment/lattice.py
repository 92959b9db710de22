"""Cell lengths read back from a coordinate grid (the VAE's 3 coordinate channels)."""

from __future__ import annotations

import numpy as np

from matdisc.voxel.grid import voxel_fractions


def lattice_from_coords(coords, padding: float):
    """Least-squares cell lengths (a, b, c) in Å of a coordinate grid.

    coords: (3, d, d, d) or (B, 3, d, d, d) Cartesian voxel-centre coordinates (Å), exact
    (:func:`matdisc.voxel.coordinate_grid`) or decoded by the VAE; numpy or torch.
    Channel k should equal ``L_k u_i`` along grid axis k (``u_i`` the voxel-centre
    fraction, see :mod:`matdisc.voxel.grid`); ``L_k`` is the slope that minimises
    ``sum (C_k - L_k u)^2`` over all voxels: ``L_k = sum(C_k u) / sum(u^2)``. Every voxel
    votes, so the estimate averages out per-voxel noise instead of resting on the two
    extreme planes as max - min does. Returns (3,) or (B, 3), same library as the input.
    """
    batched = coords.ndim == 5
    if coords.ndim not in (4, 5) or coords.shape[-4] != 3:
        raise ValueError(
            f"coords must be (3, d, d, d) or (B, 3, d, d, d), got {tuple(coords.shape)}"
        )
    d = coords.shape[-1]
    u = voxel_fractions(d, padding)
    if type(coords).__module__.startswith("torch"):
        import torch

        ut = torch.as_tensor(u, dtype=coords.dtype, device=coords.device)
        c = coords if batched else coords[None]
        num = torch.stack(
            (
                torch.einsum("bijk,i->b", c[:, 0], ut),
                torch.einsum("bijk,j->b", c[:, 1], ut),
                torch.einsum("bijk,k->b", c[:, 2], ut),
            ),
            dim=1,
        )
        out = num / (float(np.sum(u * u)) * d * d)
        return out if batched else out[0]
    c = np.asarray(coords, dtype=np.float64)
    c = c if batched else c[None]
    num = np.stack(
        (
            np.einsum("bijk,i->b", c[:, 0], u),
            np.einsum("bijk,j->b", c[:, 1], u),
            np.einsum("bijk,k->b", c[:, 2], u),
        ),
        axis=1,
    )
    out = num / (np.sum(u * u) * d * d)
    return out if batched else out[0]
