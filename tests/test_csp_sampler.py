"""MALA sampler: the right distribution on an analytic energy; Niggli keeps the crystal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from scipy.special import i0, i1

from matdisc.config import default_section
from matdisc.csp.energy import ContinuousEnergy, CrystalBatch
from matdisc.csp.sampler import (
    Schedule,
    _needs_reduction,
    mala,
    niggli_reduce,
    random_crystals,
)

LATTICE0 = torch.tensor([[4.0, 0.3, 0.0], [0.0, 5.0, 0.2], [0.1, 0.0, 6.0]], dtype=torch.float64)
STIFFNESS = 4.0  # lattice entries ~ N(L0, 1 / (β k))
KAPPA = 2.0  # fractional coordinates ~ von Mises(0.3, β κ) on the unit circle
CENTER = 0.3


def analytic_energy(batch: CrystalBatch) -> torch.Tensor:
    """E = k/2 |L - L0|² - κ Σ cos(2π (f - 0.3)), per chain."""
    lat = 0.5 * STIFFNESS * ((batch.lattice - LATTICE0) ** 2).sum((1, 2))
    site = -KAPPA * torch.cos(2 * torch.pi * (batch.frac - CENTER)).sum(1)
    return lat + torch.zeros_like(lat).index_add_(0, batch.node_graph, site)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_mala_samples_the_analytic_distribution(beta: float) -> None:
    gen = torch.Generator().manual_seed(0)
    chains = 400
    numbers = [np.array([8, 8])] * chains
    start = random_crystals(numbers, generator=gen)
    start = CrystalBatch(
        start.frac, LATTICE0.expand(chains, 3, 3).clone(), start.numbers, start.node_graph
    )
    schedule = Schedule(
        steps=600,
        beta_start=beta,
        beta_end=beta,
        step_start=0.004,
        step_end=0.004,
        target_acceptance=None,
    )
    result = mala(analytic_energy, start, schedule, niggli=False, generator=gen)
    assert 0.5 < float(result.acceptance.mean()) < 1.0
    lat = result.batch.lattice
    # mean and variance of the lattice entries: N(L0, 1/(βk)); 400 chains × 9 entries
    assert torch.allclose(lat.mean(0), LATTICE0, atol=4 * (1 / (beta * STIFFNESS) / chains) ** 0.5)
    var = float(((lat - LATTICE0) ** 2).mean())
    assert var == pytest.approx(1 / (beta * STIFFNESS), rel=0.1)
    # fractional coordinates: E[cos 2πΔ] = I1(βκ)/I0(βκ), E[sin 2πΔ] = 0
    angle = 2 * torch.pi * (result.batch.frac - CENTER)
    expected = i1(beta * KAPPA) / i0(beta * KAPPA)
    assert float(torch.cos(angle).mean()) == pytest.approx(expected, abs=0.03)
    assert abs(float(torch.sin(angle).mean())) < 0.03
    assert float(result.batch.frac.min()) >= 0 and float(result.batch.frac.max()) < 1


def test_annealing_concentrates_on_the_minimum() -> None:
    """The seed's schedule (β 1 → 1000, h 0.5 → 0.0005) ends near the minimum, with the
    spread of the final β: var(f) = 1 / (β (2π)² κ'), var(L) = 1 / (β k') with κ' = κ / 100,
    k' = k / 10 (β h k' stays below 1, as a trained energy's curvature must for MALA)."""
    gen = torch.Generator().manual_seed(1)
    chains = 200
    start = random_crystals([np.array([8])] * chains, generator=gen)
    start = CrystalBatch(
        start.frac, LATTICE0.expand(chains, 3, 3) + 1.0, start.numbers, start.node_graph
    )

    def soft(batch: CrystalBatch) -> torch.Tensor:
        lat = 0.5 * STIFFNESS / 10 * ((batch.lattice - LATTICE0) ** 2).sum((1, 2))
        site = -KAPPA / 100 * torch.cos(2 * torch.pi * (batch.frac - CENTER)).sum(1)
        return lat + torch.zeros_like(lat).index_add_(0, batch.node_graph, site)

    result = mala(
        soft,
        start,
        Schedule.from_section(default_section("csp", eval_steps=400), "eval_steps"),
        niggli=False,
        generator=gen,
    )
    delta = (result.batch.frac - CENTER + 0.5) % 1.0 - 0.5
    var_f = 1 / (1000 * (2 * np.pi) ** 2 * KAPPA / 100)
    var_l = 1 / (1000 * STIFFNESS / 10)
    assert float((delta**2).mean()) == pytest.approx(var_f, rel=0.3)
    assert float(((result.batch.lattice - LATTICE0) ** 2).mean()) == pytest.approx(var_l, rel=0.3)


def test_adaptive_steps_reach_the_target_acceptance() -> None:
    """A schedule whose steps are 100x too large for the energy stalls the fixed MALA; with
    target_acceptance every chain shrinks its step and accepts about that fraction."""
    gen = torch.Generator().manual_seed(2)
    chains = 100
    start = random_crystals([np.array([8, 8])] * chains, generator=gen)
    start = CrystalBatch(
        start.frac, LATTICE0.expand(chains, 3, 3).clone(), start.numbers, start.node_graph
    )
    steep = Schedule(
        steps=300,
        beta_start=1.0,
        beta_end=1.0,
        step_start=0.4,
        step_end=0.4,
        target_acceptance=None,
    )
    fixed = mala(analytic_energy, start, steep, niggli=False, generator=gen)
    adaptive = Schedule(**{**steep.__dict__, "target_acceptance": 0.6})
    adapted = mala(analytic_energy, start, adaptive, niggli=False, generator=gen)
    assert float(fixed.acceptance.mean()) < 0.1
    assert float(adapted.acceptance.mean()) == pytest.approx(0.6, abs=0.1)
    # and it samples the target: lattice entries ~ N(L0, 1/k) (adaptation settles early)
    var = float(((adapted.batch.lattice - LATTICE0) ** 2).mean())
    assert var == pytest.approx(1 / STIFFNESS, rel=0.25)


def test_niggli_reduction_keeps_the_crystal() -> None:
    s = Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    s.perturb(0.2)
    skew = np.array([[1, 3, 0], [0, 1, -2], [0, 0, 1]])
    ugly = Structure(
        Lattice(skew @ s.lattice.matrix), s.species, s.frac_coords @ np.linalg.inv(skew)
    )
    batch = CrystalBatch.from_arrays(
        [s.lattice.matrix, ugly.lattice.matrix],
        [s.frac_coords, ugly.frac_coords],
        [np.array(s.atomic_numbers)] * 2,
    )
    reduced, changed = niggli_reduce(batch)
    assert 1 in changed
    after = reduced.structures()
    matcher = StructureMatcher(
        stol=0.01, ltol=0.001, angle_tol=0.1, primitive_cell=False, scale=False
    )
    assert matcher.fit(after[1], s) and matcher.fit(after[1], ugly)
    assert after[1].volume == pytest.approx(s.volume)
    assert sorted(after[1].lattice.abc) == pytest.approx(sorted(s.lattice.abc), abs=0.3)
    assert not bool(_needs_reduction(reduced.lattice).any())
    # and the ContinuouSP energy does not see the re-description
    model = ContinuousEnergy(node_features=8, edge_features=8, n_conv=1).double()
    with torch.no_grad():
        e = model(
            CrystalBatch.from_arrays(
                [x.lattice.matrix for x in (s, ugly, after[1])],
                [x.frac_coords for x in (s, ugly, after[1])],
                [np.array(s.atomic_numbers)] * 3,
            )
        )
    assert torch.allclose(e, e[0], atol=1e-9)


def test_random_crystals_have_the_seed_density_on_average() -> None:
    gen = torch.Generator().manual_seed(2)
    batch = random_crystals([np.array([8] * 5)] * 2000, generator=gen)
    volume = torch.linalg.det(batch.lattice).abs()
    # E[1/ρ] is infinite-tailed; compare n / E[V] with 0.05 Å⁻³
    assert float(5 / volume.mean()) == pytest.approx(0.05, rel=0.1)
    assert float(batch.frac.min()) >= 0 and float(batch.frac.max()) < 1


def test_energies_do_not_depend_on_the_evaluation_parts() -> None:
    """energy_and_grad in parts of a few sites gives what one evaluation gives (to float32
    rounding: matrix products of other sizes may sum in another order)."""
    from matdisc.csp.energy import ContinuousEnergy
    from matdisc.csp.sampler import energy_and_grad

    torch.manual_seed(0)
    model = ContinuousEnergy(node_features=8, edge_features=8, n_conv=2)
    species = [np.array([38, 22, 8, 8, 8]), np.array([11, 17]), np.array([3, 3, 8])] * 3
    batch = random_crystals(species, generator=torch.Generator().manual_seed(2))
    whole = energy_and_grad(model, batch, max_nodes=10_000)
    parts = energy_and_grad(model, batch, max_nodes=6)
    assert len(batch.split(6)) == 6  # each 5-site crystal alone, each 2 + 3 together
    for a, b in zip(whole, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_flat_cells_are_counted_not_logged_per_step(caplog: pytest.LogCaptureFixture) -> None:
    """A needle-like cell bounds its neighbour search; MALA counts such evaluations."""
    from matdisc.csp.energy import ContinuousEnergy

    torch.manual_seed(0)
    model = ContinuousEnergy(node_features=4, edge_features=4, n_conv=1)
    needle = CrystalBatch.from_arrays(
        [np.diag([0.3, 9.0, 9.0])],
        [np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])],
        [np.array([8, 8])],
    )
    schedule = Schedule(
        steps=3,
        beta_start=1.0,
        beta_end=1.0,
        step_start=1e-6,
        step_end=1e-6,
        target_acceptance=None,
    )
    with caplog.at_level("WARNING"):
        result = mala(
            model, needle, schedule, niggli=False, generator=torch.Generator().manual_seed(0)
        )
    assert result.flat_cells == 4  # the start and three proposals
    assert not caplog.records
