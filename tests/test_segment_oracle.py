"""The oracle round trip on the real snapshot: voxelize -> true S -> invert (issue 3)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from matdisc.config import validate_config
from matdisc.segment import InverseSettings, invert, lattice_from_coords
from matdisc.segment.metrics import lattice_mae, site_emd
from matdisc.voxel.cell import arrays_from_dict, conventional_cubic
from matdisc.voxel.core import check_cell, voxelize_cell
from matdisc.voxel.errors import VoxelizeError


@pytest.mark.slow
def test_oracle_round_trip_on_every_cubic_snapshot_structure(snapshot_table):
    vox = validate_config({})["voxel"]
    grid = {
        k: vox[k] for k in ("grid_size", "padding", "label_fraction", "min_label_radius_voxels")
    }
    # true species maps: regions by species
    settings = replace(InverseSettings.from_config(vox), regions="species")
    cubic = snapshot_table[snapshot_table["crystal_system"] == "cubic"]
    assert len(cubic) > 1000
    exact, emds, maes, skipped = [], [], [], []
    for text in cubic["structure_json"]:
        try:
            cell = conventional_cubic(*arrays_from_dict(json.loads(text)))
            check_cell(cell, max_sites=vox["max_sites"])
        except VoxelizeError as exc:
            skipped.append(exc.reason)
            continue
        result = voxelize_cell(cell, **grid)
        abc = lattice_from_coords(result.coords, grid["padding"])
        inverse = invert(
            result.species, lattice_abc=abc, padding=grid["padding"], settings=settings
        )
        ok = inverse.structure is not None and sorted(inverse.numbers.tolist()) == sorted(
            cell.numbers.tolist()
        )
        exact.append(ok)
        if inverse.structure is not None:
            emds.append(site_emd(inverse.structure, result.structure))
        maes.append(lattice_mae(abc, result.lattice))
    # Only cells above max_sites are skipped; every other cubic structure is voxelized.
    assert set(skipped) <= {"too_many_sites"}
    assert len(exact) > 1000
    assert np.mean(exact) >= 0.99
    assert np.mean(emds) <= 0.03
    assert np.mean(maes) <= 0.02
