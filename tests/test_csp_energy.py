"""ContinuouSP energy: invariances and continuity across the cutoff radius."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from matdisc.csp.energy import (
    ContinuousEnergy,
    CrystalBatch,
    cutoff_radius,
    periodic_edges,
)


def _batch(structures: list[Structure]) -> CrystalBatch:
    return CrystalBatch.from_arrays(
        [s.lattice.matrix for s in structures],
        [s.frac_coords for s in structures],
        [np.array(s.atomic_numbers) for s in structures],
    )


@pytest.fixture(scope="module")
def model() -> ContinuousEnergy:
    torch.manual_seed(0)
    return ContinuousEnergy(node_features=16, edge_features=16, n_conv=2).double().eval()


@pytest.fixture()
def srtio3() -> Structure:
    s = Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    s.perturb(0.15, min_distance=0.05)  # break the symmetry so nothing is invariant by luck
    return s


def test_energy_invariances(model: ContinuousEnergy, srtio3: Structure) -> None:
    s = srtio3
    rotation = Rotation.random(random_state=3).as_matrix()
    rotated = Structure(Lattice(s.lattice.matrix @ rotation.T), s.species, s.frac_coords)
    translated = s.copy()
    translated.translate_sites(range(len(s)), [0.31, 0.17, 0.73])
    order = [3, 1, 4, 0, 2]
    permuted = Structure(s.lattice, [s.species[i] for i in order], s.frac_coords[order])
    supercell = s.copy()
    supercell.make_supercell([[2, 0, 0], [0, 1, 1], [0, 0, 1]])  # also a skewed basis
    other = s.copy()
    other.replace(0, "Ba")
    energy = model(_batch([s, rotated, translated, permuted, supercell, other])).detach()
    assert torch.allclose(energy[:5], energy[0], rtol=0, atol=1e-9), energy
    assert abs(float(energy[5] - energy[0])) > 1e-4  # it does depend on the crystal


def test_gradients_rotate_with_the_crystal(model: ContinuousEnergy, srtio3: Structure) -> None:
    """∂E/∂frac is invariant under a rotation (fractional coordinates do not rotate)."""
    s = srtio3
    rotation = Rotation.random(random_state=5).as_matrix()
    rotated = Structure(Lattice(s.lattice.matrix @ rotation.T), s.species, s.frac_coords)
    grads = []
    for x in (s, rotated):
        b = _batch([x])
        b.frac.requires_grad_(True)
        (g,) = torch.autograd.grad(model(b).sum(), [b.frac])
        grads.append(g)
    assert torch.allclose(grads[0], grads[1], atol=1e-9)
    assert grads[0].abs().max() > 1e-6


def _moved(s: Structure, site: int, points: np.ndarray) -> list[Structure]:
    out = []
    for frac in points:
        x = s.copy()
        x.replace(site, x[site].species_string, frac)
        out.append(x)
    return out


def _edge_counts(b: CrystalBatch) -> np.ndarray:
    center, _, _ = periodic_edges(b, cutoff_radius(b))
    return np.bincount(b.node_graph[center].numpy(), minlength=b.n_graphs)


def test_energy_is_continuous_across_the_cutoff(model: ContinuousEnergy) -> None:
    """Move one atom along a line on which pairs enter and leave the cutoff sphere."""
    s = Structure(
        Lattice.cubic(4.2), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
    )
    ts = np.linspace(0.0, 0.5, 201)
    path = np.array([0.1, 0.2, 0.3]) + ts[:, None] * np.array([1.0, 0.3, 0.1]) / 4.2
    b = _batch(_moved(s, 2, path))
    counts = _edge_counts(b)
    assert len(set(counts)) >= 3, f"no pair crossed the cutoff: {set(counts)}"
    b.frac.requires_grad_(True)
    energy = model(b)
    (g,) = torch.autograd.grad(energy.sum(), [b.frac])
    # directional derivative dE/dt along the path, from autograd
    slope = (g[2::3] * torch.tensor([1.0, 0.3, 0.1], dtype=g.dtype) / 4.2).sum(1).numpy()
    e = energy.detach().numpy()
    # a jump J where an edge appears would make one grid difference ~J; continuity with a
    # bounded derivative limits every difference by max |dE/dt| times the grid step
    step = ts[1] - ts[0]
    assert np.abs(np.diff(e)).max() <= 1.2 * np.abs(slope).max() * step
    # and the finite differences agree with the derivative (C¹: no kink at crossings)
    fd = np.diff(e) / step
    mid = 0.5 * (slope[1:] + slope[:-1])
    assert np.abs(fd - mid).max() <= 0.05 * np.abs(slope).max() + 1e-9


def test_energy_has_no_jump_where_an_edge_enters(model: ContinuousEnergy) -> None:
    """Bisect to the position where the edge count changes: differences shrink with h."""
    s = Structure(Lattice.cubic(4.2), ["Sr", "O"], [[0, 0, 0], [0.5, 0.5, 0.2]])
    direction = np.array([1.0, 0.0, 0.0]) / 4.2
    origin = np.array([0.5, 0.5, 0.2])

    def at(ts: list[float], energy: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        b = _batch(_moved(s, 1, origin + np.asarray(ts)[:, None] * direction))
        if not energy:
            return None, _edge_counts(b)
        with torch.no_grad():
            return model(b).numpy(), _edge_counts(b)

    lo, hi = 0.0, 2.1
    _, (n_lo, n_hi) = at([lo, hi], energy=False)
    assert n_lo != n_hi
    for _ in range(45):
        mid = 0.5 * (lo + hi)
        if at([mid], energy=False)[1][0] == n_lo:
            lo = mid
        else:
            hi = mid
    hs = [1e-3, 1e-4, 1e-5]
    e, counts = at([lo + h for h in hs] + [lo - h for h in hs])
    assert counts[0] != counts[3]  # the pairs straddle the crossing
    diffs = np.abs(e[:3] - e[3:])
    assert diffs[1] < 0.2 * diffs[0] and diffs[2] < 0.2 * diffs[1], diffs


def test_hand_written_backwards_match_autograd() -> None:
    """The fast edge layers give the same energy as autograd's, gradients in frac, lattice
    and weights equal to float rounding, and refuse a second derivative out loud."""
    torch.manual_seed(2)
    model = ContinuousEnergy(node_features=8, edge_features=8, n_conv=2)
    from matdisc.csp.sampler import random_crystals

    species = [np.array([38, 22, 8, 8, 8]), np.array([11, 17]), np.array([3, 3, 8])]
    batch = random_crystals(species, generator=torch.Generator().manual_seed(4))
    results = []
    for twice in (False, True):
        frac = batch.frac.clone().requires_grad_(True)
        lattice = batch.lattice.clone().requires_grad_(True)
        leaf = CrystalBatch(frac, lattice, batch.numbers, batch.node_graph)
        model.zero_grad()
        network, _ = model.energy_parts(leaf, differentiable_twice=twice)
        network.sum().backward()
        weights = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((network.detach(), frac.grad, lattice.grad, weights))
    (e1, f1, l1, w1), (e2, f2, l2, w2) = results
    assert torch.equal(e1, e2)
    for fast, ref in ((f1, f2), (l1, l2), (w1, w2)):
        assert float(ref.abs().max()) > 1e-4
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    leaf = CrystalBatch(
        batch.frac.clone().requires_grad_(True), batch.lattice, batch.numbers, batch.node_graph
    )
    (g,) = torch.autograd.grad(model.energy_parts(leaf)[0].sum(), [leaf.frac], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.pow(2).sum().backward()


def test_hand_written_backwards_pass_gradcheck() -> None:
    """In float64 the fast path's gradients in frac and lattice are the energy's derivative."""
    torch.manual_seed(3)
    model = ContinuousEnergy(node_features=4, edge_features=4, n_conv=2).double()
    from matdisc.csp.sampler import random_crystals

    batch = random_crystals(
        [np.array([38, 22, 8, 8, 8]), np.array([11, 17])],
        generator=torch.Generator().manual_seed(6),
    )
    frac = batch.frac.clone().requires_grad_(True)
    lattice = batch.lattice.clone().requires_grad_(True)

    def energy(f: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        return model(CrystalBatch(f, lat, batch.numbers, batch.node_graph))

    assert torch.autograd.gradcheck(energy, (frac, lattice))
