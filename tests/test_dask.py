"""dask: a running dask.distributed cluster gives the same results as the local scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from matdisc.config import validate_config
from matdisc.errors import UserError
from matdisc.filters.funnel import min_distances
from matdisc.io import write_table
from matdisc.parallel import dask_compute
from matdisc.voxel.stage import build_store
from matdisc.voxel.store import open_store


@pytest.fixture(scope="module")
def cluster_address() -> Iterator[str]:
    """A two-process dask.distributed cluster on this machine (as dask-jobqueue would give)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


@pytest.mark.slow
def test_distributed_voxel_store_equals_local(
    tmp_path: Path, tiny_table: pd.DataFrame, cluster_address: str
) -> None:
    table = tmp_path / "structures.parquet"
    write_table(tiny_table, table, "structures")
    settings = validate_config({})["voxel"]
    build_store(table, tmp_path / "local.zarr", settings, threads=2)
    build_store(table, tmp_path / "cluster.zarr", settings, threads=2, address=cluster_address)
    local, remote = open_store(tmp_path / "local.zarr"), open_store(tmp_path / "cluster.zarr")
    assert len(local) == len(remote) > 40
    assert list(local.material_id) == list(remote.material_id)
    assert np.array_equal(local.decile, remote.decile)
    assert np.array_equal(local.decile_edges, remote.decile_edges)
    assert np.array_equal(local.lattice, remote.lattice)
    assert np.array_equal(local.species[:], remote.species[:])
    assert np.array_equal(local.density[:], remote.density[:])


@pytest.mark.slow
def test_distributed_filter_distances_equal_local(cluster_address: str) -> None:
    rng = np.random.default_rng(0)
    structures = [
        Structure(Lattice.cubic(a), ["Na", "Cl", "K"], rng.random((3, 3))).to_json()
        for a in rng.uniform(2.5, 6.0, 40)
    ]
    structures[5] = ""  # a sample without a structure: NaN, not dropped
    local = min_distances(structures, threads=2)
    remote = min_distances(structures, threads=2, address=cluster_address)
    assert local.shape == remote.shape == (40,)
    assert np.isnan(local[5]) and np.isnan(remote[5])
    assert np.array_equal(local, remote, equal_nan=True)


@pytest.mark.slow  # the client waits for its 30 s connection time-out
def test_unreachable_scheduler_is_one_clear_sentence() -> None:
    from dask import delayed

    with pytest.raises(UserError, match=r"cannot reach the dask scheduler at tcp://127\.0\.0\.1:9"):
        dask_compute([delayed(sum)([1, 2])], address="tcp://127.0.0.1:9")
