"""Periodic crystal graphs, built for many crystals at once.

Shared by the CGCNN property models (:mod:`matdisc.models.cgcnn`) and the ContinuouSP
energy model. A batch of crystals becomes one disconnected graph (:class:`CrystalGraph`):
nodes are sites (atomic numbers), directed edges join each site to its ``max_neighbors``
nearest periodic images within ``cutoff`` Å (Xie & Grossman 2018: 12 within 8 Å).

The neighbour search is vectorised over crystals: crystals are grouped by site count,
padded to a common set of lattice translations, and all site-image distances of a group
are computed in one tensor operation; a ``topk`` picks the nearest. No Python loop runs
over atoms or neighbours.

Ties at the k-th distance: when several neighbours share the distance of the k-th one
(common in symmetric crystals, e.g. 4 Sr + 8 O at a/√2 around O in SrTiO3 when only 10
slots are left), truncating to exactly k would pick an arbitrary subset, so predictions
would change under rotation or site permutation. Instead every neighbour of that last
shell is kept with the weight (slots left)/(shell size); weights sum to ``max_neighbors``
(or to the number of neighbours within the cutoff, if fewer). This keeps the graph a
function of the crystal alone (invariant to rotation, translation, permutation, and
identical for a supercell and its primitive cell).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure

from matdisc.errors import UserError

log = logging.getLogger(__name__)

#: The element feature table (package data, so it is found from an installed wheel too;
#: made by the checkout's resources/make_element_features.py).
ELEMENT_FEATURES_PATH = Path(
    str(resources.files("matdisc") / "resources" / "element_features.json")
)

#: Bound on the number of candidate distances computed at once (memory, float64).
_MAX_CANDIDATES = 4_000_000  # float32 entries, 16 MB


@lru_cache(maxsize=2)
def element_feature_table(path: Path | str = ELEMENT_FEATURES_PATH) -> np.ndarray:
    """One-hot element features, shape (max_z + 1, n_features), float32; row = atomic number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"the element feature table {path} is missing; run "
            f"'python resources/make_element_features.py' from the repository root."
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    return np.asarray(data["features"], dtype=np.float32)


@dataclass
class CrystalGraph:
    """A batch of crystals as one graph.

    numbers: (n_nodes,) int64 atomic numbers.
    node_graph: (n_nodes,) int64 index of the crystal each node belongs to.
    edge_center, edge_neighbor: (n_edges,) int64 node indices; messages flow from
        neighbour to centre.
    edge_distance: (n_edges,) float32 distances in Å.
    edge_weight: (n_edges,) float32 multiplicity weights (1, or a fraction for the tied
        last shell; they sum to the neighbour count of each centre).
    n_graphs: number of crystals.
    """

    numbers: torch.Tensor
    node_graph: torch.Tensor
    edge_center: torch.Tensor
    edge_neighbor: torch.Tensor
    edge_distance: torch.Tensor
    edge_weight: torch.Tensor
    n_graphs: int

    def to(self, device: torch.device | str) -> CrystalGraph:
        return CrystalGraph(
            numbers=self.numbers.to(device),
            node_graph=self.node_graph.to(device),
            edge_center=self.edge_center.to(device),
            edge_neighbor=self.edge_neighbor.to(device),
            edge_distance=self.edge_distance.to(device),
            edge_weight=self.edge_weight.to(device),
            n_graphs=self.n_graphs,
        )

    @property
    def n_nodes(self) -> int:
        return int(self.numbers.shape[0])

    def subset(self, index: Sequence[int] | np.ndarray) -> CrystalGraph:
        """The crystals ``index`` (in that order) as a new graph, renumbered from 0."""
        return GraphStore.from_graph(self).batch(index)


@dataclass
class CrystalArrays:
    """Raw arrays of crystals: the input of :func:`build_graph`.

    lattices: per crystal (3, 3) Å, rows are lattice vectors; frac_coords: (n_i, 3);
    numbers: (n_i,) atomic numbers.
    """

    lattices: list[np.ndarray]
    frac_coords: list[np.ndarray]
    numbers: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.lattices)

    def take(self, index: Sequence[int] | np.ndarray) -> CrystalArrays:
        return CrystalArrays(
            [self.lattices[i] for i in index],
            [self.frac_coords[i] for i in index],
            [self.numbers[i] for i in index],
        )


def _symbol_to_z() -> dict[str, int]:
    from pymatgen.core.periodic_table import Element

    return {el.symbol: el.Z for el in Element}


_Z = _symbol_to_z()


def arrays_from_dict(d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lattice, frac_coords, numbers) of a pymatgen ``Structure.as_dict()`` mapping.

    Reads the dict directly (much faster than building a Structure). Raises ValueError
    for a disordered site (more than one species or partial occupancy) or an unknown
    element.
    """
    lattice = np.asarray(d["lattice"]["matrix"], dtype=np.float64)
    sites = d["sites"]
    numbers = np.empty(len(sites), dtype=np.int64)
    frac = np.empty((len(sites), 3), dtype=np.float64)
    for i, site in enumerate(sites):
        species = site["species"]
        if len(species) != 1 or abs(float(species[0].get("occu", 1.0)) - 1.0) > 1e-6:
            raise ValueError(f"site {i} is disordered ({species}); CGCNN needs ordered sites")
        element = species[0]["element"]
        if element not in _Z:
            raise ValueError(f"site {i} has an unknown element {element!r}")
        numbers[i] = _Z[element]
        frac[i] = site["abc"]
    return lattice, frac, numbers


def parse_structures(items: Sequence) -> tuple[CrystalArrays, list[int], dict[int, str]]:
    """Crystal arrays of pymatgen Structures, ``as_dict()`` mappings or their JSON strings.

    Returns the arrays of the crystals that could be read, their positions in ``items``,
    and {position: reason} for the ones that could not (the caller logs and counts them).
    """
    lattices, fracs, numbers, ok, bad = [], [], [], [], {}
    for i, item in enumerate(items):
        try:
            if isinstance(item, Structure):
                if not item.is_ordered:
                    raise ValueError("disordered structure; CGCNN needs ordered sites")
                lat = item.lattice.matrix
                frac = item.frac_coords
                z = np.asarray(item.atomic_numbers, dtype=np.int64)
            else:
                d = json.loads(item) if isinstance(item, (str, bytes)) else item
                lat, frac, z = arrays_from_dict(d)
            if len(z) == 0:
                raise ValueError("no sites")
            if abs(np.linalg.det(lat)) < 1e-6:
                raise ValueError("singular lattice")
        except (ValueError, KeyError, TypeError) as exc:
            bad[i] = str(exc)
            continue
        lattices.append(lat)
        fracs.append(frac)
        numbers.append(z)
        ok.append(i)
    return CrystalArrays(lattices, fracs, numbers), ok, bad


def _image_ranges(lattices: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Per crystal and axis, how many cell translations can hold a site within ``radius``.

    With fractional coordinates wrapped to [0, 1), translations -m..m along axis k with
    m = ceil(radius / d_k) (d_k the spacing of the lattice planes normal to the reciprocal
    vector k) contain every pair closer than ``radius``. lattices (S, 3, 3), radius (S,);
    returns (S, 3) int.
    """
    recip = np.linalg.inv(lattices)  # columns are reciprocal vectors (without 2π)
    inv_spacing = np.linalg.norm(recip, axis=1)  # |b_k| = 1 / d_k, shape (S, 3)
    return np.ceil(radius[:, None] * inv_spacing - 1e-9).astype(np.int64)


def _search_radius(lattices: np.ndarray, sizes: np.ndarray, k: int, cutoff: float) -> np.ndarray:
    """A first search radius per crystal: a sphere holding ~2k sites at the mean density.

    Sites whose k-th neighbour shell is not inside it are searched again with ``cutoff``,
    so this only sets the speed, never the result.
    """
    volume_per_site = np.abs(np.linalg.det(lattices)) / sizes
    radius = (3.0 * 2 * k * volume_per_site / (4.0 * np.pi)) ** (1.0 / 3.0) + 0.5
    return np.minimum(radius, cutoff)


def build_graph(
    structures: Sequence[Structure] | CrystalArrays | None = None,
    *,
    lattices: Sequence[np.ndarray] | None = None,
    frac_coords: Sequence[np.ndarray] | None = None,
    numbers: Sequence[np.ndarray] | None = None,
    cutoff: float = 8.0,
    max_neighbors: int = 12,
    tie_tolerance: float = 1e-3,
) -> CrystalGraph:
    """Crystal graph of many crystals, from pymatgen structures or raw arrays.

    lattices: per crystal (3, 3) Å, rows are lattice vectors; frac_coords: (n_i, 3);
    numbers: (n_i,) atomic numbers. ``tie_tolerance`` (Å): distances this close to the
    k-th neighbour distance count as the same shell. A site with no neighbour within
    ``cutoff`` gets no edges (logged).
    """
    if structures is not None:
        if isinstance(structures, CrystalArrays):
            arrays = structures
        else:
            arrays, _, bad = parse_structures(structures)
            if bad:
                first = next(iter(bad.items()))
                raise ValueError(
                    f"{len(bad)} structures cannot be read, e.g. #{first[0]}: {first[1]}"
                )
        lattices, frac_coords, numbers = arrays.lattices, arrays.frac_coords, arrays.numbers
    if lattices is None or frac_coords is None or numbers is None:
        raise ValueError("pass structures, or lattices, frac_coords and numbers")
    n_graphs = len(lattices)
    sizes = np.fromiter((len(z) for z in numbers), dtype=np.int64, count=n_graphs)
    if n_graphs == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return CrystalGraph(empty, empty, empty, empty, empty.float(), empty.float(), 0)
    if (sizes == 0).any():
        raise ValueError(f"crystals with no sites at positions {np.flatnonzero(sizes == 0)}")
    node_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    lat = np.asarray(lattices, dtype=np.float64).reshape(n_graphs, 3, 3)
    all_numbers = np.concatenate([np.asarray(z, dtype=np.int64) for z in numbers])
    frac_all = np.concatenate([np.asarray(f, dtype=np.float64).reshape(-1, 3) for f in frac_coords])
    frac_all = frac_all - np.floor(frac_all)

    parts: list[tuple[torch.Tensor, ...]] = []
    todo = np.arange(n_graphs)
    radius = _search_radius(lat, sizes, max_neighbors, cutoff)
    for attempt in range(2):
        if attempt == 1:
            radius = np.full(n_graphs, float(cutoff))
        edges, failed = _search(
            todo, lat, frac_all, node_offset, sizes, radius, cutoff, max_neighbors, tie_tolerance
        )
        keep = ~np.isin(edges[4].numpy(), failed)
        parts.append(tuple(t[torch.from_numpy(keep)] for t in edges))
        todo = failed
        if len(todo) == 0:
            break
    center, neighbor, dist, weight, _ = (torch.cat(x) for x in zip(*parts, strict=True))
    lonely = np.setdiff1d(np.arange(len(all_numbers)), center.numpy())
    if len(lonely):
        log.warning(
            "%d sites have no neighbour within %.1f Å and get no edges", len(lonely), cutoff
        )
    return CrystalGraph(
        numbers=torch.from_numpy(all_numbers),
        node_graph=torch.from_numpy(np.repeat(np.arange(n_graphs), sizes)),
        edge_center=center,
        edge_neighbor=neighbor,
        edge_distance=dist.float(),
        edge_weight=weight.float(),
        n_graphs=n_graphs,
    )


def _search(
    todo: np.ndarray,
    lat: np.ndarray,
    frac_all: np.ndarray,
    node_offset: np.ndarray,
    sizes: np.ndarray,
    radius: np.ndarray,
    cutoff: float,
    k: int,
    tol: float,
) -> tuple[tuple[torch.Tensor, ...], np.ndarray]:
    """Edges of the crystals ``todo`` found within ``radius``; also the crystals to redo.

    Crystals are grouped by site count and chunked (memory bound); within a chunk all
    share one box of translations. Returns (centre, neighbour, distance, weight, crystal)
    per edge with global node ids, and the crystals with a site whose k-th neighbour
    shell may reach beyond their search radius (their edges must be discarded).
    """
    ranges = _image_ranges(lat[todo], radius[todo])
    n_images = np.prod(2 * ranges + 1, axis=1)
    order = np.lexsort((n_images, sizes[todo]))
    out: list[tuple[torch.Tensor, ...]] = []
    failed: list[np.ndarray] = []
    start = 0
    while start < len(order):
        n = sizes[todo[order[start]]]
        stop = start
        box = np.zeros(3, dtype=np.int64)
        while stop < len(order) and sizes[todo[order[stop]]] == n:
            new_box = np.maximum(box, ranges[order[stop]])
            cost = (stop - start + 1) * n * n * np.prod(2 * new_box + 1)
            if stop > start and cost > _MAX_CANDIDATES:
                break
            box = new_box
            stop += 1
        idx = todo[order[start:stop]]
        rows = (node_offset[idx][:, None] + np.arange(n)).reshape(-1)
        frac = frac_all[rows].reshape(len(idx), n, 3)
        (crystal, center), nb, d, w, bad = _chunk_edges(
            lat[idx], frac, box, radius[idx], cutoff, k, tol
        )
        off = torch.from_numpy(node_offset[idx])
        out.append((center + off[crystal], nb + off[crystal], d, w, torch.from_numpy(idx)[crystal]))
        failed.append(idx[bad])
        start = stop
    edges = tuple(torch.cat(x) for x in zip(*out, strict=True))
    return edges, np.concatenate(failed)


def _chunk_edges(
    lat: np.ndarray,
    frac: np.ndarray,
    box: np.ndarray,
    radius: np.ndarray,
    cutoff: float,
    k: int,
    tol: float,
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Edges of B crystals with N sites each, searched over translations -box..box.

    lat (B, 3, 3), frac (B, N, 3) in [0, 1), radius (B,) search radius in Å (<= cutoff).
    Candidate distances are screened in float32; the distances of the kept edges are
    recomputed in float64. Returns ((crystal, centre site), neighbour site, distance,
    weight) per edge with site indices local to each crystal, and a (B,) bool array of
    crystals whose search radius was too small to be sure of their k-th neighbour shell.
    """
    b, n, _ = frac.shape
    axes = [np.arange(-m, m + 1) for m in box]
    shifts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)  # (I, 3)
    trans = shifts.astype(np.float64) @ lat  # (B, I, 3) Cartesian translations
    # Drop translations no crystal of the chunk needs: |d| >= |t| - (longest cell diagonal).
    signs = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], dtype=np.float64)
    diag = np.linalg.norm(signs @ lat, axis=-1).max(axis=1)  # (B,)
    needed = (np.linalg.norm(trans, axis=-1) - diag[:, None] <= radius[:, None]).any(axis=0)
    shifts, trans = shifts[needed], trans[:, needed]
    n_img = shifts.shape[0]
    pos = frac @ lat  # (B, N, 3)
    dp = pos[:, None, :, :] - pos[:, :, None, :]  # (B, N_i, N_j, 3): pos_j - pos_i
    dp32 = torch.from_numpy(dp.reshape(b, n * n, 3).astype(np.float32))
    tr32 = torch.from_numpy(trans.astype(np.float32))
    # |dp + t|² = |dp|² + 2 dp·t + |t|², one batched matmul
    d2 = torch.baddbmm(
        (dp32 * dp32).sum(-1, keepdim=True) + (tr32 * tr32).sum(-1)[:, None, :],
        dp32,
        tr32.transpose(1, 2),
        alpha=2.0,
    ).view(b, n, n * n_img)
    r2 = torch.from_numpy((radius**2).astype(np.float32))[:, None, None]
    d2.masked_fill_((d2 > r2) | (d2 < 1e-12), torch.inf)  # beyond the radius; the site itself
    kk = min(k, d2.shape[-1])
    kth2 = torch.topk(d2, kk, dim=-1, largest=False, sorted=False).values.max(dim=-1).values
    kth = kth2.sqrt()  # (B, N), inf where fewer than k found
    found_all = torch.isfinite(kth)
    rad = torch.from_numpy(radius.astype(np.float32))[:, None]
    at_cutoff = torch.from_numpy(radius >= cutoff)[:, None]
    bad = ((~found_all | (kth + tol > rad)) & ~at_cutoff).any(dim=1).numpy()
    limit = torch.where(found_all, kth + tol, rad)
    keep = d2 <= (limit * limit)[..., None]
    crystal, center, flat = keep.nonzero(as_tuple=True)
    nb = flat // n_img
    img = flat % n_img
    # exact distances of the kept edges
    vec = dp[crystal.numpy(), center.numpy(), nb.numpy()] + trans[crystal.numpy(), img.numpy()]
    dist = torch.from_numpy(np.linalg.norm(vec, axis=-1))
    # multiplicity weights of the last (tied) shell
    kth_e = kth[crystal, center].double()
    inside = dist < kth_e - tol
    node = crystal * n + center
    n_inside = torch.bincount(node[inside], minlength=b * n)
    n_shell = torch.bincount(node[~inside], minlength=b * n).clamp(min=1)
    shell_w = (kk - n_inside).double() / n_shell
    weight = torch.where(inside | ~torch.isfinite(kth_e), torch.ones_like(dist), shell_w[node])
    return (crystal, center), nb, dist, weight, bad


GAUSSIAN_TAIL = 60.0  # exponent beyond which an edge Gaussian is 0


class GaussianExpansion(torch.nn.Module):
    """Distances -> Gaussians exp(-(d - μ_k)² / σ²) on μ_k = 0, step, ..., cutoff.

    Input (E,) Å; output (E, K) with K = cutoff / step + 1 (41 for 8 Å, 0.2 Å).
    """

    def __init__(self, *, cutoff: float = 8.0, step: float = 0.2, width: float = 0.2) -> None:
        super().__init__()
        self.register_buffer(
            "centers", torch.arange(0.0, cutoff + step / 2, step, dtype=torch.float32)
        )
        self.width = float(width)

    @property
    def size(self) -> int:
        return int(self.centers.shape[0])

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        return _Gaussians.apply(distance, self.centers, self.width)


def gaussians(distance: torch.Tensor, centers: torch.Tensor, width: float) -> torch.Tensor:
    """exp(-((d - μ) / σ)²), (E, K), zero beyond :data:`GAUSSIAN_TAIL`; no autograd graph."""
    with torch.no_grad():
        arg = (distance[:, None] - centers).div_(width).square_()
        # Gaussians below exp(-60) ~ 1e-26 are set to 0: left alone, the far tails reach
        # float32's subnormal range (< 1.2e-38), in which CPU matrix products run up to 70x
        # slower (the edge layer's weight gradient of a CGCNN batch: 70 ms instead of 1).
        # The exponent is clamped there before exp as well: exp of -1000 (most entries at
        # a 14 Å cutoff) takes the CPU's underflow path, 16 times slower than exp of -60.
        tail = arg > GAUSSIAN_TAIL
        return arg.clamp_(max=GAUSSIAN_TAIL).neg_().exp_().masked_fill_(tail, 0.0)


class _Gaussians(torch.autograd.Function):
    """exp(-((d - μ) / σ)²) of (E,) distances on (K,) centres, computed in place.

    The same numbers as the plain expression (the same operations in the same order),
    with two tensors of (E, K) instead of six: at the ~36,000 edges of 64 five-site MALA
    chains, allocating the intermediates cost more than the arithmetic. The backward is
    written out, and is itself differentiable (the EBM's gradient penalty needs it).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        distance: torch.Tensor,
        centers: torch.Tensor,
        width: float,
    ) -> torch.Tensor:
        out = gaussians(distance, centers, width)
        ctx.save_for_backward(distance, centers, out)
        ctx.width = width  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        distance, centers, out = ctx.saved_tensors  # type: ignore[attr-defined]
        width: float = ctx.width  # type: ignore[attr-defined]
        # Σ_k g_k e_k (d - μ_k) = d Σ_k g_k e_k - Σ_k g_k e_k μ_k: one product of (E, K)
        sums = (grad * out) @ torch.stack((torch.ones_like(centers), centers), dim=1)
        return (distance * sums[:, 0] - sums[:, 1]) * (-2.0 / width**2), None, None


class GraphStore:
    """Graphs of a whole data set, with fast batching of any subset of crystals.

    Edges are sorted by crystal so a batch is a gather of contiguous node and edge ranges
    (vectorised, no loop over crystals).
    """

    def __init__(self, graph: CrystalGraph) -> None:
        g = graph
        n_nodes = np.bincount(g.node_graph.numpy(), minlength=g.n_graphs)
        edge_graph = g.node_graph[g.edge_center]
        perm = torch.argsort(edge_graph, stable=True)
        self.numbers = g.numbers
        self.edge_center = g.edge_center[perm]
        self.edge_neighbor = g.edge_neighbor[perm]
        self.edge_distance = g.edge_distance[perm]
        self.edge_weight = g.edge_weight[perm]
        n_edges = np.bincount(edge_graph.numpy(), minlength=g.n_graphs)
        self.node_start = np.concatenate([[0], np.cumsum(n_nodes)[:-1]]).astype(np.int64)
        self.edge_start = np.concatenate([[0], np.cumsum(n_edges)[:-1]]).astype(np.int64)
        self.n_nodes = n_nodes.astype(np.int64)
        self.n_edges = n_edges.astype(np.int64)

    @classmethod
    def from_graph(cls, graph: CrystalGraph) -> GraphStore:
        return cls(graph)

    def __len__(self) -> int:
        return len(self.n_nodes)

    def batch(self, index: Sequence[int] | np.ndarray) -> CrystalGraph:
        """Crystals ``index`` as one graph (node/edge ids renumbered)."""
        index = np.asarray(index, dtype=np.int64)
        nn_, ne = self.n_nodes[index], self.n_edges[index]
        node_ids = _ranges(self.node_start[index], nn_)
        edge_ids = torch.from_numpy(_ranges(self.edge_start[index], ne))
        new_start = np.concatenate([[0], np.cumsum(nn_)[:-1]])
        # old node id -> new node id: shift each crystal's block
        shift = torch.from_numpy(np.repeat(new_start - self.node_start[index], ne))
        return CrystalGraph(
            numbers=self.numbers[torch.from_numpy(node_ids)],
            node_graph=torch.from_numpy(np.repeat(np.arange(len(index)), nn_)),
            edge_center=self.edge_center[edge_ids] + shift,
            edge_neighbor=self.edge_neighbor[edge_ids] + shift,
            edge_distance=self.edge_distance[edge_ids],
            edge_weight=self.edge_weight[edge_ids],
            n_graphs=len(index),
        )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each pair, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets
