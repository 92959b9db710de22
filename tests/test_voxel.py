"""Crystal -> voxel grids (matdisc.voxel): cells, grids, invariances, rotations, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from matdisc.segment import invert, lattice_from_coords
from matdisc.segment.metrics import site_emd
from matdisc.voxel import VoxelizeError, coordinate_grid, voxelize
from matdisc.voxel.augment import ROTATIONS, apply_rotation, random_rot90, rotate_fractions
from matdisc.voxel.cell import CubicCell, arrays_from_structure, conventional_cubic
from matdisc.voxel.core import density_and_species, voxelize_cell
from matdisc.voxel.grid import voxel_fractions
from matdisc.voxel.radii import radius_lookup

FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def cubic_crystal(
    a: float, basis: list[tuple[str, list[float]]], centring: np.ndarray
) -> Structure:
    """Conventional cubic cell: every basis position repeated by the centring translations.

    (Built directly: ``Structure.from_spacegroup`` takes seconds per call here.)
    """
    species = [element for element, _ in basis for _ in centring]
    frac = [(np.asarray(pos) + t) % 1.0 for _, pos in basis for t in centring]
    return Structure(Lattice.cubic(a), species, frac)


def fcc_primitive(conventional: Structure) -> Structure:
    """The 60° primitive cell of a face-centred cubic crystal (as the MP stores it)."""
    matrix = 0.5 * conventional.lattice.a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    frac = np.linalg.solve(matrix.T, conventional.cart_coords.T).T
    frac = np.round(frac, 8) % 1.0
    _, first = np.unique(np.round(frac, 6) % 1.0, axis=0, return_index=True)
    first.sort()
    return Structure(Lattice(matrix), [conventional[i].specie for i in first], frac[first])


def rock_salt() -> Structure:
    return cubic_crystal(5.64, [("Na", [0, 0, 0]), ("Cl", [0.5, 0.5, 0.5])], FCC)


def cscl() -> Structure:
    return cubic_crystal(4.12, [("Cs", [0, 0, 0]), ("Cl", [0.5, 0.5, 0.5])], np.zeros((1, 3)))


def perovskite() -> Structure:
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def heusler() -> Structure:
    basis = [("Cu", [0.25] * 3), ("Cu", [0.75] * 3), ("Mn", [0, 0, 0]), ("Al", [0.5] * 3)]
    return cubic_crystal(5.95, basis, FCC)


CRYSTALS = {"rock_salt": rock_salt, "cscl": cscl, "perovskite": perovskite, "heusler": heusler}
FCC_CRYSTALS = {"rock_salt", "heusler"}


def low_symmetry_cell() -> CubicCell:
    """A cubic box with asymmetric, well separated sites (no ties between sites)."""
    frac = np.array(
        [[0.11, 0.23, 0.37], [0.62, 0.18, 0.71], [0.41, 0.77, 0.09], [0.83, 0.56, 0.52]]
    )
    return CubicCell(
        lattice=np.full(3, 6.1), frac=frac, numbers=np.array([11, 17, 8, 22]), method="as_given"
    )


# --- cells -----------------------------------------------------------------------------


def sheared(conventional: Structure) -> Structure:
    """The same crystal in a non-reduced primitive setting: b' = a + b (45° angle)."""
    a = conventional.lattice.a
    matrix = a * np.array([[1.0, 0, 0], [1, 1, 0], [0, 0, 1]])
    frac = np.linalg.solve(matrix.T, conventional.cart_coords.T).T % 1.0
    return Structure(Lattice(matrix), conventional.species, frac)


@pytest.mark.parametrize(
    ("make", "setting", "n_conv"),
    [
        (rock_salt, fcc_primitive, 8),
        (cscl, sheared, 2),
        (perovskite, sheared, 5),
        (heusler, fcc_primitive, 16),
    ],
)
def test_other_settings_become_conventional_cubes(make, setting, n_conv):
    conv = make()
    other = setting(conv)
    assert not np.allclose(other.lattice.angles, 90)
    cell = conventional_cubic(*arrays_from_structure(other))
    assert cell.method == "metric"
    assert len(cell) == n_conv
    assert np.allclose(cell.lattice, conv.lattice.a, atol=1e-6)
    assert sorted(cell.numbers.tolist()) == sorted(conv.atomic_numbers)
    assert np.all((cell.frac >= 0) & (cell.frac < 1))


def test_supercell_input_falls_back_to_the_true_conventional_cell():
    prim = fcc_primitive(rock_salt())
    prim.make_supercell([[2, 0, 0], [0, 1, 0], [0, 0, 1]])
    cell = conventional_cubic(*arrays_from_structure(prim))
    assert len(cell) == 8 and cell.method == "spglib"
    assert cell.lattice[0] == pytest.approx(5.64, abs=1e-3)


def test_bcc_primitive_cell():
    matrix = 0.5 * 2.87 * np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]])
    fe = Structure(Lattice(matrix), ["Fe"], [[0, 0, 0]])
    cell = conventional_cubic(*arrays_from_structure(fe))
    assert len(cell) == 2 and cell.method == "metric"
    assert cell.lattice[0] == pytest.approx(2.87)


# --- grids ------------------------------------------------------------------------------


def test_coordinate_grid_numpy_and_torch():
    lat = np.array([[4.0, 5.0, 6.0], [3.0, 3.0, 3.0]])
    grid = coordinate_grid(lat, 8, 0.25)
    u = voxel_fractions(8, 0.25)
    assert grid.shape == (2, 3, 8, 8, 8) and grid.dtype == np.float32
    assert np.allclose(grid[0, 0, :, 3, 5], 4.0 * u)
    assert np.allclose(grid[0, 1, 2, :, 5], 5.0 * u)
    assert np.allclose(grid[1, 2, 1, 1, :], 3.0 * u)
    tgrid = coordinate_grid(torch.tensor(lat, dtype=torch.float64), 8, 0.25)
    assert isinstance(tgrid, torch.Tensor) and tgrid.dtype == torch.float64
    assert np.allclose(tgrid.numpy(), grid, atol=1e-6)
    # The grid is symmetric about the cell centre and spans the padding.
    assert u[0] + u[-1] == pytest.approx(1.0)
    assert u[0] == pytest.approx(-0.25 + 1.5 / 16)


def test_density_matches_a_per_voxel_per_site_loop():
    """The vectorised grids equal the straightforward loop over voxels x sites x images."""
    cell = low_symmetry_cell()
    d, pad, fraction, min_vox = 8, 0.25, 0.6, 1.0
    radii = radius_lookup()[cell.numbers]
    density, species = density_and_species(
        cell.lattice,
        cell.frac,
        cell.numbers,
        radii,
        grid_size=d,
        padding=pad,
        label_fraction=fraction,
        min_label_radius_voxels=min_vox,
    )
    u = voxel_fractions(d, pad)
    a = cell.lattice[0]
    spacing = a * 1.5 / d
    label_r = np.maximum(fraction * radii, min_vox * spacing)
    ref_m = np.zeros((d, d, d))
    ref_s = np.zeros((d, d, d), dtype=np.uint8)
    images = list(itertools.product(range(-2, 3), repeat=3))  # tails < 1e-20 beyond
    for i, j, k in itertools.product(range(d), repeat=3):
        v = a * np.array([u[i], u[j], u[k]])
        best = (np.inf, 0)
        for site in range(len(cell.numbers)):
            for shift in images:
                r = np.linalg.norm(v - a * (cell.frac[site] + shift))
                s = radii[site]
                ref_m[i, j, k] += (
                    cell.numbers[site] * np.exp(-0.5 * (r / s) ** 2) / ((2 * np.pi) ** 1.5 * s**3)
                )
                if r <= label_r[site] and (r, cell.numbers[site]) < best:
                    best = (r, cell.numbers[site])
        ref_s[i, j, k] = best[1]
    assert np.allclose(density, ref_m, rtol=1e-5, atol=1e-6)
    assert np.array_equal(species, ref_s)


def test_every_site_owns_voxels_and_mask_is_species():
    result = voxelize(heusler())
    assert set(np.unique(result.species)) == {0, 13, 25, 29}
    assert np.array_equal(result.mask, result.species > 0)
    assert result.density.shape == (32, 32, 32) and result.density.dtype == np.float32
    assert result.coords.shape == (3, 32, 32, 32)
    assert np.allclose(result.lattice, 5.95)


@pytest.mark.parametrize("name", sorted(CRYSTALS))
def test_round_trip_is_exact(name, inverse_settings):
    """voxelize -> true S -> invert gives the same sites (count, species, positions)."""
    crystal = CRYSTALS[name]()
    result = voxelize(fcc_primitive(crystal) if name in FCC_CRYSTALS else crystal)
    abc = lattice_from_coords(result.coords, 0.25)
    assert np.allclose(abc, result.lattice, atol=1e-5)
    inv = invert(result.species, lattice_abc=abc, padding=0.25, settings=inverse_settings())
    assert inv.reason is None
    true = result.structure
    assert inv.n_sites == len(true)
    assert sorted(inv.structure.atomic_numbers) == sorted(true.atomic_numbers)
    assert site_emd(inv.structure, true) < 0.03
    # Every predicted site sits on a true site of the same species.
    for site in inv.structure:
        dists = [site.distance(t) for t in true if t.specie == site.specie]
        assert min(dists) < 0.06


# --- invariances --------------------------------------------------------------------------


def test_lattice_translation_and_site_permutation_leave_grids_unchanged():
    cell = voxelize(rock_salt()).cell
    base = voxelize_cell(cell)
    shifted = CubicCell(cell.lattice, cell.frac + np.array([1.0, -2.0, 3.0]), cell.numbers, "x")
    order = np.random.default_rng(3).permutation(len(cell))
    permuted = CubicCell(cell.lattice, cell.frac[order], cell.numbers[order], "x")
    for other in (voxelize_cell(shifted), voxelize_cell(permuted)):
        assert np.array_equal(other.species, base.species)
        assert np.allclose(other.density, base.density, rtol=1e-5, atol=1e-6)
    # The same through the public entry point, with a translated pymatgen structure.
    moved = rock_salt()
    moved.translate_sites(list(range(len(moved))), [1, 0, -1], frac_coords=True, to_unit_cell=False)
    assert np.array_equal(voxelize(moved).species, base.species)


def _rotate_frac(frac: np.ndarray, plan) -> np.ndarray:
    """Fractional coordinates after the quarter turns of ``plan`` (as np.rot90 moves voxels)."""
    frac = frac.copy()
    for k, (a0, a1) in plan:
        for _ in range(k):
            new = frac.copy()
            new[:, a0] = 1.0 - frac[:, a1]
            new[:, a1] = frac[:, a0]
            frac = new
    return frac


@pytest.mark.parametrize("index", range(len(ROTATIONS)))
def test_rotating_grids_equals_voxelizing_the_rotated_crystal(index):
    cell = low_symmetry_cell()
    base = voxelize_cell(cell, grid_size=16)
    rotated_cell = CubicCell(
        cell.lattice, _rotate_frac(cell.frac, ROTATIONS[index]), cell.numbers, "x"
    )
    expected = voxelize_cell(rotated_cell, grid_size=16)
    density, species, mask, coords = apply_rotation(
        index, base.density, base.species, base.mask, base.coords
    )
    assert np.array_equal(species, expected.species)
    assert np.array_equal(mask, expected.mask)
    assert np.allclose(density, expected.density, rtol=1e-4, atol=1e-5)
    assert np.allclose(coords, expected.coords, atol=1e-5)


def test_random_rot90_draws_all_rotations_and_keeps_arrays_consistent():
    assert len(ROTATIONS) == 24
    cell = low_symmetry_cell()
    base = voxelize_cell(cell, grid_size=12)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        s, m, c = random_rot90(rng, base.species, base.mask, base.coords)
        assert np.array_equal(s > 0, m)
        # C stays the coordinate grid of the (cubic) cell.
        assert np.allclose(c, base.coords, atol=1e-5)
        seen.add(s.tobytes())
    assert len(seen) == 24
    # torch tensors and a torch generator work too.
    gen = torch.Generator().manual_seed(1)
    (ts, tc) = random_rot90(gen, torch.from_numpy(base.species), torch.from_numpy(base.coords))
    assert isinstance(ts, torch.Tensor) and ts.shape == (12, 12, 12)
    assert torch.allclose(tc, torch.from_numpy(base.coords), atol=1e-5)


def test_rotated_coordinate_grid_of_unequal_lengths_is_the_permuted_grid():
    coords = coordinate_grid(np.array([[4.0, 5.0, 6.0]]), 8, 0.25)[0]
    for index in range(len(ROTATIONS)):
        (turned,) = apply_rotation(index, coords)
        abc = lattice_from_coords(turned, 0.25)
        assert sorted(np.round(abc, 5)) == [4.0, 5.0, 6.0]
        assert np.allclose(turned, coordinate_grid(abc[None], 8, 0.25)[0], atol=1e-5)


# --- bad input ----------------------------------------------------------------------------


def test_non_cubic_cell_is_rejected_with_a_reason():
    tetragonal = Structure(Lattice.tetragonal(4.0, 5.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(VoxelizeError) as info:
        voxelize(tetragonal)
    assert info.value.reason == "not_cubic"
    assert "not cubic" in str(info.value)


def test_cube_shaped_cell_with_lower_symmetry_is_caught_by_check_symmetry():
    cell = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.3]])
    assert voxelize(cell).cell.method == "as_given"  # metric only: accepted
    with pytest.raises(VoxelizeError) as info:
        voxelize(cell, check_symmetry=True)
    assert info.value.reason == "not_cubic"


def test_too_many_sites_is_rejected_with_a_reason():
    big = rock_salt()
    big.make_supercell([2, 2, 2])  # 64 sites, and no smaller cell: spglib finds 8
    assert len(voxelize(big).cell) == 8
    with pytest.raises(VoxelizeError) as info:
        voxelize(heusler(), max_sites=10)
    assert info.value.reason == "too_many_sites"
    assert "16 sites" in str(info.value)


def test_element_without_radius_is_rejected_with_a_reason():
    es = cubic_crystal(5.0, [("Es", [0, 0, 0]), ("O", [0.5, 0.5, 0.5])], FCC)
    with pytest.raises(VoxelizeError) as info:
        voxelize(es)
    assert info.value.reason == "no_radius"
    assert "Es" in str(info.value)


def test_disordered_structure_is_rejected_with_a_reason():
    alloy = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    with pytest.raises(VoxelizeError) as info:
        voxelize(alloy)
    assert info.value.reason == "disordered"


def test_rotated_fractions_are_where_the_rotated_map_puts_the_atoms():
    from matdisc.segment.density import model_map

    abc = np.full(3, 5.0)
    frac = np.array([[0.1, 0.2, 0.3], [0.6, 0.05, 0.9]])
    numbers, sigma = np.array([20, 8]), np.array([0.8, 1.1])
    grid = model_map(abc, frac, numbers, sigma, 24, 0.25)
    for index in range(len(ROTATIONS)):
        (turned,) = apply_rotation(index, grid)
        drawn = model_map(abc, rotate_fractions(frac, index), numbers, sigma, 24, 0.25)
        np.testing.assert_allclose(turned, drawn, atol=1e-12)
