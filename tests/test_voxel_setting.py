"""One setting per crystal (matdisc.voxel.setting): any origin and orientation of a cubic
crystal give the same canonical cell, hence the same map; the store builds it when asked."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from tiny_cases import structures_row

from matdisc.config import validate_config
from matdisc.io import write_table
from matdisc.stage import StageCall
from matdisc.voxel.cell import CubicCell
from matdisc.voxel.core import voxelize_cell
from matdisc.voxel.setting import POINT_OPERATIONS, canonical_setting
from matdisc.voxel.stage import voxelize_structures
from matdisc.voxel.store import open_store

FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def _cell(a: float, basis: list[tuple[int, list[float]]], centring: np.ndarray) -> CubicCell:
    numbers = np.array([z for z, _ in basis for _ in centring])
    frac = np.array([(np.asarray(p) + t) % 1.0 for _, p in basis for t in centring])
    return CubicCell(np.full(3, a), frac, numbers, "as_given")


def half_heusler() -> CubicCell:
    """ZrCoBi: Zr 4a, Co 4c, Bi 4b, the 4d holes empty."""
    return _cell(6.1, [(40, [0, 0, 0]), (27, [0.25] * 3), (83, [0.5] * 3)], FCC)


def moved(cell: CubicCell, shift: np.ndarray, operation: np.ndarray) -> CubicCell:
    """The same crystal in another setting: shifted, then turned by a point operation."""
    frac = ((cell.frac + shift) @ operation.T) % 1.0
    order = np.random.default_rng(0).permutation(len(cell))
    return CubicCell(cell.lattice, frac[order], cell.numbers[order], cell.method)


CRYSTALS = {
    "half_heusler": half_heusler,
    "perovskite": lambda: _cell(
        3.9,
        [
            (38, [0, 0, 0]),
            (22, [0.5] * 3),
            (8, [0.5, 0.5, 0]),
            (8, [0.5, 0, 0.5]),
            (8, [0, 0.5, 0.5]),
        ],
        np.zeros((1, 3)),
    ),
}


def _b20(x_fe: float = 0.137, x_si: float = 0.842) -> CubicCell:
    """FeSi (B20, P2_13): 4a orbits (x, x, x) of Fe and Si."""

    def orbit(x: float) -> list[list[float]]:
        return [
            [x, x, x],
            [0.5 + x, 0.5 - x, -x],
            [-x, 0.5 + x, 0.5 - x],
            [0.5 - x, -x, 0.5 + x],
        ]

    frac = np.array(orbit(x_fe) + orbit(x_si)) % 1.0
    return CubicCell(np.full(3, 4.49), frac, np.array([26] * 4 + [14] * 4), "as_given")


CRYSTALS["fesi_b20"] = _b20  # P2_13 with free x: no inversion, no 4-fold axis


def _same_sites(a: CubicCell, b: CubicCell) -> bool:
    return np.array_equal(a.numbers, b.numbers) and np.allclose(
        np.round(a.frac, 6) % 1.0, np.round(b.frac, 6) % 1.0, atol=1e-6
    )


@pytest.mark.parametrize("name", sorted(CRYSTALS))
def test_every_setting_of_a_crystal_gives_one_cell_and_one_map(name):
    cell = CRYSTALS[name]()
    reference = canonical_setting(cell)
    rng = np.random.default_rng(1)
    for k in range(24):
        shift = cell.frac[rng.integers(len(cell))] if k % 2 else rng.random(3)
        other = canonical_setting(moved(cell, shift, POINT_OPERATIONS[rng.integers(48)]))
        assert _same_sites(other, reference), (name, k)
    grid = dict(grid_size=16)
    a = voxelize_cell(reference, **grid).density
    b = voxelize_cell(
        canonical_setting(moved(cell, np.array([0.3, 0.1, 0.7]), POINT_OPERATIONS[13])), **grid
    ).density
    assert np.allclose(a, b, atol=1e-5 * a.max())


def test_the_settings_themselves_differ():
    """Without the canonical setting the half-Heusler's two orientations are different maps
    (so the test above can fail): inversion swaps its filled and empty holes."""
    cell = half_heusler()
    inverted = moved(cell, np.zeros(3), -np.eye(3))
    assert not _same_sites(inverted, cell)
    grid = dict(grid_size=16)
    assert not np.allclose(
        voxelize_cell(cell, **grid).density, voxelize_cell(inverted, **grid).density
    )


def test_a_half_heusler_has_its_heaviest_atom_at_the_origin_and_its_holes_at_one_place():
    for operation in (np.eye(3), -np.eye(3)):
        cell = canonical_setting(moved(half_heusler(), np.array([0.25] * 3), operation))
        bi = cell.frac[cell.numbers == 83]
        assert np.allclose(bi[0], 0.0)  # sorted by element, then position
        # Co fills the (¾, ¾, ¾) set from Bi, Zr sits at (½, ½, ½): the 4c set (¼, ¼, ¼) is empty.
        co = cell.frac[cell.numbers == 27]
        assert np.allclose(np.sort(co.sum(axis=1) % 1.0), 0.25)  # ¾·3 = 9/4 ≡ ¼, never ¾
        zr = cell.frac[cell.numbers == 40]
        assert np.allclose(zr.sum(axis=1) % 1.0, 0.5)


def test_the_point_operations_are_the_48_of_the_cube():
    ops = {tuple(op.astype(int).ravel()) for op in POINT_OPERATIONS}
    assert len(ops) == 48 and tuple(np.eye(3, dtype=int).ravel()) == tuple(
        POINT_OPERATIONS[0].astype(int).ravel()
    )
    for op in POINT_OPERATIONS:
        assert np.allclose(op @ op.T, np.eye(3))


def test_the_store_built_in_the_canonical_setting_holds_canonical_cells(tmp_path):
    structure = half_heusler().to_structure()
    inverted = moved(half_heusler(), np.array([0.5, 0.0, 0.0]), -np.eye(3)).to_structure()
    rows = [
        structures_row(
            "mp-1", structure, system="cubic", spacegroup=216, split="train", e_form=-0.5
        ),
        structures_row(
            "mp-2", inverted, system="cubic", spacegroup=216, split="train", e_form=-0.4
        ),
    ]
    path = tmp_path / "structures.parquet"
    write_table(pd.DataFrame(rows), path, "structures")
    maps = {}
    for setting in ("as_given", "canonical"):
        settings = validate_config({"voxel": {"setting": setting}})
        out = tmp_path / setting / "cubic.zarr"
        voxelize_structures(
            StageCall(
                settings={"voxel": settings["voxel"], "dask": settings["dask"]},
                inputs={"structures": path},
                outputs={"voxels": out},
                threads=1,
            )
        )
        maps[setting] = np.asarray(open_store(out).density[:])
    assert not np.allclose(maps["as_given"][0], maps["as_given"][1], atol=1e-3)
    assert np.allclose(
        maps["canonical"][0], maps["canonical"][1], atol=1e-5 * maps["canonical"].max()
    )


def test_the_tetrahedral_rotations_keep_the_empty_holes_and_the_others_swap_them():
    from matdisc.voxel.augment import ROTATIONS, TETRAHEDRAL_ROTATIONS, apply_rotation
    from matdisc.voxel.grid import index_of_fraction

    cell = canonical_setting(half_heusler())
    grid = voxelize_cell(cell, grid_size=24)
    sets = [(FCC + 0.25) % 1.0, (FCC + 0.75) % 1.0]

    def at(density, frac):
        idx = np.round(index_of_fraction(frac, 24, 0.25)).astype(int)
        return density[idx[:, 0], idx[:, 1], idx[:, 2]].mean()

    before = [at(grid.density, s) for s in sets]
    assert before[0] < 0.3 * before[1]  # the ¼ set is the empty one
    for index in range(len(ROTATIONS)):
        (turned,) = apply_rotation(index, grid.density)
        after = [at(turned, s) for s in sets]
        kept = after[0] < 0.3 * after[1]
        assert kept == (index in TETRAHEDRAL_ROTATIONS), index
    assert len(TETRAHEDRAL_ROTATIONS) == 12


def test_the_vae_trains_a_canonical_store_with_the_tetrahedral_rotations_only():
    from matdisc.models.data import VAEDataset, VoxelSplit
    from matdisc.voxel.augment import TETRAHEDRAL_ROTATIONS

    grid = voxelize_cell(canonical_setting(half_heusler()), grid_size=16)
    split = VoxelSplit(
        index=np.arange(1),
        material_id=np.array(["mp-1"]),
        density=grid.density[None],
        species=grid.species[None],
        lattice=grid.lattice[None].astype(np.float32),
        decile=np.array([3]),
        grid_size=16,
        padding=0.25,
    )
    assert VAEDataset(split, augment=True).rotations is None
    canonical = VAEDataset(dataclasses.replace(split, setting="canonical"), augment=True)
    assert canonical.rotations == TETRAHEDRAL_ROTATIONS
    drawn = set(_draws(canonical))
    assert drawn <= set(TETRAHEDRAL_ROTATIONS) and len(drawn) > 6


def _draws(dataset, n: int = 200) -> list[int]:
    from matdisc.voxel.augment import draw_rotation

    rng = np.random.default_rng(0)
    return [draw_rotation(rng, dataset.rotations) for _ in range(n)]
