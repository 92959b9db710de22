"""Reading each orbit's element with the UNet's class probabilities and charge balance."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import torch
from pymatgen.core import Composition, Lattice, Structure

from matdisc.config import validate_config
from matdisc.segment import InverseSettings, invert
from matdisc.segment.invert import ClassScores
from matdisc.segment.readback import charge_aware, combinations, orbit_alternatives, sampled
from matdisc.stability.validity import is_valid


def strict(formula: str) -> bool:
    return is_valid(formula, "strict")


def soft_rows(rows: list[dict[int, float]]) -> np.ndarray:
    out = np.zeros((len(rows), 256))
    for i, row in enumerate(rows):
        for z, v in row.items():
            out[i, z] = v
    return out


def rocksalt(a: float, cation: str, anion: str) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def test_orbits_are_sites_with_equal_soft_votes_and_keep_their_top_elements():
    cation = {20: 30.0, 19: 20.0, 11: 10.0, 3: 1.0}  # Ca, K, Na, Li
    anion = {20: 12.0, 9: 8.0}  # Ca, F
    soft = soft_rows([cation, cation, anion, anion, cation])
    orbits = orbit_alternatives(soft, top=3)
    assert [o.sites for o in orbits] == [(0, 1, 4), (2, 3)]
    assert orbits[0].numbers == (20, 19, 11) and orbits[1].numbers == (20, 9)
    np.testing.assert_allclose(orbits[0].probabilities, [30 / 61, 20 / 61, 10 / 61])
    assert orbits[1].as_dict() == {"sites": 2, "elements": ["Ca", "F"], "probabilities": [0.6, 0.4]}


def test_combinations_come_most_probable_first_and_each_once():
    orbits = orbit_alternatives(soft_rows([{20: 5, 19: 4, 11: 1}, {8: 6, 9: 3, 17: 1}]))
    walked = list(combinations(orbits))
    assert len(walked) == 9 and len({c for c, _ in walked}) == 9
    logp = [lp for _, lp in walked]
    assert logp == sorted(logp, reverse=True) and walked[0][0] == (0, 0)
    np.testing.assert_allclose(walked[0][1], np.log(0.5 * 0.6))


def test_an_invalid_read_takes_the_most_probable_valid_combination():
    """A rock salt read as "KO" (K+ beside O2-: not charge-balanced), with Ca and F the
    second choices of its two orbits: in probability order K O fails, K F passes; the
    formula as read and its validity are kept beside it."""
    structure = rocksalt(5.3, "K", "O")  # 4 cation sites, then 4 anion sites
    cation = {19: 50.0, 20: 40.0, 38: 10.0}  # K, Ca, Sr
    anion = {8: 30.0, 9: 25.0, 17: 5.0}  # O, F, Cl
    soft = soft_rows([cation] * 4 + [anion] * 4)
    assert not strict("KO")
    picked = charge_aware(structure, soft, valid=strict)
    # K O (invalid), then K F (p 0.5 x 0.417) beats Ca O (0.4 x 0.5)
    assert picked.rank == 2 and picked.structure.composition.reduced_formula == "KF"
    assert picked.formula_unconstrained == Composition("KO").reduced_formula  # K2O2
    assert not picked.valid_unconstrained and picked.valid
    assert [o["elements"] for o in json.loads(picked.alternatives_json)] == [
        ["K", "Ca", "Sr"],
        ["O", "F", "Cl"],
    ]
    np.testing.assert_allclose(picked.structure.frac_coords, structure.frac_coords)
    # argmax keeps the read and records the same alternatives
    kept = charge_aware(structure, soft, valid=strict, choose=False)
    assert kept.rank == 0 and kept.structure is structure
    assert kept.alternatives_json == picked.alternatives_json
    # a valid read is kept as it is
    valid = charge_aware(rocksalt(5.3, "Ca", "O"), soft, valid=strict)
    assert valid.rank == 0 and valid.valid_unconstrained


def test_no_valid_combination_keeps_the_read_with_rank_minus_one():
    structure = rocksalt(5.3, "K", "O")
    soft = soft_rows([{19: 1.0}] * 4 + [{8: 1.0}] * 4)
    picked = charge_aware(structure, soft, valid=strict)
    assert picked.rank == -1 and picked.structure is structure and not picked.valid


def test_invert_sums_the_class_probabilities_of_each_atoms_voxels():
    """Two atoms of one species map; the scores give each voxel 0.75 / 0.25 over two
    classes: each atom's soft votes sum to its voxel count, split 3 : 1."""
    d = 16
    species = np.zeros((d, d, d), dtype=np.int64)
    species[3:6, 3:6, 3:6] = 11
    species[10:13, 10:13, 10:13] = 11
    index = np.flatnonzero(species.ravel())
    probs = np.tile([0.75, 0.25], (len(index), 1)).astype(np.float32)
    scores = ClassScores(index, probs, np.array([11, 17]))
    voxel = validate_config({})["voxel"]
    settings = replace(InverseSettings.from_config(voxel), regions="mask")
    result = invert(species, lattice_abc=[8.0, 8.0, 8.0], padding=0.0, settings=settings,
                    scores=scores)  # fmt: skip
    assert result.ok and result.soft is not None and result.soft.shape == (result.n_sites, 256)
    np.testing.assert_allclose(result.soft[:, 11], 27 * 0.75)
    np.testing.assert_allclose(result.soft[:, 17], 27 * 0.25)
    plain = invert(species, lattice_abc=[8.0, 8.0, 8.0], padding=0.0, settings=settings)
    assert plain.soft is None and plain.structure == result.structure


def test_segment_scored_probabilities_agree_with_the_species_map():
    from matdisc.models.inference import class_scores, segment_masked, segment_scored
    from matdisc.models.unet import UNet3D

    torch.manual_seed(0)
    unet = UNet3D(classes=[8, 11, 17], base_channels=4, depth=2).eval()
    with torch.no_grad():
        unet.mask_head.bias.fill_(2.0)  # most voxels occupied
    density = torch.rand(2, 1, 8, 8, 8)
    species, where, logits = segment_scored(unet, density)
    assert torch.equal(species, segment_masked(unet, density))
    per_grid = class_scores(where, logits, np.array([8, 11, 17]), 2, 8)
    for b, scores in enumerate(per_grid):
        grid = species[b].numpy().ravel()
        np.testing.assert_array_equal(np.sort(scores.index), np.flatnonzero(grid))
        np.testing.assert_allclose(scores.probs.sum(axis=1), 1.0, rtol=1e-5)
        top = np.array([8, 11, 17])[scores.probs.argmax(axis=1)]
        np.testing.assert_array_equal(top, grid[scores.index])


def test_sampled_reads_draw_each_orbit_in_proportion_and_pass_the_rule():
    """A rock salt whose cation orbit is K 0.5 / Na 0.3 / Ca 0.2 and anion orbit F 0.7 /
    O 0.3: draws follow the probabilities among the charge-balanced compositions (KF,
    NaF, CaO), never KO or CaF; the same generator seed gives the same draw."""
    structure = rocksalt(5.0, "K", "F")
    soft = soft_rows([{19: 5.0, 11: 3.0, 20: 2.0}] * 4 + [{9: 7.0, 8: 3.0}] * 4)
    seen: dict[str, int] = {}
    for i in range(400):
        picked = sampled(structure, soft, valid=strict, rng=np.random.default_rng([7, i]))
        assert picked.valid and strict(picked.structure.composition.reduced_formula)
        formula = picked.structure.composition.reduced_formula
        seen[formula] = seen.get(formula, 0) + 1
        assert (picked.rank == 0) == (formula == "KF")
    assert set(seen) == {"KF", "NaF", "CaO"}
    # P(KF) : P(NaF) : P(CaO) = 0.35 : 0.21 : 0.06 among the valid pairs
    total = sum(seen.values())
    np.testing.assert_allclose(
        [seen["KF"] / total, seen["NaF"] / total, seen["CaO"] / total],
        np.array([0.35, 0.21, 0.06]) / 0.62,
        atol=0.06,
    )
    again = [
        sampled(structure, soft, valid=strict, rng=np.random.default_rng([7, i])).structure
        for i in range(5)
    ]
    first = [
        sampled(structure, soft, valid=strict, rng=np.random.default_rng([7, i])).structure
        for i in range(5)
    ]
    assert [s.composition for s in again] == [s.composition for s in first]


def test_sampled_read_without_a_valid_draw_keeps_the_crystal():
    structure = rocksalt(5.0, "K", "O")
    soft = soft_rows([{19: 1.0}] * 4 + [{8: 1.0}] * 4)  # only K and O: never balanced
    picked = sampled(structure, soft, valid=strict, rng=np.random.default_rng(0), max_tries=5)
    assert picked.rank == -1 and not picked.valid
    assert picked.formula_unconstrained == "K2O2" and picked.structure == structure
