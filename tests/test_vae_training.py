"""UNet/VAE training: resume reproduces an uninterrupted run; the stages end to end.

A small in-memory voxel store of real rock-salt, CsCl and perovskite cells (grid 16)
stands in for ``results/voxels/cubic.zarr``; it has the store's attributes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_cases import loop_config

from matdisc.config import validate_config
from matdisc.errors import UserError
from matdisc.io import read_table
from matdisc.models import stage, training
from matdisc.models.data import (
    UNetDataset,
    VAEDataset,
    coords_of,
    load_split,
    onehot,
    substitution_for,
)
from matdisc.stage import StageCall
from matdisc.train import load_model
from matdisc.voxel.radii import DEFAULT_TABLE, table_sha256

GRID = 16
PADDING = 0.25
#: The schema's defaults, the base of every config section these tests pass.
DEFAULTS = validate_config({})


def _structures():
    from pymatgen.core import Lattice, Structure

    rock = [("Na", "Cl", 5.64), ("K", "Cl", 6.29), ("Mg", "O", 4.21), ("Na", "F", 4.63)]
    cscl = [("Cs", "Cl", 4.12), ("Cs", "Br", 4.29)]
    perov = [("Sr", "Ti", 3.905), ("Ba", "Ti", 4.00), ("Ca", "Ti", 3.84), ("Sr", "Zr", 4.15)]
    out = []
    for a, b, length in rock:
        out.append(
            Structure.from_spacegroup(
                "Fm-3m", Lattice.cubic(length), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]
            )
        )
    for a, b, length in cscl:
        out.append(
            Structure.from_spacegroup(
                "Pm-3m", Lattice.cubic(length), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]
            )
        )
    for a, b, length in perov:
        out.append(
            Structure.from_spacegroup(
                "Pm-3m",
                Lattice.cubic(length),
                [a, b, "O"],
                [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]],
            )
        )
    return out


@dataclass
class FakeStore:
    """The attributes of ``matdisc.voxel.store.VoxelStore`` the models read."""

    material_id: np.ndarray
    formula: np.ndarray
    split: np.ndarray
    decile: np.ndarray
    decile_edges: np.ndarray
    lattice: np.ndarray
    density: np.ndarray
    species: np.ndarray
    grid_size: int
    padding: float
    cells: list
    attrs: dict
    path: Path = Path("cubic.zarr")

    def __len__(self) -> int:
        return len(self.material_id)

    def elements(self) -> list[int]:
        train = self.species[self.split == "train"]
        return sorted(int(z) for z in np.unique(train) if z)

    def structure(self, index: int):
        return self.cells[index]

    def structures(self, indices) -> list:
        return [self.cells[int(i)] for i in indices]


@pytest.fixture(scope="module")
def store():
    from matdisc.voxel import voxelize

    structures = _structures()
    results = [voxelize(s, grid_size=GRID, padding=PADDING) for s in structures]
    n = len(structures)
    split = np.array(["train"] * 7 + ["val"] * 3)
    # Val holds the same chemistry classes as train (NaF rock salt, CsBr, SrZrO3).
    order = [0, 1, 2, 4, 6, 7, 8, 3, 5, 9]
    store = FakeStore(
        material_id=np.array([f"mp-{i}" for i in order]),
        formula=np.array([structures[i].composition.reduced_formula for i in order]),
        split=split,
        decile=np.array([i % 10 for i in range(n)], dtype=np.int64),
        decile_edges=np.linspace(-3, 0, 9),
        lattice=np.stack([results[i].lattice for i in order]).astype(np.float32),
        density=np.stack([results[i].density for i in order]),
        species=np.stack([results[i].species for i in order]),
        grid_size=GRID,
        padding=PADDING,
        cells=[results[i].structure for i in order],
        attrs={
            "label_fraction": 0.6,
            "min_label_radius_voxels": 1.0,
            "radius_table_sha256": table_sha256(DEFAULT_TABLE),
        },
    )
    return store


def unet_section(**kw):
    """The schema's ``unet`` defaults (so new keys reach the test), sized for 16³ maps."""
    section = dict(DEFAULTS["unet"])
    section.update(
        base_channels=2,
        depth=2,
        epochs=2,
        lr=1e-2,
        batch_size=3,
        patience=None,
        max_minutes=None,
        channels_last=False,
    )
    section.update(kw)
    return section


def vae_section(**kw):
    """The schema's ``vae`` defaults, sized for 16³ maps."""
    section = dict(DEFAULTS["vae"])
    section.update(
        channels=[4, 8], latent_dim=8, epochs=2, batch_size=3, patience=3, max_minutes=None
    )
    section.update(kw)
    return section


def test_datasets_items(store):
    train = load_split(store, "train")
    classes = store.elements()
    density, target, mask = UNetDataset(train, classes, augment=True)[0]
    assert density.shape == (1, GRID, GRID, GRID) and target.dtype == torch.long
    assert mask.shape == (GRID,) * 3 and torch.equal(mask > 0, target != 0)
    d, c, onehot, abc = VAEDataset(train, augment=True)[1]
    assert d.shape == (1, GRID, GRID, GRID) and c.shape == (3, GRID, GRID, GRID)
    assert onehot.sum() == 1 and onehot.argmax() == train.decile[1]
    # unknown deciles: left out, or kept with an all-zero condition when asked
    unknown = dataclasses.replace(train, decile=np.where(np.arange(len(train)) % 2, -1, 3))
    assert len(VAEDataset(unknown, augment=False)) == (len(train) + 1) // 2
    kept = VAEDataset(unknown, augment=False, unknown="unconditioned")
    assert len(kept) == len(train) and kept[1][2].sum() == 0 and kept[0][2][3] == 1
    # A rotated cube keeps its coordinate grid, so the read-back cell length holds.
    from matdisc.segment import lattice_from_coords

    np.testing.assert_allclose(lattice_from_coords(c.numpy(), PADDING), abc.numpy(), rtol=1e-4)


def test_substitution_draws_distinct_elements_of_similar_radius(store):
    train = load_split(store, "train")
    sub = substitution_for(store, train, store.elements(), probability=1.0, radius_ratio=1.3)
    numbers = np.array([38, 22, 8, 8, 8])  # SrTiO3
    seen = set()
    for seed in range(50):
        new = sub.draw(numbers, np.random.default_rng(seed))
        assert np.array_equal(new, sub.draw(numbers, np.random.default_rng(seed)))
        # sites of one element stay one element, distinct elements stay distinct
        assert len(set(new[2:])) == 1 and len(set(new[:3])) == 3
        ratio = sub.radii[new] / sub.radii[numbers]
        assert np.all((ratio <= 1.3 + 1e-9) & (ratio >= 1 / 1.3 - 1e-9))
        assert set(new) <= set(sub.classes)
        seen.add(tuple(new))
    assert len(seen) > 1


def test_substitution_renders_what_the_voxelizer_draws(store):
    from matdisc.voxel import voxelize

    train = load_split(store, "train")
    sub = substitution_for(store, train, store.elements(), probability=1.0, radius_ratio=1.3)
    rng = np.random.default_rng(4)
    i = 4  # a perovskite
    density, species = sub.render(i, rng)
    new = sub.draw(sub.numbers[i], np.random.default_rng(4))
    cell = store.structure(int(train.index[i])).copy()
    for site, z in enumerate(new):
        cell.replace(site, int(z))
    again = voxelize(cell, grid_size=GRID, padding=PADDING)
    np.testing.assert_allclose(density, again.density, rtol=1e-5, atol=1e-6)
    assert np.array_equal(species, again.species)
    assert not np.array_equal(species, train.species[i])
    # only the cell's own elements as classes and no slack: the stored maps come back
    own = dataclasses.replace(sub, classes=np.unique(sub.numbers[i]), radius_ratio=1.0)
    density, species = own.render(i, rng)
    np.testing.assert_allclose(density, train.density[i], rtol=1e-5, atol=1e-6)
    assert np.array_equal(species, train.species[i])
    # the dataset substitutes at the given rate; its labels follow the new species
    items = UNetDataset(train, store.elements(), augment=False, substitution=sub)
    torch.manual_seed(0)
    density, target, mask = items[i]
    assert not np.allclose(density[0].numpy(), train.density[i])
    assert torch.equal(mask > 0, target != 0)
    off = UNetDataset(
        train, store.elements(), augment=False, substitution=dataclasses.replace(sub, probability=0)
    )
    assert np.array_equal(off[i][0][0].numpy(), train.density[i])


def test_substitution_refuses_a_store_of_another_radius_table(store):
    other = dataclasses.replace(store, attrs={**store.attrs, "radius_table_sha256": "0" * 64})
    with pytest.raises(UserError, match="another radius table"):
        substitution_for(
            other, load_split(other, "train"), other.elements(), probability=0.5, radius_ratio=1.3
        )


def _fit_unet(store, resume: Path, epochs: int, **section_kw):
    train, val = load_split(store, "train"), load_split(store, "val")
    section = unet_section(epochs=epochs, **section_kw)
    config = loop_config(epochs=epochs, lr=1e-2, batch_size=3, seed=3, num_threads=1)
    return training.fit_unet(train, val, store.elements(), section, config, resume)


def test_resume_reproduces_uninterrupted_run(store, tmp_path):
    model_a, result_a, _ = _fit_unet(store, tmp_path / "a.resume", epochs=3)
    # Interrupted after 1 epoch, then re-run with the full budget: continues from the file.
    _, first, _ = _fit_unet(store, tmp_path / "b.resume", epochs=1)
    assert first.epochs_run == 1
    model_b, result_b, _ = _fit_unet(store, tmp_path / "b.resume", epochs=3)
    assert result_b.steps == result_a.steps == 3 * 2  # 7 maps, batch 3, last dropped
    assert result_b.epochs_run == result_a.epochs_run == 3
    ckpt = torch.load(tmp_path / "b.resume", weights_only=False)
    assert ckpt["epoch"] == 3
    for key, value in model_a.state_dict().items():
        torch.testing.assert_close(model_b.state_dict()[key], value, msg=key)
    assert [h["train_loss"] for h in result_b.history] == pytest.approx(
        [h["train_loss"] for h in result_a.history], rel=1e-5
    )


def test_resume_file_of_other_settings_is_set_aside_not_loaded(store, tmp_path, caplog):
    resume = tmp_path / "unet.pt.resume"
    _fit_unet(store, resume, epochs=1, log_input=False)  # a killed run of the plain UNet
    fresh, _, _ = _fit_unet(store, tmp_path / "fresh.resume", epochs=2, log_input=True)
    # the same file, now for a UNet with a log-density channel (other input shape)
    with caplog.at_level("WARNING"):
        model, result, _ = _fit_unet(store, resume, epochs=2, log_input=True)
    assert "other settings (meta.config.log_input)" in caplog.text
    assert (tmp_path / "unet.pt.resume.stale").is_file()
    assert result.epochs_run == 2
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)


@pytest.mark.slow
def _settings(unet: dict, vae: dict, device: str = "cpu") -> dict:
    """The sections train_unet and train_vae read (seed 1, fp32)."""
    return {
        "seed": 1,
        "train": {"device": device, "bf16": False},
        "voxel": DEFAULTS["voxel"],
        "unet": unet,
        "vae": vae,
    }


def _train_both(settings: dict, tmp_path: Path) -> tuple[dict, dict, dict]:
    """train_unet then train_vae (the store comes from the patched ``stage._open``):
    (inputs, UNet outputs, VAE outputs)."""
    inputs = {"voxels": tmp_path / "cubic.zarr"}
    unet_out = {"model": tmp_path / "unet.pt", "metrics": tmp_path / "unet.parquet"}
    stage.train_unet(StageCall(settings=settings, inputs=inputs, outputs=unet_out))
    vae_out = {
        "model": tmp_path / "vae.pt",
        "unet_chain": tmp_path / "unet_chain.pt",
        "metrics": tmp_path / "vae.parquet",
    }
    stage.train_vae(
        StageCall(settings=settings, inputs={**inputs, "unet": unet_out["model"]}, outputs=vae_out)
    )
    return inputs, unet_out, vae_out


def test_stages_end_to_end(store, tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "_open", lambda call: store)
    settings = _settings(
        unet_section(epochs=2, max_minutes=5.0, substitution_probability=0.5),
        # the DFC perceptual term on (off by default), two epochs of chain fine-tuning
        vae_section(alpha=1.0, unet_finetune_epochs=2, evaluate_density_reader="both"),
        device="auto",
    )
    inputs, unet_out, vae_out = _train_both(settings, tmp_path)
    assert not Path(str(unet_out["model"]) + ".resume").exists()
    _unet, extra = load_model(unet_out["model"])
    assert extra["classes"] == store.elements() and len(extra["decile_edges"]) == 9
    assert extra["class_weights"][0] == 0.0
    metrics = read_table(vae_out["metrics"], "reconstruction_metrics")
    got = set(zip(metrics.pipeline, metrics.metric, strict=True))
    for pipeline in ("unet_true_density", "vae_unet_chain"):
        for metric in (
            "nonzero_recall",
            "mask_iou",
            "macro_f1",
            "site_emd_mean_angstrom",
            "delta_n_sites_mean",
            "a_mae_angstrom",
            "b_mae_angstrom",
            "c_mae_angstrom",
            "valid_fraction",
            "same_stoichiometry_fraction",
            "same_composition_fraction",
        ):
            assert (pipeline, metric) in got
    assert ("vae", "density_mse") in got and ("training", "epochs_run") in got
    assert ("vae", "density_correlation") in got
    # the chain read as sampling reads it (charge-aware), and the strict validity of both
    aware = metrics[metrics.pipeline == "vae_unet_chain_charge_aware"].set_index("metric")
    chain = metrics[metrics.pipeline == "vae_unet_chain"].set_index("metric")
    for metric in ("same_composition_fraction", "same_stoichiometry_fraction"):
        assert metric in aware.index
    assert aware.loc["valid_fraction", "value"] == chain.loc["valid_fraction", "value"]
    assert (
        aware.loc["strict_valid_fraction", "n_structures"]
        == chain.loc["strict_valid_fraction", "n_structures"]
    )
    before, after = chain.loc["strict_valid_fraction"], aware.loc["strict_valid_fraction"]
    if before["n_structures"] == 0:  # the tiny chain may read no crystal
        assert np.isnan(before["value"]) and np.isnan(after["value"])
    else:
        assert after["value"] >= before["value"]
    # per structure class of the val maps (rock salt, CsCl, perovskite)
    for pipeline in ("unet_true_density", "vae_unet_chain"):
        for cls in ("binary_AB", "perovskite_ABX3"):
            for metric in ("nonzero_recall", "same_composition_fraction"):
                assert (pipeline, f"{metric}:{cls}") in got
    assert not any(m.endswith(":other") for m in metrics.metric)
    # the density reader, without UNet, on the true and on the decoded maps (its own
    # accuracy is tested in test_density_reader.py: F, Br and Zr of the val crystals are
    # not among the training elements it chooses from)
    for pipeline in ("density_true_density", "vae_density_chain"):
        rows = metrics[metrics.pipeline == pipeline].set_index("metric")["value"]
        for metric in ("nonzero_recall", "same_composition_fraction", "site_emd_mean_angstrom"):
            assert metric in rows.index
        assert 0.0 <= rows["nonzero_recall"] <= 1.0 and rows["seconds_per_structure"] > 0
    true_read = metrics[metrics.pipeline == "density_true_density"].set_index("metric")["value"]
    # the val crystals hold F, Br and Zr, which the reader may not name: no composition is
    # right, and the fit explains their density with other atoms (more sites than the
    # truth where one unknown atom needs several; the cells' lengths are the true ones)
    assert true_read["same_composition_fraction"] == 0.0
    assert true_read["a_mae_angstrom"] == 0.0 and true_read["valid_fraction"] == 1.0
    seg = metrics[metrics.pipeline == "unet_true_density"].set_index("metric")["value"]
    # The true coordinate grid gives the cell back to float precision.
    assert seg["a_mae_angstrom"] < 1e-3
    assert 0.0 <= seg["valid_fraction"] <= 1.0
    assert 0.0 <= seg["same_composition_fraction"] <= seg["same_stoichiometry_fraction"] <= 1.0
    vae, vextra = load_model(vae_out["model"])
    assert vextra["classes"] == extra["classes"] and len(vextra["decile_edges"]) == 9
    # the chain's UNet: the trained UNet fine-tuned on the VAE's reconstructions
    unet, _ = load_model(unet_out["model"])
    chain, cextra = load_model(vae_out["unet_chain"])
    assert cextra["finetune_epochs"] == 2 and len(cextra["finetune_history"]) == 2
    assert cextra["classes"] == extra["classes"]
    assert not torch.equal(chain.inc[0].weight, unet.inc[0].weight)
    tuned = metrics[(metrics.model == "unet_chain") & (metrics.pipeline == "training")]
    assert tuned.set_index("metric")["value"]["epochs_run"] == 2
    assert not Path(str(vae_out["unet_chain"]) + ".resume").exists()
    # what it was tuned on: decoded densities of the maps with a decile, labels unchanged
    train = load_split(store, "train")
    recon = training.reconstructions(vae, train, torch.device("cpu"))
    keep = np.flatnonzero(train.decile >= 0)
    assert len(recon) == len(keep) and np.array_equal(recon.species, train.species[keep])
    assert not np.allclose(recon.density, train.density[keep])
    with torch.no_grad():
        i = int(keep[0])
        cond = torch.from_numpy(onehot(train.decile[i])[None])
        coords = torch.from_numpy(coords_of(train.lattice[i], train.grid_size, train.padding)[None])
        mu, _ = vae.encode(torch.from_numpy(train.density[i : i + 1]), coords, cond)
        np.testing.assert_allclose(recon.density[0], vae.decode(mu, cond)[0][0].numpy(), atol=1e-5)

    models = {
        **inputs,
        "unet": unet_out["model"],
        "vae": vae_out["model"],
        "unet_chain": vae_out["unet_chain"],
    }

    def evaluated(name: str, threads: int = 1):
        out = {"metrics": tmp_path / name}
        stage.evaluate_vae(
            StageCall(settings=settings, inputs=models, outputs=out, threads=threads)
        )
        return read_table(out["metrics"]).set_index(["pipeline", "metric"])["value"]

    again = evaluated("eval.parquet")
    from matdisc.io.parquet import read_metadata
    from matdisc.train.device import inference_bf16

    recorded = read_metadata(tmp_path / "eval.parquet")["inference_bf16"]
    assert recorded is inference_bf16(settings["train"])
    first = metrics.set_index(["pipeline", "metric"])["value"]
    for key in (("vae", "density_mse"), ("vae_unet_chain", "mask_iou")):
        assert again[key] == pytest.approx(first[key], rel=1e-5)
    # the maps read on two threads: the same rows, in the same order
    threaded = evaluated("eval_threads.parquet", threads=2)
    assert list(threaded.index) == list(again.index)
    timing = threaded.index.get_level_values("metric") == "seconds_per_structure"
    np.testing.assert_array_equal(threaded[~timing].to_numpy(), again[~timing].to_numpy())
    # asked for, the whole store
    whole_out = {"metrics": tmp_path / "eval_all.parquet"}
    everything = {**settings, "vae": {**settings["vae"], "evaluate_split": "all"}}
    stage.evaluate_vae(
        StageCall(
            settings=everything,
            inputs={**inputs, "unet": unet_out["model"], "vae": vae_out["model"]},
            outputs=whole_out,
        )
    )
    whole = read_table(whole_out["metrics"])
    assert set(whole["split"]) == {"all"}
    scored = whole[(whole.pipeline == "unet_true_density") & (whole.metric == "mask_iou")]
    assert (
        int(scored["n_structures"].iloc[0])
        == len(np.asarray(store.split))
        > len(load_split(store, "val").index)
    )


def test_channels_last_auto_follows_bf16():
    """auto: channels-last in fp32, the contiguous layout under bf16; booleans as given."""
    fp32 = loop_config(epochs=1, lr=1e-3, batch_size=1, device="cpu", bf16=False)
    bf16 = loop_config(epochs=1, lr=1e-3, batch_size=1, device="cpu", bf16=True)
    assert training.channels_last_of({"channels_last": "auto"}, fp32) is True
    assert training.channels_last_of({"channels_last": "auto"}, bf16) is False
    assert training.channels_last_of({"channels_last": True}, bf16) is True
    assert training.channels_last_of({"channels_last": False}, fp32) is False


def test_species_channels_end_to_end(store, tmp_path, monkeypatch):
    """A VAE with species channels: the data carry them (rotated with the density), the
    evaluation reads them back exactly from the true channels and scores the chain that
    reads its elements from the decoded ones."""
    from matdisc.models.data import with_species_channels
    from matdisc.segment.species import read_descriptors

    monkeypatch.setattr(stage, "_open", lambda call: store)
    train = with_species_channels(store, load_split(store, "train"), "table_position")
    assert train.channels.shape == (len(train), 3, GRID, GRID, GRID)
    torch.manual_seed(5)
    density, _, _, _, species = VAEDataset(train, augment=True)[0]
    # the occupancy channel peaks where the density does, after the same rotation
    peak = np.unravel_index(density[0].numpy().argmax(), (GRID,) * 3)
    assert species[0][peak] > 0.5
    settings = _settings(
        unet_section(epochs=1, max_minutes=None),
        vae_section(species_channels="table_position", unet_finetune_epochs=0),
    )
    _, _, vae_out = _train_both(settings, tmp_path)
    vae, _ = load_model(vae_out["model"])
    assert vae.species_channels == "table_position" and vae.n_species == 3
    # where the decoder puts each training element, saved with the model
    assert set(vae.species_reference) == set(store.elements())
    assert all(len(v) == 2 and np.isfinite(v).all() for v in vae.species_reference.values())
    metrics = read_table(vae_out["metrics"]).set_index(["pipeline", "metric"])["value"]
    # true maps: the fit returns every Z, the channels every element the models know
    # (the val split holds F, Br and Zr, which no training map has)
    assert metrics[("true_density", "species_fit_within_1")] == 1.0
    val_numbers = np.concatenate(
        [training_arrays(store, load_split(store, "val"), i)[2] for i in range(3)]
    )
    known = np.isin(val_numbers, store.elements()).mean()
    assert 0 < known < 1
    assert metrics[("true_density", "species_channel_exact")] == pytest.approx(known)
    for metric in ("species_fit_within_1", "species_fit_within_3", "species_channel_exact"):
        assert 0.0 <= metrics[("vae", metric)] <= 1.0
    for metric in ("nonzero_recall", "same_composition_fraction", "valid_fraction"):
        assert ("vae_species_chain", metric) in metrics.index
    # the decoded channels of an encoded map read back at its true sites
    val = with_species_channels(store, load_split(store, "val"), "table_position")
    from matdisc.models.data import vae_batch

    with torch.no_grad():
        d, c, cond, sp = vae_batch(val, 0, 1)
        mu, _ = vae.encode(d, c, cond, sp)
        _, _, channels = vae.decode_all(mu, cond)
    assert channels.shape == (1, 3, GRID, GRID, GRID) and float(channels.min()) >= 0
    _, frac, numbers = training_arrays(store, val, 0)
    values = read_descriptors(channels[0].numpy(), val.lattice[0], frac, padding=PADDING)
    assert values.shape == (len(numbers), 2) and np.isfinite(values).all()
    with pytest.raises(ValueError, match="species channels"):
        vae.encode(d, c, cond)
    # the coordinate MSE is over the three coordinate channels, not the species ones
    keep = np.flatnonzero(val.decile >= 0)
    with torch.no_grad():
        recon, target, _, _ = vae.eval()(*vae_batch(val.subset(keep), 0, len(keep)))
    want = float(((recon[:, 1:4] - target[:, 1:4]) ** 2).mean())
    assert metrics[("vae", "coords_mse")] == pytest.approx(want, rel=1e-3)


def training_arrays(store, split, i):
    from matdisc.voxel.cell import arrays_from_structure

    return arrays_from_structure(store.structure(int(split.index[i])))


def test_species_fit_loss_is_the_fidelity_metric_of_the_true_sites(store):
    """Items carry their true sites, rotated with the maps: the fit at those sites returns
    every Z from a rotated map, so the loss is zero on the target itself and the relative
    squared Z error of a scaled map."""
    from matdisc.models.data import with_sites
    from matdisc.models.losses import fitted_charges, species_fit_loss
    from matdisc.segment.density import model_map
    from matdisc.voxel.radii import radius_lookup

    train = with_sites(store, load_split(store, "train"))
    assert train.sites.shape[0] == len(train) and train.sites.shape[2] == 4
    _, _, numbers = training_arrays(store, train, 0)
    np.testing.assert_allclose(
        train.sites[0, : len(numbers), 3], radius_lookup()[numbers], rtol=1e-6
    )
    assert (train.sites[0, len(numbers) :, 3] == 0).all()
    # the store's cells are cubic-symmetric, so a rotation leaves their maps unchanged:
    # item 0 becomes three atoms in general positions
    frac = np.array([[0.1, 0.2, 0.35], [0.6, 0.15, 0.8], [0.3, 0.7, 0.55]])
    numbers = np.array([38, 22, 8])
    sigma = radius_lookup()[numbers]
    sites = np.zeros_like(train.sites[:1])
    sites[0, :3, :3], sites[0, :3, 3] = frac, sigma
    density = model_map(train.lattice[0], frac, numbers, sigma, GRID, PADDING)
    general = dataclasses.replace(
        train.subset(np.array([0])), density=density[None].astype(np.float32), sites=sites
    )
    plain = VAEDataset(general, augment=False)[0]
    torch.manual_seed(3)
    turned = 0
    for _ in range(6):
        density, _, _, lattice, item_sites = VAEDataset(general, augment=True)[0]
        grid, abc, s = density[None, 0], lattice[None], item_sites[None]
        charges = fitted_charges(grid, s, abc, PADDING)[0]
        np.testing.assert_allclose(charges[:3].numpy(), numbers, rtol=1e-3)
        assert float(charges[3:].abs().sum()) == 0.0
        if not torch.equal(density, plain[0]):
            turned += 1
            wrong = fitted_charges(grid, plain[4][None], abc, PADDING)[0][:3].numpy()
            assert not np.allclose(wrong, numbers, rtol=1e-2)
        assert float(species_fit_loss(grid, grid, s, abc, PADDING)) == 0.0
        loss = species_fit_loss(1.1 * grid, grid, s, abc, PADDING)
        assert float(loss) == pytest.approx(0.01, rel=1e-4)
    assert turned > 0
    # the loss has gradients for the decoder
    grid = density[None, 0].clone().requires_grad_(True)
    species_fit_loss(1.05 * grid, density[None, 0], s, abc, PADDING).backward()
    assert grid.grad is not None and float(grid.grad.abs().sum()) > 0


def test_vae_trains_with_the_species_fit_term(store, tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "_open", lambda call: store)
    settings = _settings(
        unet_section(epochs=1, max_minutes=None),
        vae_section(species_fit_weight=1.0, unet_finetune_epochs=0),
    )
    _, _, vae_out = _train_both(settings, tmp_path)
    _, extra = load_model(vae_out["model"])
    assert extra["config"]["species_fit_weight"] == 1.0
    metrics = read_table(vae_out["metrics"]).set_index(["pipeline", "metric"])["value"]
    assert 0.0 <= metrics[("vae", "species_fit_within_3")] <= 1.0
