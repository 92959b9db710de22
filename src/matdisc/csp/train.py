"""EBM training of the ContinuouSP energy (the seed's loss) and the CSP evaluation.

Loss per batch of data crystals x_d (seed eq. 15-16): for each one, a multiplicity
m ~ Geometric(p) (m >= 1, capped so the cell has at most ``max_sites`` sites) and one MCMC
sample x_s of the composition (reduced formula × m), drawn with MALA from the current
energy without gradient to the parameters; then

    L = mean E(x_d) - mean E(x_s) + α · mean(N(x_d)² + N(x_s)²)

and Adam on the parameters, N being the learned part of E (E minus the fixed density
penalty). Gradients flow through the energy only (the samples are detached). α
(``energy_l2``, 0 in the seed) keeps the learned energies bounded: without it they drift
apart over a long run until MALA stops accepting moves.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from functools import reduce

import numpy as np
import torch
from tqdm import tqdm

from matdisc.csp.energy import ContinuousEnergy, CrystalBatch
from matdisc.csp.sampler import Schedule, mala, random_crystals
from matdisc.graphs import CrystalArrays

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

    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-3
    geometric_p: float = 0.5
    max_sites: int = 20
    energy_l2: float = 0.0
    schedule: Schedule = field(default_factory=Schedule)
    max_minutes: float | None = None


def train_ebm(
    model: ContinuousEnergy,
    crystals: CrystalArrays,
    settings: EBMSettings,
    *,
    seed: int = 0,
) -> list[dict]:
    """Fit ``model`` on ``crystals`` in place; returns one metrics row per epoch."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.999))
    formula_units = [reduced_numbers(z) for z in crystals.numbers]
    history: list[dict] = []
    t_start = time.perf_counter()
    for epoch in range(settings.epochs):
        order = rng.permutation(len(crystals))
        sums = {"loss": 0.0, "energy_data": 0.0, "energy_sample": 0.0, "acceptance": 0.0}
        n_batches = 0
        batches = range(0, len(order), settings.batch_size)
        for start in tqdm(batches, desc=f"EBM epoch {epoch + 1}", leave=False):
            idx = order[start : start + settings.batch_size]
            data = crystals.take(idx)
            units = [formula_units[i] for i in idx]
            m = sample_multiplicities(
                np.array([len(u) for u in units]),
                p=settings.geometric_p,
                max_sites=settings.max_sites,
                rng=rng,
            )
            species = [np.tile(u, k) for u, k in zip(units, m, strict=True)]
            model.eval()
            result = mala(
                model, random_crystals(species, generator=gen), settings.schedule, generator=gen
            )
            model.train()
            n_data, p_data = model.energy_parts(
                CrystalBatch.from_arrays(data.lattices, data.frac_coords, data.numbers)
            )
            n_sample, p_sample = model.energy_parts(result.batch.detach())
            e_data, e_sample = n_data + p_data, n_sample + p_sample
            loss = e_data.mean() - e_sample.mean()
            if settings.energy_l2 > 0:
                loss = loss + settings.energy_l2 * (n_data.pow(2).mean() + n_sample.pow(2).mean())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            n_batches += 1
            sums["loss"] += float(loss.detach())
            sums["energy_data"] += float(e_data.detach().mean())
            sums["energy_sample"] += float(e_sample.detach().mean())
            sums["acceptance"] += float(result.acceptance.mean())
        row = {"epoch": epoch + 1, **{k: v / max(n_batches, 1) for k, v in sums.items()}}
        row["seconds"] = time.perf_counter() - t_start
        history.append(row)
        log.info(
            "EBM epoch %d: loss %.4f, E(data) %.4f, E(sample) %.4f, acceptance %.2f",
            row["epoch"],
            row["loss"],
            row["energy_data"],
            row["energy_sample"],
            row["acceptance"],
        )
        if settings.max_minutes is not None and row["seconds"] > 60 * settings.max_minutes:
            log.info("EBM training stopped after %.1f min (max_minutes)", row["seconds"] / 60)
            break
    model.eval()
    return history


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
    for start in tqdm(range(0, len(all_species), chunk), desc="CSP sampling", leave=False):
        part = all_species[start : start + chunk]
        result = mala(
            model, random_crystals(part, generator=gen), schedule, generator=gen, progress=True
        )
        parts.append(result.batch)
        energies.append(result.energy)
    frac = torch.cat([p.frac for p in parts])
    lattice = torch.cat([p.lattice for p in parts])
    numbers = torch.cat([p.numbers for p in parts])
    sizes = torch.tensor([len(z) for z in all_species])
    graph = torch.repeat_interleave(torch.arange(len(all_species)), sizes)
    return CrystalBatch(frac, lattice, numbers, graph), torch.cat(energies)
