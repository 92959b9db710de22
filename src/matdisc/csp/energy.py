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

from matdisc.graphs import GaussianExpansion, element_feature_table, gaussians

log = logging.getLogger(__name__)

#: Largest translation searched along one axis (guards against flat cells; see periodic_edges).
MAX_IMAGES_PER_AXIS = 16

#: Bound on the candidate pair-image distances computed at once (float64 entries).
_MAX_CANDIDATES = 2_000_000


class _Counter:
    """A running count (cells whose neighbour search was bounded; see periodic_edges)."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, n: int) -> None:
        self.total += n


#: Cell evaluations with a neighbour search bounded at MAX_IMAGES_PER_AXIS, since import.
FLAT_CELLS = _Counter()


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

    def split(self, max_nodes: int) -> list[CrystalBatch]:
        """Consecutive crystals in batches of at most ``max_nodes`` sites (one crystal at least)."""
        sizes = self.sizes.tolist()
        parts, first, node = [], 0, 0
        while first < len(sizes):
            last, n = first + 1, sizes[first]
            while last < len(sizes) and n + sizes[last] <= max_nodes:
                n += sizes[last]
                last += 1
            nodes = slice(node, node + n)
            parts.append(
                CrystalBatch(
                    self.frac[nodes],
                    self.lattice[first:last],
                    self.numbers[nodes],
                    self.node_graph[nodes] - first,
                )
            )
            first, node = last, node + n
        return parts

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
    (frac_j + offset) @ lattice, ordered by (centre, neighbour, offset). The site itself
    (offset 0) is excluded.

    Vectorised over crystals of equal size, and each crystal searches only its own
    translations: -m_k..m_k along axis k with m_k = ceil(r / d_k) (d_k the spacing of the
    lattice planes), less those farther than r plus the cell's longest diagonal. (A box
    shared by all crystals of a batch costs as much as its most elongated cell needs
    for every crystal: random MALA starts made that 15 times the work.)
    """
    frac = batch.frac.detach()
    frac = frac - torch.floor(frac)
    lat = batch.lattice.detach()
    radius = radius.detach()
    sizes = batch.sizes
    starts = torch.cumsum(sizes, 0) - sizes
    inv_spacing = torch.linalg.norm(torch.linalg.inv(lat), dim=1)  # (B, 3) = 1/d_k
    ranges = torch.ceil(radius[:, None] * inv_spacing - 1e-9).long()
    flat = (ranges > MAX_IMAGES_PER_AXIS).any(dim=1)
    if bool(flat.any()):
        # a near-degenerate (flat) cell would need millions of images: bound the search
        # (its far images are dropped; the density penalty pushes such cells away). Counted
        # here, reported once per MALA run (random starts make a few at every step).
        FLAT_CELLS.add(int(flat.sum()))
        ranges = ranges.clamp(max=MAX_IMAGES_PER_AXIS)
    n_images = (2 * ranges + 1).prod(dim=1)
    parts = []
    for n in torch.unique(sizes).tolist():
        members = torch.nonzero(sizes == n).flatten()
        cost = torch.cumsum(n_images[members] * n * n, 0)
        first = 0
        while first < len(members):
            # crystals up to the candidate budget (at least one)
            limit = int(cost[first - 1]) + _MAX_CANDIDATES if first else _MAX_CANDIDATES
            last = max(first + 1, int(torch.searchsorted(cost, limit, right=True)))
            idx = members[first:last]
            parts.append(_crystal_pairs(frac, lat[idx], starts[idx], n, ranges[idx], radius[idx]))
            first = last
    center, neighbor, offset = (torch.cat(x) for x in zip(*parts, strict=True))
    # (centre, neighbour, offset) order, whatever order the size groups came in
    dims = 2 * ranges.max(dim=0).values + 1
    off = offset.long() + ranges.max(dim=0).values
    image_rank = (off[:, 0] * dims[1] + off[:, 1]) * dims[2] + off[:, 2]
    local_j = neighbor - starts[batch.node_graph[neighbor]]
    key = (center * sizes.max() + local_j) * dims.prod() + image_rank
    order = torch.argsort(key)
    return center[order], neighbor[order], offset[order]


def _crystal_pairs(
    frac: torch.Tensor,
    lattice: torch.Tensor,
    starts: torch.Tensor,
    n: int,
    ranges: torch.Tensor,
    radius: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs within ``radius`` for C crystals of n sites starting at node ``starts``.

    lattice (C, 3, 3), ranges (C, 3) translations searched per axis, radius (C,). The
    translations are ragged (each crystal its own); distances are dense over (translation,
    i, j) and only the kept pairs leave this function.
    """
    device, dtype = frac.device, frac.dtype
    dims = 2 * ranges + 1  # (C, 3)
    count = dims.prod(dim=1)
    owner = torch.repeat_interleave(torch.arange(len(count), device=device), count)  # (T,)
    local = torch.arange(len(owner), device=device) - (torch.cumsum(count, 0) - count)[owner]
    dy, dz = dims[owner, 1], dims[owner, 2]
    shifts = (
        torch.stack((local // (dy * dz), (local // dz) % dy, local % dz), dim=1) - ranges[owner]
    )  # (T, 3) integers, each crystal's box in lexicographic order
    shifts = shifts.to(dtype)
    trans = torch.einsum("tk,tkl->tl", shifts, lattice[owner])  # Cartesian translations
    # drop translations no pair can use: |d| >= |t| - (longest cell diagonal)
    signs = torch.tensor(
        [[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], dtype=dtype, device=device
    )
    diag = torch.linalg.norm(signs @ lattice, dim=-1).max(dim=1).values  # (C,)
    needed = torch.linalg.norm(trans, dim=1) - diag[owner] <= radius[owner]
    shifts, trans, owner = shifts[needed], trans[needed], owner[needed]
    rows = starts[:, None] + torch.arange(n, device=device)  # (C, n)
    pos = frac[rows] @ lattice  # (C, n, 3)
    dp = pos[:, None, :, :] - pos[:, :, None, :]  # (C, i, j, 3): pos_j - pos_i
    vec = dp[owner] + trans[:, None, None, :]  # (T, i, j, 3)
    d2 = (vec * vec).sum(-1)
    r2 = (radius * radius)[owner][:, None, None]
    image, i, j = ((d2 < r2) & (d2 > 1e-10)).nonzero(as_tuple=True)
    base = starts[owner[image]]
    return base + i, base + j, shifts[image]


def smooth_cutoff(distance: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """w(d) = (1 + cos(π d / r_c)) / 2 inside the cutoff, 0 beyond; C¹ at r_c."""
    x = (distance / radius).clamp(max=1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * x))


@dataclass
class EdgeIndex:
    """Directed edges (E,) and the distinct (centre, neighbour) site pairs they join.

    Edges of one pair (the same two sites, different images) share the node part of
    every convolution, so it is computed per pair (P, about 25 per five-site crystal)
    and gathered to the edges (E, about 565) once instead of twice.
    """

    center: torch.Tensor
    neighbor: torch.Tensor
    pair_center: torch.Tensor  # (P,)
    pair_neighbor: torch.Tensor  # (P,)
    edge_pair: torch.Tensor  # (E,) the pair of each edge

    @classmethod
    def from_edges(cls, center: torch.Tensor, neighbor: torch.Tensor, n_nodes: int) -> EdgeIndex:
        key = center * n_nodes + neighbor
        pairs, edge_pair = torch.unique_consecutive(key, return_inverse=True)
        return cls(center, neighbor, pairs // n_nodes, pairs % n_nodes, edge_pair)


class _EdgeEmbedding(torch.autograd.Function):
    """u = W g(d) + b: distances (E,) -> edge features (E, D), g the Gaussian expansion.

    The backward needs no (E, K) tensor for the distances: with a = W g(d) and
    m = W (μ ⊙ g(d)) (one product with [W; W diag μ] in the forward),
    ∂u/∂d = -2/σ² (d a - m), so ∂L/∂d = -2/σ² (d Σ_k gu_k a_k - Σ_k gu_k m_k). The
    Gaussians are kept only when W needs a gradient (training). Differentiable once.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        distance: torch.Tensor,
        centers: torch.Tensor,
        width: float,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        g = gaussians(distance, centers, width)
        both = g @ torch.cat((weight, weight * centers), dim=0).T  # (E, 2D)
        d_out = weight.shape[0]
        a, m = both[:, :d_out], both[:, d_out:]
        ctx.save_for_backward(distance, a, m, g if ctx.needs_input_grad[3] else None)
        ctx.width = width  # type: ignore[attr-defined]
        return a + bias

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        distance, a, m, g = ctx.saved_tensors  # type: ignore[attr-defined]
        width: float = ctx.width  # type: ignore[attr-defined]
        g_distance = g_weight = g_bias = None
        if ctx.needs_input_grad[0]:
            g_distance = (distance * (grad * a).sum(1) - (grad * m).sum(1)) * (-2.0 / width**2)
        if ctx.needs_input_grad[3]:
            g_weight = grad.T @ g
        if ctx.needs_input_grad[4]:
            g_bias = grad.sum(0)
        return g_distance, None, None, g_weight, g_bias


class _Messages(torch.autograd.Function):
    """Σ over a site's edges of σ(p_g ⊙ e_g) ⊙ (p_c ⊙ e_c) · w: (n, A) node sums.

    p_g, p_c (P, A) the node parts of the gate and the core per site pair, gathered to the
    edges; e_g, e_c (E, A) the edge parts; w (E,) the smooth cutoff. The same numbers as
    the autograd expression (same operations, same order), with the backward written out
    in place: about half the (E, A) passes and allocations of autograd's, and no second
    derivative (``once_differentiable``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        pair_gate: torch.Tensor,
        pair_core: torch.Tensor,
        edge_gate: torch.Tensor,
        edge_core: torch.Tensor,
        weight: torch.Tensor,
        edges: EdgeIndex,
        n_nodes: int,
    ) -> torch.Tensor:
        gate = pair_gate.index_select(0, edges.edge_pair).mul_(edge_gate)
        core = pair_core.index_select(0, edges.edge_pair).mul_(edge_core)
        sig = gate.sigmoid_()
        message = (sig * core).mul_(weight[:, None])
        summed = message.new_zeros(n_nodes, message.shape[1]).index_add_(0, edges.center, message)
        ctx.save_for_backward(pair_gate, pair_core, edge_gate, edge_core, weight, sig, core)
        ctx.edges = edges  # type: ignore[attr-defined]
        return summed

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        pair_gate, pair_core, edge_gate, edge_core, weight, sig, core = ctx.saved_tensors  # type: ignore[attr-defined]
        edges: EdgeIndex = ctx.edges  # type: ignore[attr-defined]
        g_message = grad.index_select(0, edges.center)  # (E, A)
        g_weight = (g_message * sig).mul_(core).sum(dim=1)
        g_message.mul_(weight[:, None])
        g_core = g_message * sig
        g_gate = torch.ops.aten.sigmoid_backward(g_message.mul_(core), sig)
        g_edge_core = pair_core.index_select(0, edges.edge_pair).mul_(g_core)
        g_edge_gate = pair_gate.index_select(0, edges.edge_pair).mul_(g_gate)
        n_pairs = pair_gate.shape[0]
        g_pair_core = g_core.new_zeros(n_pairs, g_core.shape[1]).index_add_(
            0, edges.edge_pair, g_core.mul_(edge_core)
        )
        g_pair_gate = g_gate.new_zeros(n_pairs, g_gate.shape[1]).index_add_(
            0, edges.edge_pair, g_gate.mul_(edge_gate)
        )
        return g_pair_gate, g_pair_core, g_edge_gate, g_edge_core, g_weight, None, None


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
        edges: EdgeIndex,
        *,
        fused: bool = True,
    ) -> torch.Tensor:
        """fused: the edge messages by :class:`_Messages` (faster, differentiable once);
        otherwise by autograd (differentiable twice, for the gradient penalty)."""
        # The node part is computed per site pair, then gathered to the edges; the gate
        # and core halves are kept apart (no (E, 2A) tensor to split, and no concatenation
        # of their gradients).
        half = v.shape[1]
        pair = self.center(v).index_select(0, edges.pair_center) + self.neighbor(v).index_select(
            0, edges.pair_neighbor
        )
        edge_w = self.edge.weight
        # (contiguous: gathering rows of a strided view is four times slower)
        pair_gate, pair_core = pair[:, :half].contiguous(), pair[:, half:].contiguous()
        edge_gate, edge_core = F.linear(u, edge_w[:half]), F.linear(u, edge_w[half:])
        if fused:
            summed = _Messages.apply(
                pair_gate, pair_core, edge_gate, edge_core, weight, edges, v.shape[0]
            )
        else:
            gate = pair_gate.index_select(0, edges.edge_pair) * edge_gate
            core = pair_core.index_select(0, edges.edge_pair) * edge_core
            message = torch.sigmoid(gate) * core * weight[:, None]
            summed = torch.zeros_like(v).index_add_(0, edges.center, message)
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

    def energy_parts(
        self, batch: CrystalBatch, *, differentiable_twice: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned energy (B,) and the fixed density penalty (B,); their sum is the energy.

        Training regularises the learned part only: the penalty has no parameters, and a
        sample of extreme density would otherwise dominate an L2 term on the energies.
        differentiable_twice: build the graph from autograd's own operations, so that a
        gradient of the energy can itself be differentiated (the gradient penalty);
        otherwise the edge layers use hand-written backwards (:class:`_EdgeEmbedding`,
        :class:`_Messages`: the same energy, gradients equal to float rounding, fewer
        passes over the (edges x features) tensors).
        """
        fused = not differentiable_twice
        dtype = self.embedding.weight.dtype
        radius = cutoff_radius(batch, self.cutoff_factor)  # (B,)
        center, neighbor, offset = periodic_edges(batch, radius)
        crystal = batch.node_graph.index_select(0, center)
        frac = batch.frac - torch.floor(batch.frac.detach())  # the offsets refer to [0, 1)
        df = frac.index_select(0, neighbor) - frac.index_select(0, center) + offset
        vec = torch.einsum("ek,ekl->el", df, batch.lattice.index_select(0, crystal))
        distance = torch.sqrt((vec * vec).sum(-1) + 1e-12)
        weight = smooth_cutoff(distance, radius.index_select(0, crystal)).to(dtype)
        if fused:
            u = _EdgeEmbedding.apply(
                distance.to(dtype),
                self.expansion.centers,
                self.expansion.width,
                self.edge_embedding.weight,
                self.edge_embedding.bias,
            )
        else:
            u = self.edge_embedding(self.expansion(distance.to(dtype)))
        v = self.embedding(self.element_table[batch.numbers])
        edges = EdgeIndex.from_edges(center, neighbor, len(batch.numbers))
        for conv in self.convs:
            v = conv(v, u, weight, edges, fused=fused)
        pooled = torch.zeros(batch.n_graphs, v.shape[1], dtype=v.dtype, device=v.device)
        pooled.index_add_(0, batch.node_graph, v)
        pooled = pooled / batch.sizes.clamp(min=1)[:, None].to(v.dtype)
        energy = self.head(pooled).squeeze(1).to(batch.lattice.dtype)
        log_ratio = torch.log(number_density(batch) / self.reference_density)
        return energy, self.density_weight * log_ratio**2
