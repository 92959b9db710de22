"""MALA over crystals (fractional coordinates and lattice), batched over many chains.

Target density of a chain: p(x) ∝ exp(-β E(x)) with x = (frac, lattice) of one crystal
of fixed species. One step at inverse temperature β and step size h:

    x' = x - h β ∇E(x) + sqrt(2h) ξ,   ξ ~ N(0, I)  (frac and lattice alike)

accepted with the Metropolis-Hastings probability (per chain)
min(1, exp(-β(E(x') - E(x))) q(x|x') / q(x'|x)), q the Gaussian proposal density. The
energy is periodic in the fractional coordinates, so they live on the torus and are
wrapped after each step. β and h follow exponential schedules (seed: β 1 → 1000,
h 0.5 → 0.0005, 1,000 steps).

Lattice reduction (the seed Niggli-reduces each step): after each step, chains whose
lattice is not reduced (some |a_i·a_j| > |a_j|²/2) get a reduced cell with the same
Cartesian orientation, L' = M L with M integer and |det M| = 1, frac' = frac M⁻¹
(wrapped). That re-describes the same crystal, so the energy and the target density are
unchanged (M is linear with |det| 1); the cached gradients are transformed exactly
(∇f' = ∇f Mᵀ, ∇L' = M⁻ᵀ ∇L) instead of recomputed. The reduction is a vectorised
pairwise (Gauss-Lagrange) reduction over all chains (:func:`reduction_matrices`), not
pymatgen's per-cell Niggli algorithm: it gives compact cells (all the sampler needs from
Niggli: an invariant energy does not care which reduced basis is used) at tensor speed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from matdisc.csp.energy import FLAT_CELLS, MAX_IMAGES_PER_AXIS, CrystalBatch

log = logging.getLogger(__name__)

EnergyFn = Callable[[CrystalBatch], torch.Tensor]

#: E|det G| for a 3×3 matrix of independent standard normals (= E χ₃ · E χ₂ · E χ₁).
_MEAN_ABS_DET = 1.5957691216057308 * 1.2533141373155001 * 0.7978845608028654


@dataclass(frozen=True)
class Schedule:
    """Annealing of inverse temperature and step size over ``steps`` MALA steps.

    Both change exponentially (geometrically) from start to end; steps >= 1.
    """

    steps: int
    beta_start: float
    beta_end: float
    step_start: float
    step_end: float
    #: None = the seed's fixed step schedule. A number in (0, 1): each chain scales the
    #: scheduled step by its own factor s, log s += adapt_rate · (α - target) after every
    #: step (α the step's acceptance probability), so chains whose energy is steeper than
    #: the schedule assumes shrink their steps instead of stalling.
    target_acceptance: float | None
    adapt_rate: ClassVar[float] = 0.3

    @classmethod
    def from_section(cls, section: dict[str, Any], steps_key: str) -> Schedule:
        """The schedule of a ``csp`` config section with ``section[steps_key]`` steps."""
        return cls(
            steps=int(section[steps_key]),
            beta_start=float(section["beta_start"]),
            beta_end=float(section["beta_end"]),
            step_start=float(section["step_start"]),
            step_end=float(section["step_end"]),
            target_acceptance=section["target_acceptance"],
        )

    def at(self, t: int) -> tuple[float, float]:
        frac = t / max(self.steps - 1, 1)
        beta = self.beta_start * (self.beta_end / self.beta_start) ** frac
        step = self.step_start * (self.step_end / self.step_start) ** frac
        return beta, step


@dataclass
class SampleResult:
    """Final states, their energies (B,), the acceptance rate of each chain (B,), and the
    count of near-degenerate cell evaluations."""

    batch: CrystalBatch
    energy: torch.Tensor
    acceptance: torch.Tensor
    #: cell evaluations whose neighbour search was bounded (flat cells; see periodic_edges)
    flat_cells: int = 0


def random_crystals(
    numbers: list[np.ndarray],
    *,
    density: float = 0.05,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> CrystalBatch:
    """Starting states: uniform fractional coordinates, Gaussian lattices (the seed's init).

    Lattice L = s G with G standard normal entries and s chosen so that the expected
    number density n / (s³ E|det G|) is ``density`` (Å⁻³). Rows with det < 0 are flipped
    in sign (the same lattice, right-handed), then Niggli-reduced.
    """
    sizes = torch.tensor([len(z) for z in numbers])
    n_nodes = int(sizes.sum())
    frac = torch.rand(n_nodes, 3, generator=generator, dtype=dtype)
    g = torch.randn(len(numbers), 3, 3, generator=generator, dtype=dtype)
    scale = (sizes.to(dtype) / (density * _MEAN_ABS_DET)) ** (1.0 / 3.0)
    lattice = g * scale[:, None, None]
    sign = torch.sign(torch.linalg.det(lattice))
    lattice = lattice * torch.where(sign == 0, 1.0, sign)[:, None, None]
    batch = CrystalBatch(
        frac=frac,
        lattice=lattice,
        numbers=torch.as_tensor(np.concatenate(numbers), dtype=torch.long),
        node_graph=torch.repeat_interleave(torch.arange(len(numbers)), sizes),
    )
    batch, _ = niggli_reduce(batch)
    return batch


def _needs_reduction(lattice: torch.Tensor) -> torch.Tensor:
    """(B,) bool: some pair of lattice vectors violates |a_i·a_j| <= |a_j|²/2 (i != j)."""
    gram = lattice @ lattice.transpose(1, 2)
    diag = torch.diagonal(gram, dim1=1, dim2=2)
    off = gram.abs() > 0.5 * diag[:, None, :] * (1 + 1e-9)
    off = off & ~torch.eye(3, dtype=torch.bool, device=lattice.device)
    return off.flatten(1).any(dim=1)


def reduction_matrices(lattice: torch.Tensor, max_rounds: int = 100) -> torch.Tensor:
    """Unimodular integer M (B, 3, 3) with M L reduced, for all lattices at once.

    Pairwise (Lagrange-Gauss) reduction, vectorised over chains: repeat
    a_i <- a_i - round(a_i·a_j / |a_j|²) a_j over the six ordered pairs until no vector
    changes. The result satisfies |a_i·a_j| <= |a_j|²/2 for every pair (Buerger's
    conditions up to the three-vector case), which is what keeps the cells compact and
    the neighbour search cheap. pymatgen's Niggli reduction is a Python loop per cell
    (and takes minutes on a few near-singular random starts), so it is not used here.
    """
    b = lattice.shape[0]
    m = torch.eye(3, dtype=lattice.dtype, device=lattice.device).repeat(b, 1, 1)
    cell = lattice.clone()
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    for _ in range(max_rounds):
        moved = False
        for i, j in pairs:
            dot = (cell[:, i] * cell[:, j]).sum(-1)
            norm = (cell[:, j] * cell[:, j]).sum(-1).clamp(min=1e-12)
            r = torch.round(dot / norm)
            if bool((r != 0).any()):
                moved = True
                cell[:, i] -= r[:, None] * cell[:, j]
                m[:, i] -= r[:, None] * m[:, j]
        if not moved:
            break
    return m


def niggli_reduce(
    batch: CrystalBatch, *, only: torch.Tensor | None = None
) -> tuple[CrystalBatch, dict[int, torch.Tensor]]:
    """Reduce the lattices of chains ``only`` (default: those failing the reduced test).

    Uses :func:`reduction_matrices` (see there for why not pymatgen's Niggli). Returns the
    new batch and {chain: M} for the chains changed (L' = M L, frac' = frac M⁻¹, wrapped).
    """
    lattice = batch.lattice.detach()
    if only is None:
        only = _needs_reduction(lattice)
    todo = torch.nonzero(only).flatten()
    if len(todo) == 0:
        return batch, {}
    m = reduction_matrices(lattice[todo])
    m_all = torch.eye(3, dtype=lattice.dtype, device=lattice.device).repeat(batch.n_graphs, 1, 1)
    m_all[todo] = m
    new_lat = m_all @ lattice
    inv = torch.linalg.inv(m_all)
    f = torch.einsum("nk,nkl->nl", batch.frac.detach(), inv[batch.node_graph])
    f = f - torch.floor(f)
    out = CrystalBatch(f, new_lat, batch.numbers, batch.node_graph)
    return out, {int(k): m_all[k] for k in todo}


#: Sites per energy evaluation: larger batches are evaluated in parts of this size, whose
#: (edges x features) tensors stay in cache (1,024 five-site chains at once ran 780
#: chain-steps/s, in parts of 320 sites 990; benchmarks/bench_mala.py). Each crystal's
#: energy is its own (no batch statistics): the parts change results by float rounding only.
MAX_NODES_PER_EVALUATION = 320


def energy_and_grad(
    energy_fn: EnergyFn, batch: CrystalBatch, *, max_nodes: int = MAX_NODES_PER_EVALUATION
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energies (B,) and their gradients w.r.t. frac (n, 3) and lattice (B, 3, 3).

    Crystals are evaluated in consecutive parts of at most ``max_nodes`` sites.
    """
    energies, g_fracs, g_lats = [], [], []
    for part in batch.split(max_nodes):
        frac = part.frac.detach().requires_grad_(True)
        lattice = part.lattice.detach().requires_grad_(True)
        with torch.enable_grad():
            energy = energy_fn(CrystalBatch(frac, lattice, part.numbers, part.node_graph))
            g_frac, g_lat = torch.autograd.grad(energy.sum(), [frac, lattice])
        energies.append(energy.detach())
        g_fracs.append(g_frac.detach())
        g_lats.append(g_lat.detach())
    return torch.cat(energies), torch.cat(g_fracs), torch.cat(g_lats)


def mala(
    energy_fn: EnergyFn,
    start: CrystalBatch,
    schedule: Schedule,
    *,
    niggli: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> SampleResult:
    """Run MALA chains from ``start`` (one chain per crystal of the batch); see the module doc.

    energy_fn must be invariant under re-description if ``niggli`` is on. The energy is
    evaluated once (with gradient) per step for all chains, in parts of
    :data:`MAX_NODES_PER_EVALUATION` sites; an ``nn.Module``'s weights are frozen meanwhile.
    """
    # The chains need gradients in the positions only: frozen parameters spare every
    # backward the weight gradients (which hand-written backwards cannot skip otherwise).
    frozen = [p for p in getattr(energy_fn, "parameters", list)() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    flat_before = FLAT_CELLS.total
    try:
        result = _mala(
            energy_fn, start, schedule, niggli=niggli, generator=generator, progress=progress
        )
    finally:
        for p in frozen:
            p.requires_grad_(True)
    result.flat_cells = FLAT_CELLS.total - flat_before
    return result


def log_flat_cells(count: int, what: str) -> None:
    """One warning for ``count`` near-degenerate cell evaluations (none: nothing)."""
    if count:
        log.warning(
            "%s: %d evaluations of near-degenerate cells had their neighbour search "
            "limited to ±%d cells per axis",
            what,
            count,
            MAX_IMAGES_PER_AXIS,
        )


def _mala(
    energy_fn: EnergyFn,
    start: CrystalBatch,
    schedule: Schedule,
    *,
    niggli: bool,
    generator: torch.Generator | None,
    progress: bool,
) -> SampleResult:
    batch = start.detach()
    dtype = batch.frac.dtype
    graph = batch.node_graph
    n_chains = batch.n_graphs
    energy, g_f, g_l = energy_and_grad(energy_fn, batch)
    accepted = torch.zeros(n_chains, dtype=dtype)
    log_scale = torch.zeros(n_chains, dtype=dtype)  # per-chain step factor (adaptive steps)
    bar = tqdm(range(schedule.steps), desc="MALA", disable=not progress, leave=False)
    for t in bar:
        beta, h_t = schedule.at(t)
        h = h_t * log_scale.exp()  # (B,): the same step for frac and lattice of a chain
        h_n, h_l = h[graph][:, None], h[:, None, None]
        std_n, std_l = (2 * h_n).sqrt(), (2 * h_l).sqrt()
        xi_f = torch.randn(batch.frac.shape, generator=generator, dtype=dtype)
        xi_l = torch.randn(batch.lattice.shape, generator=generator, dtype=dtype)
        prop_f = batch.frac - h_n * beta * g_f + std_n * xi_f
        prop_l = batch.lattice - h_l * beta * g_l + std_l * xi_l
        proposal = CrystalBatch(prop_f, prop_l, batch.numbers, graph)
        e_new, gf_new, gl_new = energy_and_grad(energy_fn, proposal)
        # log q(x'|x) = -|ξ|²/2 (up to a constant); reverse move: x = x' - hβ∇E(x') + √(2h) ξ_r
        rev_f = (batch.frac - prop_f + h_n * beta * gf_new) / std_n
        rev_l = (batch.lattice - prop_l + h_l * beta * gl_new) / std_l
        sq_fwd = torch.zeros(n_chains, dtype=dtype).index_add_(0, graph, (xi_f**2).sum(1))
        sq_fwd += (xi_l**2).sum((1, 2))
        sq_rev = torch.zeros(n_chains, dtype=dtype).index_add_(0, graph, (rev_f**2).sum(1))
        sq_rev += (rev_l**2).sum((1, 2))
        log_alpha = -beta * (e_new - energy) - 0.5 * sq_rev + 0.5 * sq_fwd
        log_alpha = torch.nan_to_num(log_alpha, nan=-torch.inf)
        uniform = torch.rand(n_chains, generator=generator, dtype=dtype)
        accept = torch.log(uniform) < log_alpha
        accepted += accept.to(dtype)
        if schedule.target_acceptance is not None:
            alpha = log_alpha.clamp(max=0.0).exp()
            log_scale += schedule.adapt_rate * (alpha - schedule.target_acceptance)
        node_accept = accept[graph][:, None]
        frac = torch.where(node_accept, prop_f, batch.frac)
        frac = frac - torch.floor(frac)
        lattice = torch.where(accept[:, None, None], prop_l, batch.lattice)
        energy = torch.where(accept, e_new, energy)
        g_f = torch.where(node_accept, gf_new, g_f)
        g_l = torch.where(accept[:, None, None], gl_new, g_l)
        batch = CrystalBatch(frac, lattice, batch.numbers, graph)
        if niggli:
            batch, changed = niggli_reduce(batch)
            if changed:  # gradients of the re-described cells: ∇f' = ∇f Mᵀ, ∇L' = M⁻ᵀ ∇L
                m_all = torch.eye(3, dtype=dtype, device=g_l.device).repeat(n_chains, 1, 1)
                m_all[list(changed)] = torch.stack(list(changed.values()))
                g_f = torch.einsum("nk,nlk->nl", g_f, m_all[graph])
                g_l = torch.linalg.inv(m_all).transpose(1, 2) @ g_l
        if progress and t % 50 == 0:
            bar.set_postfix(acc=f"{float(accepted.mean()) / (t + 1):.2f}")
    return SampleResult(batch=batch, energy=energy, acceptance=accepted / schedule.steps)
