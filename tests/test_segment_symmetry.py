"""Partly filled orbits rounded to whole (matdisc.segment.symmetry, invert step 5)."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Composition, Lattice, Structure

from matdisc.segment import invert
from matdisc.segment.symmetry import complete_orbits, cubic_rotations, partial_symmetries
from matdisc.voxel import voxelize
from matdisc.voxel.core import PADDING

FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def rock_salt() -> Structure:
    return Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4, np.r_[FCC, (FCC + 0.5) % 1])


def perovskite() -> Structure:
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(3.9), ["Ca", "Ti", "O", "O", "O"], frac)


def heusler() -> Structure:
    """Full Heusler X2YZ (Fm-3m): Y at 4a, Z at 4b, X at 8c."""
    frac = np.r_[FCC, (FCC + 0.5) % 1, (FCC + 0.25) % 1, (FCC + 0.75) % 1]
    return Structure(Lattice.cubic(6.1), ["Hf"] * 4 + ["Sn"] * 4 + ["Ni"] * 8, frac)


def _votes(numbers: list[int], weight: float = 10.0) -> np.ndarray:
    votes = np.zeros((len(numbers), 256))
    votes[np.arange(len(numbers)), numbers] = weight
    return votes


def _z(structure: Structure) -> list[int]:
    return [site.specie.Z for site in structure]


def test_the_48_cubic_operations_form_a_group():
    ops = cubic_rotations()
    assert ops.shape == (48, 3, 3)
    assert np.array_equal(ops[0], np.eye(3))
    keys = {op.astype(int).tobytes() for op in ops}
    assert len(keys) == 48
    assert all((a @ b).astype(int).tobytes() in keys for a in ops for b in ops)


# -- orbit rounding (invert step 5, orbit_occupancy) -----------------------------------


def _round(structure: Structure, keep: list[int], extra=(), jitter: float = 0.0, **kw):
    """complete_orbits of ``structure``'s sites ``keep`` plus ``extra`` (Z, frac) atoms,
    positions jittered by up to ``jitter`` Å; returns (frac, atomic numbers)."""
    frac = structure.frac_coords[keep]
    z = [structure[i].specie.Z for i in keep]
    for number, position in extra:
        frac = np.vstack([frac, position])
        z.append(number)
    lattice = np.array(structure.lattice.abc)
    frac = frac + np.random.default_rng(1).uniform(-jitter, jitter, frac.shape) / lattice
    options = {"tolerance": 0.5, "support": 0.6, "occupancy": 0.5, **kw}
    out, votes = complete_orbits(frac, _votes(z), lattice, **options)
    return out, votes.argmax(axis=1)


def _same_sites(frac_a, z_a, frac_b, z_b, lattice, tol=0.3) -> bool:
    """Every site of a has one of b's within tol Å with the same number, and vice versa."""
    if len(frac_a) != len(frac_b):
        return False
    d = frac_a[:, None, :] - frac_b[None, :, :]
    d = np.linalg.norm((d - np.rint(d)) * lattice, axis=-1)
    match = (d < tol) & (np.asarray(z_a)[:, None] == np.asarray(z_b)[None, :])
    return bool(match.any(axis=1).all() and match.any(axis=0).all())


def test_partial_symmetries_of_a_perovskite_missing_an_oxygen_are_pm3m():
    s = perovskite()
    lattice = np.array(s.lattice.abc)
    rot, shift = partial_symmetries(
        s.frac_coords[:4], np.array(_z(s)[:4]), lattice, tolerance=0.3, support=0.6
    )
    assert len(rot) == 48 and np.array_equal(rot[0], np.eye(3)) and not shift[0].any()
    # every operation fixes the Ca (origin) up to a lattice vector: no stray translations
    assert np.allclose((shift + 0.5) % 1 - 0.5, 0, atol=1e-6)
    # all four sites are needed at support 1: only the operations keeping the two O
    rot, _ = partial_symmetries(
        s.frac_coords[:4], np.array(_z(s)[:4]), lattice, tolerance=0.3, support=1.0
    )
    assert len(rot) == 16


def test_a_missing_oxygen_is_put_back():
    s = perovskite()
    frac, z = _round(s, [0, 1, 2, 3], jitter=0.1)
    assert _same_sites(frac, z, s.frac_coords, _z(s), np.array(s.lattice.abc))


def test_spurious_atoms_in_the_holes_of_rock_salt_are_removed():
    """Two Na in two of the eight tetrahedral holes: 25 % of an orbit, emptied."""
    s = rock_salt()
    extra = [(11, [0.25, 0.25, 0.25]), (11, [0.75, 0.75, 0.25])]
    frac, z = _round(s, list(range(8)), extra, jitter=0.1)
    assert _same_sites(frac, z, s.frac_coords, _z(s), np.array(s.lattice.abc))


def test_five_of_eight_heusler_holes_are_filled_and_y_z_stay_apart():
    """Three of the eight Ni gone (as in decoded HfNi2Sn maps): the 8c orbit is 5/8 full
    and filled again, while Hf (4a) and Sn (4b) keep their own species."""
    s = heusler()
    frac, z = _round(s, [*range(8), 8, 9, 12, 14, 15], jitter=0.1)
    assert _same_sites(frac, z, s.frac_coords, _z(s), np.array(s.lattice.abc))


def test_a_three_eighths_full_orbit_is_emptied():
    s = heusler()
    _, z = _round(s, [*range(8), 8, 9, 12])
    assert sorted(z.tolist()) == [50] * 4 + [72] * 4


def test_an_orbit_takes_its_majority_species():
    s = rock_salt()
    z = _z(s)
    z[7] = 35  # one Cl read as Br
    _, votes = complete_orbits(
        s.frac_coords, _votes(z), np.array(s.lattice.abc), tolerance=0.5, support=0.6, occupancy=0.5
    )
    assert sorted(votes.argmax(axis=1).tolist()) == [11] * 4 + [17] * 4


def test_whole_crystals_and_crystals_without_symmetry_are_unchanged():
    for s in (rock_salt(), perovskite(), heusler()):
        frac, z = _round(s, list(range(len(s))), jitter=0.05)
        assert _same_sites(frac, z, s.frac_coords, _z(s), np.array(s.lattice.abc), tol=0.1)
    # three atoms no cubic operation relates: the identity alone, the input returned
    frac = np.array([[0.1, 0.2, 0.3], [0.6, 0.15, 0.4], [0.35, 0.7, 0.8]])
    votes = _votes([8, 26, 29])
    out, out_votes = complete_orbits(
        frac, votes, np.array([5.0, 5.0, 5.0]), tolerance=0.3, support=0.6, occupancy=0.5
    )
    assert np.array_equal(out, frac) and np.array_equal(out_votes, votes)


def test_invert_rounds_the_orbits_of_a_voxel_grid(inverse_settings):
    """A Heusler grid with three Ni atoms erased: Hf4Sn4Ni5 as read, HfNi2Sn rounded."""
    s = heusler()
    s.remove_sites([10, 11, 13])
    vox = voxelize(s)
    grid = {"lattice_abc": vox.lattice, "padding": PADDING}
    plain = invert(vox.species, **grid, settings=inverse_settings(regions="mask"))
    assert plain.structure.composition == Composition("Hf4Sn4Ni5")
    rounding = inverse_settings(regions="mask", orbit_occupancy=0.5)
    rounded = invert(vox.species, **grid, settings=rounding)
    assert rounded.ok and rounded.n_sites == 16
    assert rounded.structure.composition.reduced_formula == "HfNi2Sn"
    assert rounded.structure.composition.anonymized_formula == "ABC2"


def test_a_garbled_map_with_more_sites_than_positions_is_left_as_read(monkeypatch):
    """A decoded map read as thousands of sites is not searched for symmetry (the search
    holds (48, n, n) arrays: gigabytes at n = 2,000); it comes back unchanged and the
    inverse then rejects it as too_many_sites."""
    import matdisc.segment.symmetry as symmetry

    def no_search(*args, **kwargs):
        raise AssertionError("partial_symmetries must not run on more sites than positions")

    monkeypatch.setattr(symmetry, "partial_symmetries", no_search)
    rng = np.random.default_rng(0)
    frac, z = rng.random((2000, 3)), rng.choice([8, 12], 2000)
    out, votes = complete_orbits(
        frac, _votes(list(z)), np.full(3, 40.0),
        tolerance=0.5, support=0.6, occupancy=0.5, max_positions=160,
    )  # fmt: skip
    np.testing.assert_array_equal(out, frac % 1.0)
    np.testing.assert_array_equal(votes.argmax(axis=1), z)


def test_dropping_candidates_early_keeps_the_operations(monkeypatch):
    """partial_symmetries checks a few sites at a time and drops the candidate operations
    that can no longer reach their support: the same operations as checking all sites
    at once (a Heusler cell with jitter and a missing site)."""
    import matdisc.segment.symmetry as symmetry

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.0), ["Cu", "Mn", "Al"],
                                  [[0.25, 0.25, 0.25], [0, 0, 0], [0.5, 0.5, 0.5]])  # fmt: skip
    frac = s.frac_coords[1:] + np.random.default_rng(4).uniform(-0.01, 0.01, (len(s) - 1, 3))
    z = np.array(_z(s)[1:])
    lattice = np.array(s.lattice.abc)
    found = {}
    for step in (1, 100):
        monkeypatch.setattr(symmetry, "_SITES_PER_STEP", step)
        found[step] = partial_symmetries(frac, z, lattice, tolerance=0.4, support=0.8)
    assert len(found[1][0]) > 1
    assert np.array_equal(found[1][0], found[100][0])
    assert np.array_equal(found[1][1], found[100][1])
