"""The latent-space map on a tiny voxel store (grid 16, six cubic cells) and an untrained
VAE: the map's plumbing (encode, PCA, the stage's draws, the figure) needs no trained
weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Structure
from tiny_cases import cubic_cells

from matdisc.report.latent import latent_map
from matdisc.voxel.store import open_store

GRID = 16
PADDING = 0.25


def cells() -> list[Structure]:
    return cubic_cells(4)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from matdisc.models.vae import CondVAE3D
    from matdisc.train import save_model
    from matdisc.voxel import voxelize
    from matdisc.voxel.store import create_store, write_grids

    root = tmp_path_factory.mktemp("latent")
    structures = cells()
    vox = [voxelize(s, grid_size=GRID, padding=PADDING) for s in structures]
    n = len(structures)
    entries = {
        "material_id": np.array([f"mp-{i}" for i in range(n)]),
        "formula": np.array([s.composition.reduced_formula for s in structures]),
        "split": np.array(["train", "train", "train", "val", "train", "test"]),
        "structure_class": np.array(["binary_AB"] * 4 + ["perovskite_ABX3"] * 2),
        "structure_json": np.array([json.dumps(v.structure.as_dict()) for v in vox]),
        # the last: no formation energy, so no decile to condition on (left out)
        "e_form_ev_per_atom": np.array([-2.1, -2.2, -3.0, -3.1, -3.5, np.nan]),
        "decile": np.array([3, 2, 1, -1, 0, -1], dtype=np.int64),  # mp-3: from the edges
        "lattice": np.stack([v.lattice for v in vox]).astype(np.float32),
        "nsites": np.array([len(v.structure) for v in vox], dtype=np.int32),
        "spacegroup_number": np.array([225] * 4 + [221] * 2, dtype=np.int16),
    }
    store = root / "cubic.zarr"
    create_store(
        store,
        entries,
        GRID,
        {"grid_size": GRID, "padding": PADDING, "decile_edges": np.linspace(-3.2, -1.6, 9).tolist(),
         "elements_train": [8, 11, 12, 17, 19]},
    )  # fmt: skip
    write_grids(store, 0, np.stack([v.density for v in vox]), np.stack([v.species for v in vox]))
    torch.manual_seed(0)
    vae = CondVAE3D(grid_size=GRID, channels=[2, 4], latent_dim=8, coord_scale=10.0).eval()
    save_model(root / "vae.pt", vae, extra={"grid_size": GRID, "padding": PADDING})
    return {"voxels": store, "vae": root / "vae.pt"}


def test_latent_map_writes_a_png_and_its_facts(inputs, tmp_path):
    settings = {
        "seed": 7,
        "sample": {"mode": "targeted", "n_samples": 30, "variance": 0.5},
        "train": {"device": "cpu"},
    }
    # the base compounds table names the material each base starts from
    from matdisc.io import write_table

    store = open_store(inputs["voxels"])
    rows = []
    for base, mid in (("SrTiO3", "mp-4"), ("NaCl", "mp-0")):
        i = int(np.flatnonzero(store.material_id == mid)[0])
        rows.append(
            {"base": base, "material_id": mid, "formula": base, "formula_anonymous": "-",
             "structure_class": str(store.structure_class[i]), "spacegroup_number": 225,
             "nsites": int(store.nsites[i]), "e_form_ev_per_atom": float(store.e_form_ev_per_atom[i]),
             "split": str(store.split[i]), "structure_json": "{}"}
        )  # fmt: skip
    write_table(pd.DataFrame(rows), tmp_path / "bases.parquet", "base_compounds")
    out = tmp_path / "map" / "latent.png"
    facts = latent_map(
        vae_path=inputs["vae"],
        voxels=inputs["voxels"],
        bases=["SrTiO3", "NaCl"],
        n_draws=20,
        seed_section=settings,
        out_png=out,
        bases_table=tmp_path / "bases.parquet",
    )
    assert out.read_bytes().startswith(b"\x89PNG")
    assert not list(out.parent.glob(".*"))  # no temporary file left behind
    assert facts["n_structures"] == 5 and facts["n_fit"] == 5
    ratio = facts["explained_variance"]
    assert len(ratio) == 2 and all(0 <= r <= 1 for r in ratio) and sum(ratio) <= 1 + 1e-9
    assert facts["bases"]["SrTiO3"]["material_id"] == "mp-4"
    assert facts["bases"]["NaCl"]["material_id"] == "mp-0"
    for base in facts["bases"].values():
        assert base["n_draws"] == 20
        assert base["mean_draw_distance_pc_plane"] > 0
        # the plane is a projection: draws are never farther there than in the latent space
        assert base["mean_draw_distance_pc_plane"] <= base["mean_draw_distance_latent"]
