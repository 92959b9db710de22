"""The density reader: crystals read from the density alone (matdisc.segment.density)."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matdisc.segment.density import _orbits, _special_groups, choose_elements, read_density
from matdisc.segment.metrics import site_emd
from matdisc.voxel import voxelize
from matdisc.voxel.radii import radius_lookup

PADDING = 0.25
RADII = radius_lookup()
#: every element with a radius up to Bi: the reader chooses among 70-odd elements
CANDIDATES = np.array([z for z in range(1, 84) if not np.isnan(RADII[z])])


def _cell(group: str, a: float, species: list[str], coords: list[list[float]]) -> Structure:
    return Structure.from_spacegroup(group, Lattice.cubic(a), species, coords)


CASES = {
    "NaCl": _cell("Fm-3m", 5.64, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "KF": _cell("Fm-3m", 5.35, ["K", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "CsCl": _cell("Pm-3m", 4.12, ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "SrTiO3": _cell("Pm-3m", 3.905, ["Sr", "Ti", "O"], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0]]),
    "Cu2MnAl": _cell("Fm-3m", 5.95, ["Cu", "Mn", "Al"], [[0.25] * 3, [0, 0, 0], [0.5] * 3]),
    "ZrNiSn": _cell("F-43m", 6.11, ["Zr", "Ni", "Sn"], [[0, 0, 0], [0.25] * 3, [0.5] * 3]),
    "CaF2": _cell("Fm-3m", 5.46, ["Ca", "F"], [[0, 0, 0], [0.25] * 3]),
    # a wide, light anion beside a small cation (no maximum of its own) and beside heavy ones
    "MgO": _cell("Fm-3m", 4.21, ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "BaTiO3": _cell("Pm-3m", 4.0, ["Ba", "Ti", "O"], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0]]),
    "CaZrO3": _cell("Pm-3m", 4.02, ["Ca", "Zr", "O"], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0]]),
    # antifluorite: the Li⁺ cube is F- and I-centred, the hidden O²⁻ only F-centred
    "Li2O": _cell("Fm-3m", 4.65, ["Li", "O"], [[0.25] * 3, [0, 0, 0]]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_reads_sites_and_elements_of_true_maps(name):
    v = voxelize(CASES[name])
    read = read_density(v.density, v.lattice, PADDING, CANDIDATES, RADII[CANDIDATES])
    got = read.structure(v.lattice)
    assert got.composition.reduced_formula == v.structure.composition.reduced_formula
    assert len(got) == len(v.structure)
    assert site_emd(got, v.structure) < 0.05
    assert read.residual < 1e-3


def test_hidden_anions_come_from_the_residual():
    # F⁻ of KF and O²⁻ of SrTiO3 have no density maximum of their own
    for name in ("KF", "SrTiO3"):
        v = voxelize(CASES[name])
        read = read_density(v.density, v.lattice, PADDING, CANDIDATES, RADII[CANDIDATES])
        assert read.rounds >= 1
        off = read_density(
            v.density, v.lattice, PADDING, CANDIDATES, RADII[CANDIDATES], rounds=0, special_rounds=0
        )
        assert len(off.numbers) < len(v.structure)


def test_true_sites_get_their_elements_and_an_empty_site_is_emptied():
    v = voxelize(CASES["NaCl"])
    frac = np.vstack([v.cell.frac, [[0.25, 0.25, 0.25]]])  # a tetrahedral hole: no atom
    numbers, sigma = choose_elements(
        v.density, v.lattice, frac, PADDING, CANDIDATES, RADII[CANDIDATES]
    )
    np.testing.assert_array_equal(numbers[:-1], v.cell.numbers)
    np.testing.assert_allclose(sigma[:-1], RADII[v.cell.numbers])
    assert numbers[-1] == 0


@pytest.mark.parametrize("name", ["MgO", "BaTiO3", "CaZrO3"])
def test_orbits_take_their_element_together(name):
    # site by site, Mg or Ba took the anions' density (MgO read as S and Cr, the O²⁻ as
    # Li/K); the sites of an orbit choose together, and pairs of orbits are tried jointly
    v = voxelize(CASES[name])
    numbers, _ = choose_elements(
        v.density, v.lattice, v.cell.frac, PADDING, CANDIDATES, RADII[CANDIDATES]
    )
    np.testing.assert_array_equal(numbers, v.cell.numbers)


def test_orbits_of_sites_follow_symmetry_and_labels():
    v = voxelize(CASES["SrTiO3"])
    same = np.zeros(len(v.cell.frac), dtype=np.int64)
    orbits = _orbits(v.lattice, v.cell.frac, same, symprec=0.1)
    by_element = _orbits(v.lattice, v.cell.frac, v.cell.numbers, symprec=0.1)
    oxygen = v.cell.numbers == 8
    assert len(set(by_element[oxygen])) == 1 and len(set(by_element)) == 3
    # unlabelled, Sr and Ti still differ from O (3 neighbours at a/2 against 6 and 2)
    assert len(set(orbits)) == 3 and len(set(orbits[oxygen])) == 1
    # an orbit never joins sites of different labels
    numbers = v.cell.numbers.copy()
    numbers[np.flatnonzero(oxygen)[0]] = 9
    assert len(set(_orbits(v.lattice, v.cell.frac, numbers, symprec=0.1))) > 3


def test_an_empty_map_reads_as_no_sites():
    read = read_density(np.zeros((16, 16, 16)), [4.0] * 3, PADDING, CANDIDATES, RADII[CANDIDATES])
    assert len(read.numbers) == 0 and read.frac.shape == (0, 3)


def test_special_positions_in_orbits_of_the_centred_lattice():
    sizes = sorted(len(g) for g in _special_groups())
    assert sum(sizes) == 64 and sizes[:2] == [1, 1]  # corner, body centre
    # with F centring the body centre joins the edge centres: rock salt's anion sites
    f_groups = _special_groups(((0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0)))
    anion = next(g for g in f_groups if any(np.allclose(p, 0.5) for p in g))
    assert len(anion) == 4 and any(np.allclose(p, [0.5, 0, 0]) for p in anion)
