"""Voxel grids -> crystals (matdisc.segment): lattice fit, inverse, reasons, metrics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from matdisc.config import validate_config
from matdisc.segment import (
    INCONSISTENT,
    NO_ATOMS,
    TOO_MANY_SITES,
    InverseSettings,
    invert,
    invert_many,
    lattice_from_coords,
)
from matdisc.segment.metrics import delta_n_sites, lattice_mae, site_emd
from matdisc.voxel import coordinate_grid, voxelize
from matdisc.voxel.core import PADDING
from matdisc.voxel.grid import voxel_fractions


def rock_salt() -> Structure:
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    frac = np.concatenate([fcc, (fcc + 0.5) % 1.0])
    return Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4, frac)


# --- lattice from the coordinate grid ------------------------------------------------------


def test_lattice_from_exact_coords_numpy_and_torch():
    lat = np.array([[4.2, 5.1, 6.3], [3.0, 3.0, 3.0]])
    grid = coordinate_grid(lat, 16, 0.25)
    assert np.allclose(lattice_from_coords(grid, 0.25), lat, atol=1e-5)
    assert np.allclose(lattice_from_coords(grid[1], 0.25), lat[1], atol=1e-5)
    tgrid = torch.tensor(grid, dtype=torch.float64)
    out = lattice_from_coords(tgrid, 0.25)
    assert isinstance(out, torch.Tensor)
    assert np.allclose(out.numpy(), lat, atol=1e-5)


def test_least_squares_beats_max_minus_min_on_noisy_coords():
    rng = np.random.default_rng(0)
    lat = np.array([5.0, 5.0, 5.0])
    u = voxel_fractions(32, 0.25)
    errors_ls, errors_range = [], []
    for _ in range(20):
        noisy = coordinate_grid(lat[None], 32, 0.25)[0] + rng.normal(0, 0.2, (3, 32, 32, 32))
        errors_ls.append(np.abs(lattice_from_coords(noisy, 0.25) - lat).mean())
        spread = noisy.reshape(3, -1).max(1) - noisy.reshape(3, -1).min(1)
        errors_range.append(np.abs(spread / (u[-1] - u[0]) - lat).mean())
    assert np.mean(errors_ls) < 0.01
    assert np.mean(errors_ls) < 0.1 * np.mean(errors_range)


# --- inverse ---------------------------------------------------------------------------------


def test_empty_grid_has_no_atoms(inverse_settings):
    result = invert(
        np.zeros((16, 16, 16), dtype=np.uint8),
        lattice_abc=(4, 4, 4),
        padding=PADDING,
        settings=inverse_settings(),
    )
    assert result.structure is None and result.reason == NO_ATOMS and result.n_sites == 0


def test_mask_removes_voxels(inverse_settings):
    vox = voxelize(rock_salt())
    result = invert(
        vox.species,
        mask=np.zeros_like(vox.mask),
        lattice_abc=vox.lattice,
        padding=PADDING,
        settings=inverse_settings(),
    )
    assert result.reason == NO_ATOMS


def test_too_many_sites_is_a_reason_not_a_crash(inverse_settings):
    vox = voxelize(rock_salt())
    settings = replace(inverse_settings(), max_sites=4)
    result = invert(vox.species, lattice_abc=vox.lattice, padding=PADDING, settings=settings)
    assert result.structure is None and result.reason == TOO_MANY_SITES
    assert result.n_sites == 8


def test_images_that_disagree_in_species_vote_or_reject(inverse_settings):
    vox = voxelize(rock_salt())
    species = vox.species.copy()
    # Relabel the Na image at the grid's far corner (frac 1, 1, 1) as K: one of 8 images.
    d = species.shape[0]
    corner = (slice(d - 12, d - 4),) * 3
    block = species[corner]
    block[block == 11] = 19
    vote, reject = (inverse_settings(species_conflict=c) for c in ("vote", "reject"))
    voted = invert(species, lattice_abc=vox.lattice, padding=PADDING, settings=vote)
    assert voted.reason is None and voted.n_sites == 8
    assert sorted(voted.structure.atomic_numbers) == sorted(vox.structure.atomic_numbers)
    rejected = invert(species, lattice_abc=vox.lattice, padding=PADDING, settings=reject)
    assert rejected.structure is None and rejected.reason == INCONSISTENT


def test_bad_lattice_is_a_reason(inverse_settings):
    vox = voxelize(rock_salt())
    grid = {"padding": PADDING, "settings": inverse_settings()}
    assert invert(vox.species, lattice_abc=(5.0, np.nan, 5.0), **grid).reason == "bad_lattice"
    assert invert(vox.species, lattice_abc=(5.0, -1.0, 5.0), **grid).reason == "bad_lattice"


def _ball(d: int, centre: np.ndarray, radius: float) -> np.ndarray:
    idx = np.indices((d, d, d)).transpose(1, 2, 3, 0)
    return np.linalg.norm(idx - centre, axis=-1) <= radius


def test_touching_atoms_of_one_species_are_split(inverse_settings):
    d = 32
    a, b = np.array([14.0, 15.5, 16.0]), np.array([20.5, 15.5, 16.0])
    species = np.zeros((d, d, d), dtype=np.uint8)
    species[_ball(d, a, 3.6) | _ball(d, b, 3.6)] = 26  # overlapping: one connected region
    split = invert(species, lattice_abc=(8.0, 8.0, 8.0), padding=0.25, settings=inverse_settings())
    assert split.n_sites == 2
    # Centroids land on the two ball centres (fractional: index -> u).
    u = lambda i: -0.25 + 1.5 * (i + 0.5) / d  # noqa: E731
    expected = sorted([u(a[0]), u(b[0])])
    assert np.allclose(sorted(split.frac[:, 0]), expected, atol=0.01)
    whole = inverse_settings(split_touching=False)
    merged = invert(species, lattice_abc=(8.0, 8.0, 8.0), padding=PADDING, settings=whole)
    assert merged.n_sites == 1


def test_atoms_closer_than_the_fuse_distance_are_one_atom(inverse_settings):
    d = 32
    big, small = np.array([15.0, 15.5, 16.0]), np.array([19.0, 15.5, 16.0])
    species = np.zeros((d, d, d), dtype=np.uint8)
    species[_ball(d, big, 1.8)] = 26
    species[_ball(d, small, 1.0)] = 8  # a gap of a voxel: two regions, 1.5 Å apart
    kept = invert(species, lattice_abc=(8.0, 8.0, 8.0), padding=0.25, settings=inverse_settings())
    assert kept.n_sites == 2 and sorted(kept.numbers) == [8, 26]
    fuse = inverse_settings(fuse_distance=1.6)
    fused = invert(species, lattice_abc=(8.0, 8.0, 8.0), padding=0.25, settings=fuse)
    assert fused.n_sites == 1 and list(fused.numbers) == [26]  # the larger region's species
    # the position is the voxel-weighted mean: between the two, nearer the larger one
    x = np.sort(kept.frac[:, 0])
    assert x[0] < fused.frac[0, 0] < (x[0] + x[1]) / 2
    closer = inverse_settings(fuse_distance=1.4)
    apart = invert(species, lattice_abc=(8.0, 8.0, 8.0), padding=PADDING, settings=closer)
    assert apart.n_sites == 2


def test_fusing_is_periodic_and_adds_the_votes():
    from matdisc.segment.invert import _fuse

    frac = np.array([[0.02, 0.5, 0.5], [0.97, 0.5, 0.5], [0.5, 0.0, 0.0]])
    votes = np.zeros((3, 256))
    votes[0, 8], votes[1, 26], votes[1, 8], votes[2, 11] = 10, 8, 4, 9
    pos, z, fused, _ = _fuse(frac, votes, np.array([10.0, 10.0, 10.0]), 1.0)  # 0.5 Å apart
    assert list(z) == [8, 11]  # 14 O voxels against 8 Fe
    assert fused[0, 8] == 14 and fused[0, 26] == 8
    assert np.isclose(pos[0, 0], (0.02 - 0.05 * 12 / 22) % 1)  # across the boundary, not 0.5
    assert np.allclose(pos[1], [0.5, 0.0, 0.0])


def test_invert_many_and_settings_from_config():
    vox = voxelize(rock_salt())
    section = {
        "padding": 0.25,
        "max_sites": 40,
        "inverse": {"merge_tolerance": 0.5, "species_conflict": "vote"},
    }
    results = invert_many(
        np.stack([vox.species, np.zeros_like(vox.species)]),
        np.stack([vox.lattice, vox.lattice]),
        padding=PADDING,
        settings=InverseSettings.from_config(validate_config({"voxel": section})["voxel"]),
    )
    assert [r.reason for r in results] == [None, NO_ATOMS]
    assert results[0].n_sites == 8
    # decoded maps: their own settings, never passed to invert under their own name
    section["inverse"].update(
        min_region_voxels=3, decoded={"min_region_voxels": 30, "fuse_distance": 1.0}
    )
    voxel = validate_config({"voxel": section})["voxel"]
    assert InverseSettings.from_config(voxel).min_region_voxels == 3
    assert InverseSettings.from_config(voxel).merge_tolerance == 0.5
    assert InverseSettings.from_config(voxel).fuse_distance is None
    assert InverseSettings.from_config(voxel, decoded=True).min_region_voxels == 30
    assert InverseSettings.from_config(voxel, decoded=True).fuse_distance == 1.0
    assert InverseSettings.from_config(voxel, decoded=True).merge_tolerance == 0.5
    assert not hasattr(InverseSettings.from_config(voxel, decoded=True), "decoded")
    decoded = InverseSettings.from_config(voxel, decoded=True)
    big = invert(vox.species, lattice_abc=vox.lattice, padding=PADDING, settings=decoded)
    assert big.n_sites < 8  # its smallest regions (24 voxels) are dropped as noise


# --- metrics ---------------------------------------------------------------------------------


def test_site_emd_is_periodic_and_in_angstrom():
    true = rock_salt()
    assert site_emd(true, true) == pytest.approx(0.0, abs=1e-12)
    moved = true.copy()
    moved.translate_sites(list(range(len(moved))), [1, 0, -1], frac_coords=True, to_unit_cell=True)
    assert site_emd(moved, true) == pytest.approx(0.0, abs=1e-9)
    shifted = true.copy()
    shifted.translate_sites([0], [0.1 / 5.64, 0, 0], frac_coords=True)
    assert site_emd(shifted, true) == pytest.approx(0.1 / 8, abs=1e-9)
    # Permuted sites: same structure, zero cost.
    permuted = Structure(true.lattice, list(reversed(true.species)), true.frac_coords[::-1])
    assert site_emd(permuted, true) == pytest.approx(0.0, abs=1e-12)


def test_site_emd_with_unequal_counts_and_empty():
    true = rock_salt()
    fewer = true.copy()
    fewer.remove_sites([7])
    emd = site_emd(fewer, true)
    assert 0 < emd < 1.0
    # Moving 1/8 of the mass of 7 sites to the missing site costs at least 1/8 x the
    # shortest distance to it.
    assert emd >= (1 / 8) * 5.64 / 2 * 0.99
    empty = Structure(true.lattice, [], [])
    assert np.isnan(site_emd(empty, true))


def test_site_emd_of_unequal_counts_as_assignment_equals_the_transport_program(monkeypatch):
    """Unequal counts are solved as an assignment between copies of the sites (lcm of the
    counts) up to a bound, by the linear program above it: both give the same distance."""
    import matdisc.segment.metrics as metrics

    rng = np.random.default_rng(8)
    lattice = Lattice.cubic(6.0)
    for n_p, n_t in [(7, 8), (12, 16), (5, 3), (1, 4)]:
        pred = Structure(lattice, ["Na"] * n_p, rng.random((n_p, 3)))
        true = Structure(lattice, ["Cl"] * n_t, rng.random((n_t, 3)))
        assigned = site_emd(pred, true)
        monkeypatch.setattr(metrics, "_MAX_ASSIGNMENT", 0)
        assert site_emd(pred, true) == pytest.approx(assigned, rel=1e-7)
        monkeypatch.undo()


def test_delta_n_sites_and_lattice_mae():
    true = rock_salt()
    fewer = true.copy()
    fewer.remove_sites([0, 1])
    assert delta_n_sites(fewer, true) == 2
    assert delta_n_sites(10, 8) == 2
    bigger = Structure(Lattice.orthorhombic(5.7, 5.64, 5.5), true.species, true.frac_coords)
    assert lattice_mae(bigger, true) == pytest.approx((0.06 + 0.0 + 0.14) / 3)
    assert lattice_mae([5.7, 5.64, 5.5], [5.64, 5.64, 5.64]) == pytest.approx(0.2 / 3)


def test_mask_regions_take_the_majority_species_of_noisy_voxels(inverse_settings):
    """UNet output: one atom's voxels carry mixed species. By species they fall apart into
    many regions; by mask they stay one atom with the majority species."""
    d = 32
    rng = np.random.default_rng(0)
    centres = [np.array([10.0, 10.0, 10.0]), np.array([21.0, 21.0, 21.0])]
    species = np.zeros((d, d, d), dtype=np.uint8)
    for centre, z in zip(centres, (11, 17), strict=True):
        ball = _ball(d, centre, 2.5)
        noisy = np.where(rng.random(int(ball.sum())) < 0.3, 8, z)  # 30% of voxels say O
        species[ball] = noisy
    grid = {"lattice_abc": (8.0, 8.0, 8.0), "padding": PADDING}
    by_species = invert(species, **grid, settings=inverse_settings(regions="species"))
    by_mask = invert(species, **grid, settings=inverse_settings(regions="mask"))
    assert by_species.n_sites > 2
    assert by_mask.ok and by_mask.n_sites == 2
    assert sorted(by_mask.numbers.tolist()) == [11, 17]
    with pytest.raises(ValueError, match="regions"):
        invert(species, **grid, settings=replace(inverse_settings(), regions="both"))


def test_structure_scores_count_recovered_stoichiometry_and_composition():
    from matdisc.models.evaluate import StructureScores
    from matdisc.segment.invert import InversionResult

    true = rock_salt()
    kbr = Structure(true.lattice, ["K"] * 4 + ["Br"] * 4, true.frac_coords)
    na3cl = Structure(true.lattice, ["Na"] * 5 + ["Cl"] * 3, true.frac_coords)
    scores = StructureScores()
    abc = np.array(true.lattice.abc)
    for s in (true, kbr, na3cl):
        scores.add(InversionResult(s, None, len(s)), true, abc, abc)
    scores.add(InversionResult(None, NO_ATOMS, 0), true, abc, abc)
    rows = scores.rows()
    assert rows["same_stoichiometry_fraction"] == (0.5, 4)  # NaCl and KBr of four
    assert rows["same_composition_fraction"] == (0.25, 4)
