"""The voxelize-structures stage: selection with counted skips, deciles on train only, the store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from tiny_cases import structures_row

from matdisc.config import validate_config
from matdisc.io import write_table
from matdisc.parallel import dask_compute
from matdisc.stage import StageCall
from matdisc.voxel import voxelize
from matdisc.voxel.stage import assign_deciles, decile_edges, voxelize_structures
from matdisc.voxel.store import open_store


def _row(mid: str, structure: Structure, system: str, split: str, e_form: float) -> dict:
    return structures_row(mid, structure, system=system, spacegroup=225, split=split, e_form=e_form)


def _fcc(a: float, elements: list[str], coords: list[list[float]]) -> Structure:
    """60° primitive cell of an fcc crystal with one atom per basis position (as MP stores it)."""
    matrix = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    frac = np.linalg.solve(matrix.T, a * np.asarray(coords, dtype=float).T).T % 1.0
    return Structure(Lattice(matrix), elements, frac)


@pytest.fixture
def structures_table(tmp_path):
    rng = np.random.default_rng(5)
    big = Structure(Lattice.cubic(11.0), ["O"] * 44, rng.random((44, 3)))  # 44 sites, P
    rows = [
        _row(
            "mp-1", _fcc(5.64, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), "cubic", "train", -2.1
        ),
        _row(
            "mp-2",
            Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3]),
            "cubic",
            "train",
            -2.2,
        ),
        _row("mp-3", _fcc(6.29, ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), "cubic", "train", -2.2),
        _row(
            "mp-4",
            Structure(
                Lattice.cubic(3.905),
                ["Sr", "Ti", "O", "O", "O"],
                [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
            ),
            "cubic",
            "val",
            -3.4,
        ),
        _row(
            "mp-5",
            _fcc(5.95, ["Cu", "Cu", "Mn", "Al"], [[0.25] * 3, [0.75] * 3, [0, 0, 0], [0.5] * 3]),
            "cubic",
            "test",
            np.nan,
        ),
        _row(
            "mp-6",
            Structure(Lattice.tetragonal(4, 5), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]),
            "tetragonal",
            "train",
            -1.0,
        ),
        _row("mp-7", _fcc(5.0, ["Es", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]), "cubic", "train", -1.0),
        _row("mp-8", big, "cubic", "train", -1.0),
        _row(
            "mp-9",
            Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]),
            "cubic",
            "train",
            -0.1,
        ),
        _row(
            "mp-10",
            _fcc(5.46, ["Ca", "F", "F"], [[0, 0, 0], [0.25] * 3, [0.75] * 3]),
            "cubic",
            "train",
            -4.0,
        ),
    ]
    path = tmp_path / "structures.parquet"
    write_table(pd.DataFrame(rows), path, "structures")
    return path


def test_stage_writes_the_store_with_counted_skips(structures_table, tmp_path):
    settings = validate_config({})
    out = tmp_path / "voxels" / "cubic.zarr"
    call = StageCall(
        settings={"voxel": settings["voxel"], "dask": settings["dask"]},
        inputs={"structures": structures_table},
        outputs={"voxels": out},
        threads=2,
    )
    voxelize_structures(call)
    store = open_store(out)
    assert list(store.material_id) == ["mp-1", "mp-2", "mp-3", "mp-4", "mp-5", "mp-10"]
    assert store.material_id.dtype.kind == "U"
    assert store.attrs["skipped"] == {
        "not_cubic_crystal_system": 1,
        "no_radius": 1,
        "too_many_sites": 1,
        "disordered": 1,
    }
    assert len(store) == 6 and store.grid_size == 32 and store.padding == 0.25
    assert store.density.shape == (6, 32, 32, 32) and store.density.dtype == np.float32
    assert store.species.shape == (6, 32, 32, 32) and store.species.dtype == np.uint8
    assert list(store.split) == ["train", "train", "train", "val", "test", "train"]
    # Decile edges come from the train split only (mp-1, 2, 3, 10), not from val/test.
    train_e = np.array([-2.1, -2.2, -2.2, -4.0])
    assert np.allclose(store.decile_edges, np.quantile(train_e, np.arange(1, 10) / 10))
    assert store.decile.dtype == np.int64
    assert store.decile[4] == -1  # unknown formation energy
    # -3.4 eV/atom lies between the first two edges (-3.46, -2.92): decile 1.
    assert store.decile_edges[0] < -3.4 < store.decile_edges[1]
    assert store.decile[3] == 1
    assert store.elements() == [9, 11, 17, 19, 20, 55]
    assert np.allclose(store.lattice[:, 0], [5.64, 4.12, 6.29, 3.905, 5.95, 5.46], atol=1e-4)
    assert list(store.nsites) == [8, 2, 8, 5, 16, 12]
    # Entry grids are those of voxelize(); the stored cell is the voxelized one.
    ref = voxelize(store.structure(4))
    assert np.array_equal(np.asarray(store.species[4]), ref.species)
    assert np.allclose(np.asarray(store.density[4]), ref.density, rtol=1e-5, atol=1e-6)
    assert np.array_equal(store.mask(4), ref.species > 0)
    assert np.allclose(store.coords(4), ref.coords)
    assert store.structure(4).composition.reduced_formula == "MnAlCu2"
    # read in one pass, in the order asked for, repeats included
    many = store.structures([5, 1, 4, 1])
    assert [s.composition.reduced_formula for s in many] == [
        store.structure(i).composition.reduced_formula for i in (5, 1, 4, 1)
    ]
    assert many[2] == store.structure(4) and store.structures([]) == []


def test_nothing_to_voxelize_is_a_user_error(tmp_path):
    from matdisc.errors import UserError

    row = _row(
        "mp-6",
        Structure(Lattice.tetragonal(4, 5), ["Na"], [[0, 0, 0]]),
        "tetragonal",
        "train",
        -1.0,
    )
    path = tmp_path / "s.parquet"
    write_table(pd.DataFrame([row]), path, "structures")
    settings = validate_config({})
    call = StageCall(
        settings={"voxel": settings["voxel"], "dask": settings["dask"]},
        inputs={"structures": path},
        outputs={"voxels": tmp_path / "v.zarr"},
    )
    with pytest.raises(UserError, match="none of the"):
        voxelize_structures(call)
    assert not (tmp_path / "v.zarr").exists()


def test_deciles():
    edges = decile_edges(np.array([np.nan, *range(100)], dtype=float))
    assert np.allclose(edges, np.quantile(np.arange(100), np.arange(1, 10) / 10))
    deciles = assign_deciles(np.array([-1.0, 5.0, 50.0, 99.0, np.nan]), edges)
    assert list(deciles) == [0, 0, 5, 9, -1]
    assert list(assign_deciles(np.array([1.0]), decile_edges(np.array([np.nan])))) == [-1]


def test_dask_compute_local_schedulers_keep_order():
    import dask

    tasks = [dask.delayed(pow)(i, 2) for i in range(7)]
    assert dask_compute(tasks, 2) == [i * i for i in range(7)]
    assert dask_compute(tasks, 1, scheduler="synchronous") == [i * i for i in range(7)]
    assert dask_compute([], 2) == []


def test_partial_stores_of_killed_runs_are_removed(tmp_path) -> None:
    """A SIGKILLed voxelization leaves `.cubic.zarr.tmp-PID`; the next run removes it, but
    never the partial store of a process that still runs."""
    import subprocess
    import sys

    from matdisc.voxel.stage import remove_stale_partials

    target = tmp_path / "cubic.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".cubic.zarr.tmp-{int(dead.stdout)}"
    (stale / "density").mkdir(parents=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        running = tmp_path / f".cubic.zarr.tmp-{alive.pid}"
        running.mkdir()
        assert remove_stale_partials(target) == [stale]
        assert not stale.exists() and running.exists()
    finally:
        alive.kill()
        alive.wait()
