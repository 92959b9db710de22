"""Elements read from the grids: table positions, the fit of Z, descriptor channels."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from scipy.ndimage import gaussian_filter

from matdisc.segment.species import (
    descriptor_grids,
    descriptor_table,
    fit_charges,
    nearest_elements,
    read_descriptors,
    site_gaussians,
    species_from_descriptors,
    table_position,
)
from matdisc.voxel import voxelize
from matdisc.voxel.radii import radius_lookup

PADDING = 0.25


def _cells():
    rocksalt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    perovskite = Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(3.9), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0]]
    )
    return [voxelize(s).cell for s in (rocksalt, perovskite)]


@pytest.mark.parametrize(
    "symbol_z, place",
    [(1, (1, 1)), (2, (1, 32)), (8, (2, 30)), (11, (3, 1)), (22, (4, 18)), (31, (4, 27)),
     (57, (6, 3)), (71, (6, 17)), (83, (6, 29)), (92, (7, 6)), (118, (7, 32))],
)  # fmt: skip
def test_table_position(symbol_z, place):
    assert table_position(symbol_z) == place


def test_every_element_has_its_own_descriptor():
    table = descriptor_table("table_position")[1:119]
    assert len({tuple(row) for row in table}) == 118
    assert table.min() == 0.0 and table.max() == 1.0
    with pytest.raises(ValueError, match="table_position"):
        descriptor_table("colour")


@pytest.mark.parametrize("cell", _cells(), ids=["NaCl", "SrTiO3"])
def test_fit_returns_every_z_on_a_true_map_and_not_with_wrong_widths(cell):
    density = voxelize(cell.to_structure()).density
    radii = radius_lookup()[cell.numbers]
    z = fit_charges(density, cell.lattice, cell.frac, radii, padding=PADDING)
    np.testing.assert_allclose(z, cell.numbers, atol=1e-3)
    # the fit needs the true σ: a common width gives other charges
    wrong = fit_charges(density, cell.lattice, cell.frac, np.full(len(radii), 1.2), padding=PADDING)
    assert np.abs(wrong - cell.numbers).max() > 1.0


@pytest.mark.parametrize("cell", _cells(), ids=["NaCl", "SrTiO3"])
def test_descriptor_channels_read_back_through_blur_and_scale(cell):
    grids = descriptor_grids(
        cell.lattice, cell.frac, cell.numbers, kind="table_position", grid_size=32, padding=PADDING
    )
    assert grids.shape == (3, 32, 32, 32) and grids[0].max() == pytest.approx(1.0, abs=0.05)
    true = descriptor_table("table_position")[cell.numbers]
    exact = read_descriptors(grids, cell.lattice, cell.frac, padding=PADDING)
    np.testing.assert_allclose(exact, true, atol=1e-3)
    # a decoder that blurs every channel alike and gets the height wrong: the ratio holds
    blurred = np.stack([0.6 * gaussian_filter(g, 2.0, mode="nearest") for g in grids])
    values = read_descriptors(blurred, cell.lattice, cell.frac, padding=PADDING)
    candidates = [8, 9, 11, 17, 19, 20, 22, 38]
    read, dist = nearest_elements(values, "table_position", candidates)
    assert np.array_equal(read, cell.numbers) and dist.max() < 0.5
    structure = cell.to_structure()
    # the reader names every species group from the channels, and splits a label that
    # covers two species (here one label, Fe, for every site)
    blank = structure.copy()
    blank.replace_species({el: "Fe" for el in structure.composition.elements})
    got = species_from_descriptors(
        blank, blurred, kind="table_position", candidates=candidates, padding=PADDING
    )
    assert got.composition == structure.composition


def test_reference_points_replace_the_table_for_the_elements_they_name():
    table = descriptor_table("table_position")
    # a decoder that shrinks K (row 4, column 1) towards the middle of the table
    shrunk = table[19] * 0.5 + 0.25
    read, _ = nearest_elements(shrunk[None], "table_position", [9, 19, 20, 26])
    assert read[0] != 19
    read, dist = nearest_elements(shrunk[None], "table_position", [9, 19, 20, 26], {19: shrunk})
    assert read[0] == 19 and dist[0] == pytest.approx(0.0)


def test_fit_from_the_normal_equations_is_the_lstsq_of_the_basis():
    """The separable normal equations give lstsq's Z on the full (n, d³) basis."""
    rng = np.random.default_rng(0)
    for n in (1, 4, 12):
        lattice, frac = rng.uniform(4, 9, 3), rng.random((n, 3))
        sigma, density = rng.uniform(0.5, 1.5, n), rng.random((32, 32, 32))
        basis = site_gaussians(lattice, frac, sigma, 32, PADDING)
        expected, *_ = np.linalg.lstsq(basis.T, density.ravel(), rcond=None)
        got = fit_charges(density, lattice, frac, sigma, padding=PADDING)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
