"""Sampling around base compounds with tiny randomly initialised models.

A real zarr voxel store (grid 16) of five cubic cells, a base-compounds table and
checkpoints of an untrained UNet and VAE stand in for the trained pipeline: the chain's
plumbing (draws, seeds, decoding, segmentation, inversion, reasons) does not need
trained weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Structure
from tiny_cases import cubic_cells

from matdisc.config import validate_config
from matdisc.errors import UserError
from matdisc.io import read_table, write_table
from matdisc.sample import latent
from matdisc.sample.stage import random_sampling_table, sample_structures
from matdisc.stage import StageCall

GRID = 16
PADDING = 0.25
SPLITS = ["train", "train", "train", "val", "test"]


def cells() -> list[Structure]:
    return cubic_cells(3)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from matdisc.models.unet import UNet3D
    from matdisc.models.vae import CondVAE3D
    from matdisc.train import save_model
    from matdisc.voxel import voxelize
    from matdisc.voxel.store import create_store, write_grids

    root = tmp_path_factory.mktemp("sample")
    structures = cells()
    vox = [voxelize(s, grid_size=GRID, padding=PADDING) for s in structures]
    n = len(structures)
    ef = np.array([-2.1, -2.2, -3.0, -3.5, -3.6])
    entries = {
        "material_id": np.array([f"mp-{i}" for i in range(n)]),
        "formula": np.array([s.composition.reduced_formula for s in structures]),
        "split": np.array(SPLITS),
        "structure_class": np.array(["binary_AB"] * 3 + ["perovskite_ABX3"] * 2),
        "structure_json": np.array([json.dumps(v.structure.as_dict()) for v in vox]),
        "e_form_ev_per_atom": ef,
        "decile": np.array([3, 2, 1, 0, -1], dtype=np.int64),  # the last one: unset
        "lattice": np.stack([v.lattice for v in vox]).astype(np.float32),
        "nsites": np.array([len(v.structure) for v in vox], dtype=np.int32),
        "spacegroup_number": np.array([225, 225, 225, 221, 221], dtype=np.int16),
    }
    edges = np.linspace(-3.2, -1.6, 9)
    store = root / "cubic.zarr"
    create_store(
        store,
        entries,
        GRID,
        {"grid_size": GRID, "padding": PADDING, "decile_edges": edges.tolist(),
         "elements_train": [8, 11, 12, 17, 19]},
    )  # fmt: skip
    write_grids(store, 0, np.stack([v.density for v in vox]), np.stack([v.species for v in vox]))

    bases = pd.DataFrame(
        {
            "base": ["SrTiO3", "NaCl", "CaTiO3", "Xe"],
            "material_id": ["mp-3", "mp-0", "mp-4", "mp-99"],
            "formula": ["SrTiO3", "NaCl", "CaTiO3", "Xe"],
            "formula_anonymous": ["ABC3", "AB", "ABC3", "A"],
            "structure_class": ["perovskite_ABX3", "binary_AB", "perovskite_ABX3", "other"],
            "spacegroup_number": [221, 225, 221, 225],
            "nsites": [5, 8, 5, 4],
            "e_form_ev_per_atom": [-3.5, -2.1, -3.6, 0.0],
            "split": ["train", "train", "val", "train"],
            "structure_json": [json.dumps(s.as_dict()) for s in structures[3:4] + structures[:1]]
            + [json.dumps(structures[4].as_dict())] * 2,
        }
    )
    write_table(bases, root / "bases.parquet", "base_compounds")

    torch.manual_seed(0)
    unet = UNet3D(classes=[8, 11, 12, 17, 19], base_channels=2, depth=2, density_scale=1.0)
    vae = CondVAE3D(grid_size=GRID, channels=[2, 4], latent_dim=8, coord_scale=10.0)
    for model in (unet, vae):
        model.eval()
    # An untrained mask head marks about half of all voxels: bias it towards few atoms.
    with torch.no_grad():
        unet.mask_head.bias.fill_(-0.3)
    save_model(root / "unet.pt", unet, extra={"grid_size": GRID, "padding": PADDING})
    save_model(root / "vae.pt", vae, extra={"grid_size": GRID, "padding": PADDING})
    return {"bases": root / "bases.parquet", "voxels": store, "unet": root / "unet.pt",
            "vae": root / "vae.pt", "root": root}  # fmt: skip


def sample_section(**kw) -> dict:
    section = dict(mode="targeted", n_samples=20, variance=0.5, batch_size=8,
                   interpolate_to=None, top_structure_types=10, species_reader="unet",
                   species_choice="argmax")  # fmt: skip
    section.update(kw)
    return section


def voxel_section() -> dict:
    section = {"padding": PADDING, "max_sites": 40, "inverse": {"merge_tolerance": 0.5}}
    return validate_config({"voxel": section})["voxel"]


def call_for(
    inputs: dict[str, Path],
    out: Path,
    base: str = "SrTiO3",
    seed: int = 7,
    bf16: bool = False,
    **kw,
) -> StageCall:
    return StageCall(
        settings={"seed": seed, "sample": sample_section(**kw), "voxel": voxel_section(),
                  "train": {"device": "cpu", "bf16": bf16}},
        inputs={k: inputs[k] for k in ("bases", "voxels", "unet", "vae")},
        outputs={"samples": out},
        threads=1,
        wildcards={"base": base},
    )  # fmt: skip


def test_sampling_is_reproducible_and_records_every_draw(inputs, tmp_path):
    sample_structures(call_for(inputs, tmp_path / "a.parquet"))
    sample_structures(call_for(inputs, tmp_path / "b.parquet", batch_size=3))
    sample_structures(call_for(inputs, tmp_path / "c.parquet", seed=8))
    a = read_table(tmp_path / "a.parquet", "samples")
    b = read_table(tmp_path / "b.parquet", "samples")
    c = read_table(tmp_path / "c.parquet", "samples")
    pd.testing.assert_frame_equal(a, b)  # same seed, another batch size: same samples
    assert not np.allclose(a["z_distance"], c["z_distance"])
    assert len(a) == 20 and a["sample_index"].tolist() == list(range(20))
    assert (a["decile"] == 0).all() and (a["mode"] == "targeted").all()
    # every draw has a structure or a reason, never both and never neither
    assert (a["structure_json"].isna() == a["reason"].notna()).all()
    ok = a[a["reason"].isna()]
    for _, row in ok.iterrows():
        s = Structure.from_dict(json.loads(row["structure_json"]))
        assert s.composition.reduced_formula == row["formula"]
        assert len(s) == row["n_sites"]
        assert s.lattice.abc == pytest.approx(
            (row["lattice_a_angstrom"], row["lattice_b_angstrom"], row["lattice_c_angstrom"])
        )


def true_maps_with_a_wrong_first_choice(inputs, monkeypatch) -> None:
    """The untrained UNet and VAE find no crystal: give the sampler the store's true
    species maps and cells instead, with class probabilities whose first choice is the next class (a wrong
    element) and whose second is the true one."""
    import matdisc.sample.generate as generate
    from matdisc.voxel.store import open_store

    store = open_store(inputs["voxels"])
    maps = np.asarray(store.species[:], dtype=np.int64)
    classes = torch.tensor([8, 11, 12, 17, 19])  # the fixture UNet's
    present = np.unique(maps[maps > 0])  # each element of the maps -> one of the classes
    lookup = np.zeros(256, dtype=np.int64)
    lookup[present] = classes.numpy()[np.arange(len(present)) % len(classes)]
    maps = torch.as_tensor(lookup[maps])

    def segment_scored(unet, density):
        species = maps[torch.arange(len(density)) % len(maps)].long()
        where = species.nonzero(as_tuple=True)
        true = torch.searchsorted(classes, species[where])
        logits = torch.zeros(len(true), len(classes))
        logits[torch.arange(len(true)), true] = 1.0
        logits[torch.arange(len(true)), (true + 1) % len(classes)] = 1.5
        wrong = classes[(true + 1) % len(classes)]
        out = torch.zeros_like(species)
        out[where] = wrong
        return out, where, logits

    lattices = torch.as_tensor(np.asarray(store.lattice, dtype=np.float64))

    def lattice_from_coords(coords, padding):
        return lattices[torch.arange(len(coords)) % len(lattices)]

    monkeypatch.setattr(generate, "segment_scored", segment_scored)
    monkeypatch.setattr(generate, "lattice_from_coords", lattice_from_coords)


def test_the_read_and_its_alternatives_are_recorded_and_charge_aware_keeps_positions(
    inputs, tmp_path, monkeypatch
):
    """Every structure records the formula as read, its strict validity and each orbit's
    alternatives; charge_aware changes only elements of invalid reads (same draws, same
    positions), and each changed structure passes the strict rule."""
    from matdisc.io.parquet import read_metadata
    from matdisc.stability.validity import is_valid

    true_maps_with_a_wrong_first_choice(inputs, monkeypatch)

    sample_structures(call_for(inputs, tmp_path / "a.parquet", n_samples=40))
    sample_structures(
        call_for(inputs, tmp_path / "c.parquet", n_samples=40, species_choice="charge_aware")
    )
    argmax = read_table(tmp_path / "a.parquet", "samples")
    aware = read_table(tmp_path / "c.parquet", "samples")
    ok = argmax["reason"].isna()
    assert ok.sum() > 5 and argmax.loc[ok, "choice_rank"].eq(0).all()
    assert (argmax.loc[ok, "formula_unconstrained"] == argmax.loc[ok, "formula"]).all()
    assert argmax.loc[~ok, ["formula_unconstrained", "choice_rank"]].isna().all().all()
    for text in argmax.loc[ok, "species_alternatives_json"]:
        orbits = json.loads(text)
        assert orbits and all(1 <= len(o["elements"]) <= 3 for o in orbits)
        assert all(o["probabilities"] == sorted(o["probabilities"], reverse=True)
                   for o in orbits)  # fmt: skip
    pd.testing.assert_series_equal(argmax["formula_unconstrained"], aware["formula_unconstrained"])
    changed = aware["choice_rank"].fillna(0) > 0
    assert (
        aware.loc[~changed, "formula"].fillna("") == argmax.loc[~changed, "formula"].fillna("")
    ).all()
    for (_, a), (_, b) in zip(argmax[changed].iterrows(), aware[changed].iterrows(), strict=True):
        assert is_valid(b["formula"], "strict") and not b["valid_unconstrained"]
        sa = Structure.from_dict(json.loads(a["structure_json"]))
        sb = Structure.from_dict(json.loads(b["structure_json"]))
        np.testing.assert_allclose(sa.frac_coords, sb.frac_coords)
    meta = read_metadata(tmp_path / "c.parquet")
    read = meta["species_read"]
    assert read["structures"] == int(ok.sum()) and read["changed"] == int(changed.sum())
    # the UNet's precision, train.bf16 as resolved, is on record; bf16 segments the same draws
    assert meta["inference_bf16"] is False
    sample_structures(call_for(inputs, tmp_path / "h.parquet", n_samples=40, bf16=True))
    assert read_metadata(tmp_path / "h.parquet")["inference_bf16"] is True
    half = read_table(tmp_path / "h.parquet", "samples")
    assert half["sample_index"].tolist() == argmax["sample_index"].tolist()
    assert half["reason"].isna().sum() > 5
    assert read["valid_after"] > read["valid_as_read"] and read["changed"] > 0


def test_sampled_species_are_seeded_per_draw_and_keep_positions(inputs, tmp_path, monkeypatch):
    """species_choice: sampled draws each orbit's element: the same seed gives the same
    samples whatever the threads, positions stay the argmax read's, every
    structure read passes the strict rule unless no draw did, and the draws spread over
    more compositions than the argmax read."""
    import dataclasses

    from matdisc.stability.validity import is_valid

    true_maps_with_a_wrong_first_choice(inputs, monkeypatch)
    sample_structures(call_for(inputs, tmp_path / "a.parquet", n_samples=40))
    sample_structures(
        call_for(inputs, tmp_path / "s.parquet", n_samples=40, species_choice="sampled")
    )
    other = call_for(inputs, tmp_path / "t.parquet", n_samples=40, species_choice="sampled")
    sample_structures(dataclasses.replace(other, threads=2))
    argmax = read_table(tmp_path / "a.parquet", "samples")
    drawn = read_table(tmp_path / "s.parquet", "samples")
    pd.testing.assert_series_equal(drawn["formula"], read_table(tmp_path / "t.parquet")["formula"])
    pd.testing.assert_series_equal(argmax["formula_unconstrained"], drawn["formula_unconstrained"])
    ok = drawn["reason"].isna()
    found = drawn.loc[ok & (drawn["choice_rank"] >= 0), "formula"]
    assert len(found) > 5 and all(is_valid(f, "strict") for f in found)
    assert drawn.loc[ok, "formula"].nunique() > argmax.loc[ok, "formula"].nunique()
    for (_, a), (_, b) in zip(argmax[ok].iterrows(), drawn[ok].iterrows(), strict=True):
        sa = Structure.from_dict(json.loads(a["structure_json"]))
        sb = Structure.from_dict(json.loads(b["structure_json"]))
        np.testing.assert_allclose(sa.frac_coords, sb.frac_coords)


def test_sampling_inverts_with_the_decoded_settings(inputs, tmp_path):
    from matdisc.sample.stage import load_chain
    from matdisc.voxel.store import open_store

    call = call_for(inputs, tmp_path / "a.parquet")
    call.settings["voxel"]["inverse"].update(min_region_voxels=3, decoded={"min_region_voxels": 12})
    gen = load_chain(call, open_store(inputs["voxels"]))
    assert gen.inverse_settings.min_region_voxels == 12
    assert not hasattr(gen.inverse_settings, "decoded")


def test_no_structure_counts_take_none_and_nan_as_structures():
    from matdisc.sample.stage import no_structure_counts

    # pandas keeps None in an all-None object column but may hold NaN after a concat
    frame = pd.DataFrame({"reason": [None, np.nan, "empty_grid", "too_many_sites", "empty_grid"]})
    counts = no_structure_counts(frame)
    assert counts == {"empty_grid": 2, "too_many_sites": 1}
    json.dumps(counts, sort_keys=True)  # the metadata write that failed on a NaN key


def test_random_mode_draws_equally_per_decile(inputs, tmp_path):
    draws = latent.random(8, 1000, latent.rng_for(1, "X"))
    assert np.bincount(draws.decile).tolist() == [100] * 10
    assert np.allclose(draws.condition.sum(axis=1), 1)
    sample_structures(call_for(inputs, tmp_path / "r.parquet", mode="random", n_samples=30))
    frame = read_table(tmp_path / "r.parquet", "samples")
    assert np.bincount(frame["decile"]).tolist() == [3] * 10


def test_targeted_draws_have_the_configured_variance():
    mu = np.linspace(-1, 1, 16)
    draws = latent.targeted(mu, 4, 20000, 0.5, latent.rng_for(0, "SrTiO3"))
    assert draws.z.mean(axis=0) == pytest.approx(mu, abs=0.03)
    assert draws.z.var(axis=0) == pytest.approx(np.full(16, 0.5), rel=0.05)
    assert (draws.decile == 4).all()


def test_interpolation_walks_from_base_to_target(inputs, tmp_path):
    sample_structures(call_for(inputs, tmp_path / "i.parquet", mode="interpolate", n_samples=5,
                 interpolate_to="MgO"))  # fmt: skip
    frame = read_table(tmp_path / "i.parquet", "samples")
    assert frame["t"].tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert frame["decile"].iloc[0] == 0 and frame["decile"].iloc[-1] == 1
    assert frame["z_distance"].iloc[0] == 0 and frame["z_distance"].is_monotonic_increasing


def test_unset_decile_comes_from_the_edges(inputs, tmp_path):
    sample_structures(call_for(inputs, tmp_path / "d.parquet", base="CaTiO3", n_samples=2))
    frame = read_table(tmp_path / "d.parquet", "samples")
    assert (frame["decile"] == 0).all()  # -3.6 eV/atom is below the first edge


@pytest.mark.parametrize(
    ("kw", "base", "words"),
    [
        ({}, "KCl", "not in the base compounds table"),
        ({}, "Xe", "not in the voxel store"),
        ({"n_samples": 0}, "SrTiO3", "sample.n_samples is 0"),
        ({"variance": 0.0}, "SrTiO3", "sample.variance is 0.0"),
        ({"variance": -1.0}, "SrTiO3", "positive variance"),
        ({"mode": "random", "n_samples": 15}, "SrTiO3", "multiple of 10"),
        ({"mode": "interpolate"}, "SrTiO3", "interpolate_to is not set"),
        ({"mode": "interpolate", "interpolate_to": "CeCrO3"}, "SrTiO3", "not a formula"),
    ],
)
def test_bad_requests_stop_with_one_sentence(inputs, tmp_path, kw, base, words):
    out = tmp_path / "x.parquet"
    with pytest.raises(UserError, match=words) as info:
        sample_structures(call_for(inputs, out, base=base, **kw))
    message = str(info.value)
    assert message.count(". ") == 0 and message.endswith(".")
    assert not out.exists()


def test_random_sampling_table():
    samples = pd.DataFrame(
        {
            "min_distance_angstrom": [1.0, 0.2, np.nan, 2.0, 1.5],
            "formula_anonymous": ["AB", "AB", None, "ABC3", "AB"],
        }
    )
    ef = np.array([-1.0, -2.0, np.nan, 0.5, -0.1])
    stats = random_sampling_table(samples, ef, min_distance=0.5, top=10).set_index("metric")
    assert stats.loc["valid", "count"] == 3 and stats.loc["valid", "fraction"] == 0.6
    assert stats.loc["negative_ef", "count"] == 2
    assert stats.loc["negative_ef", "fraction"] == pytest.approx(2 / 3)
    types = stats.loc["structure_type"]
    assert types["formula_anonymous"].tolist() == ["AB", "ABC3"]
    assert types["count"].tolist() == [2, 1]


def test_folded_batchnorm_gives_the_same_segmentation():
    from matdisc.models.inference import fold_batchnorm
    from matdisc.models.unet import UNet3D

    torch.manual_seed(1)
    unet = UNet3D(classes=[8, 11, 17], base_channels=2, depth=2).eval()
    for m in unet.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    folded = fold_batchnorm(unet)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    x = torch.rand(2, GRID, GRID, GRID)
    with torch.no_grad():
        assert torch.allclose(unet(x)[0], folded(x)[0], atol=1e-5)
        assert torch.equal(unet.segment(x), folded.segment(x))


def test_masked_segmentation_equals_the_unet_segment():
    from matdisc.models.inference import segment_masked
    from matdisc.models.unet import UNet3D

    torch.manual_seed(2)
    for channels_last in (False, True):
        unet = UNet3D(classes=[8, 11, 17, 19], base_channels=2, depth=2,
                      channels_last=channels_last).eval()  # fmt: skip
        x = torch.rand(3, GRID, GRID, GRID)
        with torch.no_grad():
            unet.mask_head.bias.fill_(0.0)
            logits = unet(x)[1].flatten()
            for q in (0.95, 0.5, 0.1):  # few, about half, most voxels occupied
                unet.mask_head.bias.fill_(-float(torch.quantile(logits, q)))
                expected = unet.segment(x)
                assert 0 < (expected > 0).sum() < expected.numel()
                assert torch.equal(segment_masked(unet, x), expected)


def test_species_channels_name_the_elements_the_unet_could_not(monkeypatch):
    """With a species-channel VAE the UNet only delimits atoms: a UNet that calls every
    atom K still gives NaCl when the decoded channels say Na and Cl."""
    from matdisc.models.unet import UNet3D
    from matdisc.models.vae import CondVAE3D
    from matdisc.sample import generate
    from matdisc.segment import InverseSettings
    from matdisc.segment.species import descriptor_grids
    from matdisc.voxel import coordinate_grid, voxelize

    rocksalt = voxelize(cells()[0], grid_size=GRID, padding=PADDING)
    assert rocksalt.structure.composition.reduced_formula == "NaCl"
    cell = rocksalt.cell
    channels = descriptor_grids(
        cell.lattice, cell.frac, cell.numbers, kind="table_position", grid_size=GRID,
        padding=PADDING,
    )  # fmt: skip
    torch.manual_seed(0)
    unet = UNet3D(classes=[8, 11, 12, 17, 19], base_channels=2, depth=2, density_scale=1.0)
    vae = CondVAE3D(
        grid_size=GRID, channels=[2, 4], latent_dim=8, species_channels="table_position"
    )
    settings = InverseSettings.from_config(voxel_section())
    gen = generate.Generator(
        vae=vae.eval(), unet=unet.eval(), padding=PADDING, inverse_settings=settings,
        species_reader="channels",
    )  # fmt: skip
    assert gen.reader == ("table_position", [8, 11, 12, 17, 19], None)
    # the UNet names the atoms unless asked otherwise; channels need a VAE that has them
    plain = CondVAE3D(grid_size=GRID, channels=[2, 4], latent_dim=8)
    assert (
        generate.Generator(vae=vae, unet=unet, padding=PADDING, inverse_settings=settings).reader
        is None
    )
    with pytest.raises(UserError, match="species_channels"):
        generate.Generator(
            vae=plain, unet=unet, padding=PADDING, inverse_settings=settings,
            species_reader="channels",
        )  # fmt: skip

    def decoded(z, condition):
        b = len(z)
        coords = torch.as_tensor(coordinate_grid(np.tile(rocksalt.lattice, (b, 1)), GRID, PADDING))
        return (
            torch.as_tensor(np.stack([rocksalt.density] * b)),
            coords,
            torch.as_tensor(np.stack([channels] * b)),
        )

    def all_potassium(_unet, density):
        species = torch.as_tensor(np.where(np.stack([rocksalt.mask] * len(density)), 19, 0))
        where = species.nonzero(as_tuple=True)
        logits = torch.zeros(len(where[0]), 5)
        logits[:, 4] = 1.0  # K, the fifth class
        return species, where, logits

    monkeypatch.setattr(gen.vae, "decode_all", decoded)
    monkeypatch.setattr(generate, "segment_scored", all_potassium)
    rows = gen.run(np.zeros((2, 8), np.float32), np.eye(10, dtype=np.float32)[[1, 2]])
    assert [r["formula"] for r in rows] == ["NaCl", "NaCl"]
    gen.reader = None  # the UNet's reading
    assert [r["formula"] for r in gen.run(np.zeros((1, 8), np.float32), np.eye(10)[[1]])] == ["K"]


def test_bf16_segmentation_agrees_with_fp32():
    """The UNet marked for bf16 (``train.bf16`` on AMX CPUs and bf16 GPUs) segments under
    autocast: float32 logits come back, and the maps differ from fp32 only where classes
    nearly tie; unmarked, the inference copy segments exactly as the model."""
    from matdisc.models.inference import inference_copy, segment_scored
    from matdisc.models.unet import UNet3D
    from matdisc.train.device import bf16_supported, inference_bf16

    torch.manual_seed(3)
    unet = UNet3D(classes=[8, 11, 17, 19], base_channels=4, depth=2).eval()
    x = torch.rand(3, GRID, GRID, GRID)
    fp32 = inference_copy(unet)
    bf16 = inference_copy(unet, bf16=True)
    assert not fp32.inference_bf16 and bf16.inference_bf16
    with torch.no_grad():
        expected = unet.segment(x)
        assert torch.equal(segment_scored(fp32, x)[0], expected)
        species, _, logits = segment_scored(bf16, x)
    assert logits.dtype == torch.float32
    assert (species == expected).float().mean() > 0.9
    # the config decides: booleans as given, auto where bf16 hardware backs it
    assert inference_bf16({"bf16": False, "device": "cpu"}) is False
    assert inference_bf16({"bf16": True, "device": "cpu"}) is True
    assert inference_bf16({"bf16": "auto", "device": "cpu"}) is bf16_supported(torch.device("cpu"))


def test_bf16_decoding_agrees_with_fp32():
    """The VAE marked for bf16 decodes under autocast inside ``run_autocast`` (float32
    grids come back, close to fp32); unmarked, the inference copy decodes as the model."""
    from matdisc.models.inference import inference_copy, run_autocast
    from matdisc.models.vae import CondVAE3D

    torch.manual_seed(5)
    vae = CondVAE3D(grid_size=GRID, channels=[2, 4], latent_dim=8).eval()
    z, condition = torch.randn(4, 8), torch.eye(10)[[1, 2, 3, 4]]
    fp32, bf16 = inference_copy(vae), inference_copy(vae, bf16=True)
    with torch.no_grad():
        expected = vae.decode_normalised(z, condition)
        with run_autocast(fp32):
            plain = fp32.decode_normalised(z, condition)
        with run_autocast(bf16):
            half = bf16.decode_normalised(z, condition)
            density, coords = bf16.decode(z, condition)
            inside = torch.is_autocast_enabled("cpu")
    assert inside and not torch.is_autocast_enabled("cpu")
    torch.testing.assert_close(plain, expected, rtol=1e-4, atol=1e-5)
    assert density.dtype == coords.dtype == torch.float32 and half.dtype == torch.bfloat16
    r = torch.corrcoef(torch.stack([half.float().flatten(), expected.flatten()]))[0, 1]
    assert r > 0.99
