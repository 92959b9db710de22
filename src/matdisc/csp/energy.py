"""The ContinuouSP energy: a CGCNN made continuous in the atomic positions (seed 001).

A batch of crystals is held as plain tensors (:class:`CrystalBatch`): fractional
coordinates, lattices and atomic numbers. Neighbours are found without gradient
(:func:`periodic_edges`, vectorised over crystals of equal size); distances are then
recomputed in torch from (frac, lattice, image offset), so the energy is differentiable
with respect to the fractional coordinates and the lattice (MALA needs both gradients).

Graph: every pair (i, j + image) closer than the cutoff r_c = 3 ρ^(-1/3) (ρ = sites per
Å³; about 113 neighbours per site whatever the density). Distances are expanded on
Gaussians (centres 0..20 Å, σ = width factor × centre spacing), then a linear map gives
the edge features u_ij.

Continuous convolution (the seed's eq. 10 as we read it): for centre i, neighbour j

    g_ij = (A_g v_i + B_g v_j + b_g) ⊙ (C_g u_ij),   s_ij = (A_s v_i + B_s v_j + b_s) ⊙ (C_s u_ij)
    v_i <- softplus(v_i + tanh(Σ_j w(d_ij) σ(g_ij) ⊙ s_ij)),

with the smooth cutoff w(d) = (1 + cos(π d / r_c)) / 2 for d < r_c and 0 beyond. w and
its derivative vanish at r_c, so an atom crossing the cutoff changes nothing abruptly:
the energy is continuous (and C¹) in the positions and the lattice. No batch norm (it
would make a crystal's energy depend on the others of its batch). Mean pooling and an
MLP with softplus give the network energy per crystal; the density penalty
(log(ρ/ρ₀))² with ρ₀ = 0.05 Å⁻³ is added (the seed adds "the logarithm of ρ/ρ₀" to keep
the density from running off in either direction; we square it so it does).

Invariances: rotation and translation (only distances enter), site permutation and
supercell re-description (mean pooling of per-site features that see the same
neighbourhood; the cutoff depends on the density only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from matdisc.graphs import GaussianExpansion, element_feature_table

log = logging.getLogger(__name__)

#: Largest translation searched along one axis (guards against flat cells; see periodic_edges).
MAX_IMAGES_PER_AXIS = 16

#: Bound on the candidate pair-image distances computed at once (float64 entries).
_MAX_CANDIDATES = 2_000_000


@dataclass
class CrystalBatch:
    """Crystals as tensors (the state the sampler moves).

    frac: (n_nodes, 3) fractional coordinates; lattice: (B, 3, 3) Å, rows are lattice
    vectors; numbers: (n_nodes,) int64 atomic numbers; node_graph: (n_nodes,) int64
    crystal index of each site, sorted (crystal 0's sites first).
    """

    frac: torch.Tensor
    lattice: torch.Tensor
    numbers: torch.Tensor
    node_graph: torch.Tensor

    @property
    def n_graphs(self) -> int:
        return int(self.lattice.shape[0])

    @property
    def sizes(self) -> torch.Tensor:
        return torch.bincount(self.node_graph, minlength=self.n_graphs)

    def detach(self) -> CrystalBatch:
        return CrystalBatch(
            self.frac.detach(), self.lattice.detach(), self.numbers, self.node_graph
        )

    def to(self, device: torch.device | str) -> CrystalBatch:
        return CrystalBatch(
            self.frac.to(device),
            self.lattice.to(device),
            self.numbers.to(device),
            self.node_graph.to(device),
        )

    @classmethod
    def from_arrays(
        cls,
        lattices: Sequence[np.ndarray],
        frac_coords: Sequence[np.ndarray],
        numbers: Sequence[np.ndarray],
        *,
        dtype: torch.dtype = torch.float64,
    ) -> CrystalBatch:
        sizes = [len(z) for z in numbers]
        return cls(
            frac=torch.as_tensor(np.concatenate(frac_coords).reshape(-1, 3), dtype=dtype),
            lattice=torch.as_tensor(np.asarray(lattices).reshape(-1, 3, 3), dtype=dtype),
            numbers=torch.as_tensor(np.concatenate(numbers), dtype=torch.long),
            node_graph=torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)),
        )

    def structures(self) -> list:
        """pymatgen Structures of the crystals (fractional coordinates wrapped)."""
        from pymatgen.core import Lattice, Structure

        frac = (self.frac - torch.floor(self.frac)).detach().cpu().numpy()
        lat = self.lattice.detach().cpu().numpy()
        z = self.numbers.cpu().numpy()
        g = self.node_graph.cpu().numpy()
        return [
            Structure(Lattice(lat[b]), z[g == b].tolist(), frac[g == b])
            for b in range(self.n_graphs)
        ]


def number_density(batch: CrystalBatch) -> torch.Tensor:
    """Sites per Å³, (B,), differentiable in the lattice."""
    volume = torch.linalg.det(batch.lattice).abs()
    return batch.sizes.to(volume.dtype) / volume


def cutoff_radius(batch: CrystalBatch, factor: float = 3.0) -> torch.Tensor:
    """r_c = factor · ρ^(-1/3) in Å, (B,)."""
    return factor * number_density(batch).pow(-1.0 / 3.0)


@torch.no_grad()
def periodic_edges(
    batch: CrystalBatch, radius: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All directed pairs (centre i, neighbour j + image) closer than ``radius`` of their crystal.

    radius: (B,) Å. Returns centre (E,), neighbour (E,) global site indices and the
    integer image offsets (E, 3) (as the frac dtype) such that the neighbour sits at
    (frac_j + offset) @ lattice. The site itself (offset 0) is excluded. Vectorised over
    crystals of equal size: crystals are grouped by size and chunked by memory; each
    chunk shares one box of translations (the largest any of its crystals needs).
    """
    frac = batch.frac.detach()
    frac = frac - torch.floor(frac)
    lat = batch.lattice.detach()
    sizes = batch.sizes.cpu().numpy()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # translations -m..m along axis k contain every pair closer than r: m = ceil(r / d_k)
    inv_spacing = torch.linalg.norm(torch.linalg.inv(lat), dim=1)  # (B, 3) = 1/d_k
    ranges = torch.ceil(radius.detach()[:, None] * inv_spacing - 1e-9).long().cpu().numpy()
    flat = (ranges > MAX_IMAGES_PER_AXIS).any(axis=1)
    if flat.any():
        # a near-degenerate (flat) cell would need millions of images: bound the search
        # (its far images are dropped; the density penalty pushes such cells away)
        log.warning(
            "%d near-degenerate cells: neighbour search limited to ±%d cells per axis",
            int(flat.sum()),
            MAX_IMAGES_PER_AXIS,
        )
        ranges = np.minimum(ranges, MAX_IMAGES_PER_AXIS)
    centers, neighbors, offsets = [], [], []
    for n in np.unique(sizes):
        members = np.flatnonzero(sizes == n)
        members = members[np.argsort(np.prod(2 * ranges[members] + 1, axis=1), kind="stable")]
        start = 0
        while start < len(members):
            stop, box = start, np.zeros(3, dtype=np.int64)
            while stop < len(members):
                new_box = np.maximum(box, ranges[members[stop]])
                if (
                    stop > start
                    and (stop - start + 1) * n * n * np.prod(2 * new_box + 1) > _MAX_CANDIDATES
                ):
                    break
                box, stop = new_box, stop + 1
            idx = members[start:stop]
            c, nb, off = _chunk_pairs(
                frac, lat[idx], starts[idx], int(n), box, radius.detach()[idx]
            )
            centers.append(c)
            neighbors.append(nb)
            offsets.append(off)
            start = stop
    return torch.cat(centers), torch.cat(neighbors), torch.cat(offsets)


def _chunk_pairs(
    frac: torch.Tensor,
    lattice: torch.Tensor,
    starts: np.ndarray,
    n: int,
    box: np.ndarray,
    radius: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs within ``radius`` for C crystals of n sites starting at node ``starts``.

    lattice (C, 3, 3), radius (C,). Dense over (crystal, i, j, image); only the kept pairs
    leave this function.
    """
    device = frac.device
    idx_t = torch.as_tensor(starts, device=device)
    rows = idx_t[:, None] + torch.arange(n, device=device)  # (C, n)
    f = frac[rows]  # (C, n, 3)
    axes = [torch.arange(-m, m + 1, device=device, dtype=frac.dtype) for m in box]
    shifts = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (I, 3)
    df = f[:, None, :, None, :] - f[:, :, None, None, :] + shifts  # (C, i, j, I, 3)
    vec = df @ lattice[:, None, None]  # (C, i, j, I, 3)
    d2 = (vec * vec).sum(-1)
    r2 = (radius * radius)[:, None, None, None]
    keep = (d2 < r2) & (d2 > 1e-10)
    crystal, i, j, img = keep.nonzero(as_tuple=True)
    base = rows[:, 0]
    return base[crystal] + i, base[crystal] + j, shifts[img]


def smooth_cutoff(distance: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """w(d) = (1 + cos(π d / r_c)) / 2 inside the cutoff, 0 beyond; C¹ at r_c."""
    x = (distance / radius).clamp(max=1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * x))


class ContinuousConv(nn.Module):
    """One continuous graph convolution, node features (n, A) -> (n, A); edge feats (E, D)."""

    def __init__(self, *, node_features: int, edge_features: int) -> None:
        super().__init__()
        self.center = nn.Linear(node_features, 2 * node_features)
        self.neighbor = nn.Linear(node_features, 2 * node_features, bias=False)
        self.edge = nn.Linear(edge_features, 2 * node_features, bias=False)

    def forward(
        self,
        v: torch.Tensor,
        u: torch.Tensor,
        weight: torch.Tensor,
        center: torch.Tensor,
        neighbor: torch.Tensor,
    ) -> torch.Tensor:
        nodes = self.center(v)[center] + self.neighbor(v)[neighbor]
        gate, core = (nodes * self.edge(u)).chunk(2, dim=1)
        message = torch.sigmoid(gate) * core * weight[:, None]
        summed = torch.zeros_like(v).index_add_(0, center, message)
        return F.softplus(v + torch.tanh(summed))


class ContinuousEnergy(nn.Module):
    """ContinuouSP energy of crystals, (B,) (dimensionless, per crystal = per site mean).

    node_features / edge_features: widths A and D (seed: 32 for Perov-5, 64 for MP-20);
    n_conv: convolutions (3 / 6); mlp_layers: dense layers of the head, the last giving
    the scalar (2 / 4); gaussian_max (Å), n_gaussians and width_factor: the distance
    expansion (σ = width_factor × spacing); cutoff_factor: r_c = factor · ρ^(-1/3);
    reference_density (Å⁻³) and density_weight: the penalty weight · (log ρ/ρ₀)².
    """

    def __init__(
        self,
        *,
        node_features: int = 32,
        edge_features: int = 32,
        n_conv: int = 3,
        mlp_layers: int = 2,
        gaussian_max: float = 20.0,
        n_gaussians: int = 100,
        width_factor: float = 3.0,
        cutoff_factor: float = 3.0,
        reference_density: float = 0.05,
        density_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if mlp_layers < 1 or n_conv < 1:
            raise ValueError("n_conv and mlp_layers must be at least 1")
        self.model_args = dict(
            node_features=node_features,
            edge_features=edge_features,
            n_conv=n_conv,
            mlp_layers=mlp_layers,
            gaussian_max=gaussian_max,
            n_gaussians=n_gaussians,
            width_factor=width_factor,
            cutoff_factor=cutoff_factor,
            reference_density=reference_density,
            density_weight=density_weight,
        )
        table = torch.as_tensor(element_feature_table())
        self.register_buffer("element_table", table)
        step = gaussian_max / (n_gaussians - 1)
        self.expansion = GaussianExpansion(
            cutoff=gaussian_max, step=step, width=width_factor * step
        )
        self.edge_embedding = nn.Linear(self.expansion.size, edge_features)
        self.embedding = nn.Linear(table.shape[1], node_features)
        self.convs = nn.ModuleList(
            ContinuousConv(node_features=node_features, edge_features=edge_features)
            for _ in range(n_conv)
        )
        head: list[nn.Module] = []
        for _ in range(mlp_layers - 1):
            head += [nn.Linear(node_features, node_features), nn.Softplus()]
        head.append(nn.Linear(node_features, 1))
        self.head = nn.Sequential(*head)
        self.cutoff_factor = float(cutoff_factor)
        self.reference_density = float(reference_density)
        self.density_weight = float(density_weight)

    def forward(self, batch: CrystalBatch) -> torch.Tensor:
        network, penalty = self.energy_parts(batch)
        return network + penalty

    def energy_parts(self, batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned energy (B,) and the fixed density penalty (B,); their sum is the energy.

        Training regularises the learned part only: the penalty has no parameters, and a
        sample of extreme density would otherwise dominate an L2 term on the energies.
        """
        dtype = self.embedding.weight.dtype
        radius = cutoff_radius(batch, self.cutoff_factor)  # (B,)
        center, neighbor, offset = periodic_edges(batch, radius)
        crystal = batch.node_graph[center]
        frac = batch.frac - torch.floor(batch.frac.detach())  # the offsets refer to [0, 1)
        df = frac[neighbor] - frac[center] + offset
        vec = torch.einsum("ek,ekl->el", df, batch.lattice[crystal])
        distance = torch.sqrt((vec * vec).sum(-1) + 1e-12)
        weight = smooth_cutoff(distance, radius[crystal]).to(dtype)
        u = self.edge_embedding(self.expansion(distance.to(dtype)))
        v = self.embedding(self.element_table[batch.numbers])
        for conv in self.convs:
            v = conv(v, u, weight, center, neighbor)
        pooled = torch.zeros(batch.n_graphs, v.shape[1], dtype=v.dtype, device=v.device)
        pooled.index_add_(0, batch.node_graph, v)
        pooled = pooled / batch.sizes.clamp(min=1)[:, None].to(v.dtype)
        energy = self.head(pooled).squeeze(1).to(batch.lattice.dtype)
        log_ratio = torch.log(number_density(batch) / self.reference_density)
        return energy, self.density_weight * log_ratio**2
