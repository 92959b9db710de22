"""EBM training of the ContinuouSP energy (the seed's loss) and the CSP evaluation.

Loss per batch of data crystals x_d (seed eq. 15-16): for each one, a multiplicity
m ~ Geometric(p) (m >= 1, capped so the cell has at most ``max_sites`` sites) and one MCMC
sample x_s of the composition (reduced formula × m), drawn with MALA from the current
energy without gradient to the parameters; then

    L = mean E(x_d) - mean E(x_s) + α · mean(N(x_d)² + N(x_s)²) + γ · mean(|∇N(x_d)|² + |∇N(x_s)|²)

and Adam on the parameters, N being the learned part of E (E minus the fixed density
penalty). Gradients flow through the energy only (the samples are detached). α
(``energy_l2``, 0 in the seed) keeps the learned energies bounded: without it they drift
apart over a long run until MALA stops accepting moves. γ (``grad_penalty``, 0 in the
seed) bounds their slope, which is what MALA's fixed h·β needs (:attr:`EBMSettings.grad_penalty`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matdisc.csp.energy import FLAT_CELLS, ContinuousEnergy, CrystalBatch
from matdisc.csp.sampler import Schedule, log_flat_cells, mala, random_crystals
from matdisc.graphs import CrystalArrays
from matdisc.io.atomic import atomic_path
from matdisc.progress import progress

log = logging.getLogger(__name__)


def reduced_numbers(numbers: np.ndarray) -> np.ndarray:
    """The species vector of one formula unit (counts divided by their gcd), sorted by Z."""
    z, counts = np.unique(numbers, return_counts=True)
    g = reduce(math.gcd, counts.tolist())
    return np.repeat(z, counts // g)


def sample_multiplicities(
    n_formula: np.ndarray, *, p: float, max_sites: int, rng: np.random.Generator
) -> np.ndarray:
    """m ~ Geometric(p) on {1, 2, ...}, redrawn above ``max_sites`` / n_formula (at least 1)."""
    cap = np.maximum(max_sites // n_formula, 1)
    m = rng.geometric(p, size=len(n_formula))
    while (bad := m > cap).any():
        m[bad] = rng.geometric(p, size=int(bad.sum()))
    return m


@dataclass(frozen=True)
class EBMSettings:
    """Training settings (the ``csp`` config section, see config/schema.yaml)."""

    epochs: int
    batch_size: int
    lr: float
    geometric_p: float
    max_sites: int
    energy_l2: float
    schedule: Schedule
    max_minutes: float | None
    #: Fraction of a batch's negatives continued from the chain its data crystal had in
    #: the previous epoch (persistent contrastive divergence; 0 = the seed's fresh chains).
    #: Continued chains run ``schedule.steps`` more steps at the final β and step size, so
    #: over the epochs they reach the low-energy states a short annealing from random
    #: cells never sees, and the loss pushes those up where they are not data.
    persistent: float
    #: γ of γ · mean(|∇N(x_d)|² + |∇N(x_s)|²), the squared gradient of the learned energy
    #: with respect to fractional coordinates and lattice, per crystal (0 = the seed's
    #: loss). MALA's drift is h·β·∇E with h·β fixed at 0.5 by the seed's schedule, so an
    #: energy steeper than O(1) makes every step overshoot; this keeps it samplable.
    grad_penalty: float

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> EBMSettings:
        """The training settings of a validated ``csp`` config section."""
        return cls(
            epochs=int(section["epochs"]),
            batch_size=int(section["batch_size"]),
            lr=float(section["lr"]),
            geometric_p=float(section["geometric_p"]),
            max_sites=int(section["max_sites"]),
            energy_l2=float(section["energy_l2"]),
            schedule=Schedule.from_section(section, "train_steps"),
            max_minutes=section["max_minutes"],
            persistent=float(section["persistent"]),
            grad_penalty=float(section["grad_penalty"]),
        )

    def continued(self) -> Schedule:
        """The schedule of continued chains: ``schedule``'s last β and step, held."""
        s = self.schedule
        return replace(s, beta_start=s.beta_end, step_start=s.step_end)


#: One chain's state between epochs: (atomic numbers (n,), frac (n, 3), lattice (3, 3)).
ChainState = tuple[np.ndarray, np.ndarray, np.ndarray]


def chain_states(batch: CrystalBatch) -> list[ChainState]:
    """Per-crystal (numbers, frac, lattice) numpy copies of a batch."""
    graph = batch.node_graph.numpy()
    z, f, lat = batch.numbers.numpy(), batch.frac.detach().numpy(), batch.lattice.detach().numpy()
    return [(z[graph == b], f[graph == b].copy(), lat[b].copy()) for b in range(batch.n_graphs)]


def batch_of_states(states: list[ChainState]) -> CrystalBatch:
    return CrystalBatch.from_arrays(
        [s[2] for s in states], [s[1] for s in states], [s[0] for s in states]
    )


def train_ebm(
    model: ContinuousEnergy,
    crystals: CrystalArrays,
    settings: EBMSettings,
    *,
    seed: int = 0,
    resume_path: Path | None = None,
) -> list[dict]:
    """Fit ``model`` on ``crystals`` in place; returns one metrics row per epoch.

    With ``resume_path``, everything a killed run needs (weights, optimizer, random
    streams, persistent chains, history) is written there after every epoch, and a run
    that finds the file continues from it: the result equals an uninterrupted run's.
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.999))
    formula_units = [reduced_numbers(z) for z in crystals.numbers]
    chains: list[ChainState | None] = [None] * len(crystals)  # persistent negatives
    history: list[dict] = []
    if resume_path is not None and Path(resume_path).is_file():
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        gen.set_state(state["generator"])
        chains, history = state["chains"], state["history"]
        log.info("EBM: resuming from %s after epoch %d", resume_path, len(history))
        if state["stopped"]:
            model.eval()
            return history
    elapsed_before = history[-1]["seconds"] if history else 0.0
    t_start = time.perf_counter()
    for epoch in range(len(history), settings.epochs):
        order = rng.permutation(len(crystals))
        sums = {"loss": 0.0, "energy_data": 0.0, "energy_sample": 0.0, "acceptance": 0.0}
        sums["squared_gradient"] = 0.0 if settings.grad_penalty > 0 else math.nan
        n_batches = 0
        flat_before = FLAT_CELLS.total
        batches = range(0, len(order), settings.batch_size)
        for start in progress(batches, desc=f"EBM epoch {epoch + 1}", unit="batch"):
            idx = order[start : start + settings.batch_size]
            data = crystals.take(idx)
            keep = np.zeros(len(idx), dtype=bool)
            if settings.persistent > 0:  # (no draw otherwise: the seed's random stream)
                keep = np.array([chains[i] is not None for i in idx])
                keep &= rng.random(len(idx)) < settings.persistent
            negatives, acceptance = _negatives(
                model, idx[~keep], idx[keep], chains, formula_units, settings, rng, gen
            )
            model.train()
            data_batch = CrystalBatch.from_arrays(data.lattices, data.frac_coords, data.numbers)
            if settings.grad_penalty > 0:
                data_batch, negatives = _with_grad(data_batch), _with_grad(negatives)
            twice = settings.grad_penalty > 0
            n_data, p_data = model.energy_parts(data_batch, differentiable_twice=twice)
            n_sample, p_sample = model.energy_parts(negatives, differentiable_twice=twice)
            e_data, e_sample = n_data + p_data, n_sample + p_sample
            loss = e_data.mean() - e_sample.mean()
            if settings.energy_l2 > 0:
                loss = loss + settings.energy_l2 * (n_data.pow(2).mean() + n_sample.pow(2).mean())
            if settings.grad_penalty > 0:
                slope = squared_gradient(n_data, data_batch) + squared_gradient(n_sample, negatives)
                loss = loss + settings.grad_penalty * slope
                sums["squared_gradient"] += float(slope.detach()) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            n_batches += 1
            sums["loss"] += float(loss.detach())
            sums["energy_data"] += float(e_data.detach().mean())
            sums["energy_sample"] += float(e_sample.detach().mean())
            sums["acceptance"] += acceptance
        row = {"epoch": epoch + 1, **{k: v / max(n_batches, 1) for k, v in sums.items()}}
        row["seconds"] = elapsed_before + time.perf_counter() - t_start
        history.append(row)
        log.info(
            "EBM epoch %d: loss %.4f, E(data) %.4f, E(sample) %.4f, acceptance %.2f",
            row["epoch"],
            row["loss"],
            row["energy_data"],
            row["energy_sample"],
            row["acceptance"],
        )
        log_flat_cells(FLAT_CELLS.total - flat_before, f"EBM epoch {epoch + 1} negatives")
        stop = settings.max_minutes is not None and row["seconds"] > 60 * settings.max_minutes
        if resume_path is not None:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng.bit_generator.state,
                "generator": gen.get_state(),
                "chains": chains,
                "history": history,
                "stopped": stop,
            }
            with atomic_path(resume_path, suffix=".pt") as tmp:
                torch.save(state, tmp)
        if stop:
            log.info("EBM training stopped after %.1f min (max_minutes)", row["seconds"] / 60)
            break
    model.eval()
    return history


def _with_grad(batch: CrystalBatch) -> CrystalBatch:
    """The batch with fresh leaf frac and lattice tensors that require gradients."""
    return CrystalBatch(
        batch.frac.detach().requires_grad_(True),
        batch.lattice.detach().requires_grad_(True),
        batch.numbers,
        batch.node_graph,
    )


def squared_gradient(energy: torch.Tensor, batch: CrystalBatch) -> torch.Tensor:
    """Mean over crystals of |∂E/∂frac|² + |∂E/∂lattice|² (differentiable: a loss term).

    energy: (B,) computed from ``batch``, whose frac and lattice require gradients.
    """
    g_frac, g_lat = torch.autograd.grad(
        energy.sum(), [batch.frac, batch.lattice], create_graph=True
    )
    per_crystal = torch.zeros(batch.n_graphs, dtype=g_frac.dtype, device=g_frac.device)
    per_crystal = per_crystal.index_add(0, batch.node_graph, (g_frac**2).sum(1))
    return (per_crystal + (g_lat**2).sum((1, 2))).mean()


def _negatives(
    model: ContinuousEnergy,
    fresh: np.ndarray,
    kept: np.ndarray,
    chains: list[ChainState | None],
    formula_units: list[np.ndarray],
    settings: EBMSettings,
    rng: np.random.Generator,
    gen: torch.Generator,
) -> tuple[CrystalBatch, float]:
    """MALA negatives for data crystals ``fresh`` (new chains from random cells, annealed)
    and ``kept`` (their chains continued); with ``settings.persistent`` > 0 it stores
    every final state in ``chains``.

    Returns the negatives (fresh first) and the mean acceptance over all chains.
    """
    model.eval()
    states: list[ChainState] = []
    accepted: list[torch.Tensor] = []
    if len(fresh):
        units = [formula_units[i] for i in fresh]
        m = sample_multiplicities(
            np.array([len(u) for u in units]),
            p=settings.geometric_p,
            max_sites=settings.max_sites,
            rng=rng,
        )
        species = [np.tile(u, k) for u, k in zip(units, m, strict=True)]
        result = mala(
            model, random_crystals(species, generator=gen), settings.schedule, generator=gen
        )
        states += chain_states(result.batch)
        accepted.append(result.acceptance)
    if len(kept):
        start = batch_of_states([chains[i] for i in kept])  # type: ignore[misc]
        result = mala(model, start, settings.continued(), generator=gen)
        states += chain_states(result.batch)
        accepted.append(result.acceptance)
    if settings.persistent > 0:  # only continued chains need their states kept
        for i, state in zip(np.concatenate([fresh, kept]), states, strict=True):
            chains[i] = state
    return batch_of_states(states), float(torch.cat(accepted).mean())


def sample_structures(
    model: ContinuousEnergy,
    species: list[np.ndarray],
    n_samples: int,
    schedule: Schedule,
    *,
    seed: int = 0,
    chunk: int = 512,
) -> tuple[CrystalBatch, torch.Tensor]:
    """``n_samples`` MALA samples per species vector, all chains batched (``chunk`` at once).

    Returns the final states (chains of crystal i are rows i·K .. i·K + K - 1) and their
    energies (len(species)·K,).
    """
    gen = torch.Generator().manual_seed(seed)
    all_species = [z for z in species for _ in range(n_samples)]
    model.eval()
    parts: list[CrystalBatch] = []
    energies: list[torch.Tensor] = []
    flat = 0
    for start in progress(range(0, len(all_species), chunk), desc="CSP sampling"):
        part = all_species[start : start + chunk]
        result = mala(
            model, random_crystals(part, generator=gen), schedule, generator=gen, progress=True
        )
        parts.append(result.batch)
        energies.append(result.energy)
        flat += result.flat_cells
    log_flat_cells(flat, "CSP sampling")
    frac = torch.cat([p.frac for p in parts])
    lattice = torch.cat([p.lattice for p in parts])
    numbers = torch.cat([p.numbers for p in parts])
    sizes = torch.tensor([len(z) for z in all_species])
    graph = torch.repeat_interleave(torch.arange(len(all_species)), sizes)
    return CrystalBatch(frac, lattice, numbers, graph), torch.cat(energies)
