"""Stages ``train-unet``, ``train-vae`` and ``evaluate-vae`` (seed 000, Methods; issue 4).

``train-unet``: voxel store → UNet (``results/models/unet.pt``) + its metrics.
``train-vae``: voxel store + trained UNet → Cond-DFC-VAE (``results/models/vae.pt``) +
the full metrics table (VAE MSE, UNet scores, the encode → decode → UNet → inverse chain
and the UNet on the true density), so the rule's metrics file holds every Table 5 /
Fig. 4 quantity. ``evaluate-vae`` (no rule; run by hand) recomputes those rows for given
models. The training itself is :mod:`matdisc.models.training`.

A training run checkpoints to ``<model>.resume`` every epoch (not a Snakemake output, so
a killed job keeps it) and continues from it when re-run; the file is removed once the
final model is written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matdisc.errors import UserError
from matdisc.io import write_table
from matdisc.models.data import with_sites, with_species_channels
from matdisc.models.training import (
    finetune_unet,
    fit_unet,
    fit_vae,
    load_splits,
    train_config,
)
from matdisc.segment import InverseSettings
from matdisc.stage import StageCall
from matdisc.train.device import inference_bf16

log = logging.getLogger(__name__)


def _open(call: StageCall) -> Any:
    from matdisc.voxel.store import open_store

    path = call.input("voxels")
    if not Path(path).exists():
        raise UserError(
            f"voxel store {path} does not exist; run the voxelize_structures rule first."
        )
    return open_store(path)


def _resume_path(model_path: Path) -> Path:
    return Path(str(model_path) + ".resume")


def _write_metrics(call: StageCall, rows: list[dict], metadata: dict[str, Any]) -> None:
    """The metrics table (output ``metrics``) with ``metadata``."""
    from matdisc.models.evaluate import metrics_frame

    frame = metrics_frame(rows)
    # the models' precision in the evaluation (train.bf16 as resolved here) beside the rows
    metadata = {**metadata, "inference_bf16": inference_bf16(call.section("train"))}
    write_table(frame, call.output("metrics"), "reconstruction_metrics", metadata=metadata)
    for row in rows:
        if row["pipeline"] != "training":
            log.info(
                "%-18s %-24s %10.4g  (paper %s, n=%d)",
                row["pipeline"],
                row["metric"],
                row["value"],
                row["paper_value"],
                row["n_structures"],
            )


def inverse_settings(call: StageCall, *, decoded: bool = False) -> InverseSettings:
    """The grid -> crystal settings of the voxel config section (the evaluation takes the
    padding from the voxel store); ``decoded``: for the chain's maps of VAE-decoded
    densities."""
    return InverseSettings.from_config(call.section("voxel"), decoded=decoded)


def _evaluation_rows(
    call: StageCall,
    vae: Any,
    unet: Any,
    store: Any,
    val: Any,
    device: Any,
    chain_unet: Any = None,
    split: str = "val",
) -> list[dict]:
    """UNet rows on the true density (``unet``) and chain rows (``chain_unet``, by default
    the same UNet; its maps of decoded densities inverted with their own noise threshold)
    of the structures ``val`` (the store's ``split``)."""
    from matdisc.models.evaluate import (
        evaluate_chain,
        evaluate_density_reader,
        evaluate_unet,
        true_structures,
    )

    started = time.perf_counter()
    truth = true_structures(store, val)
    reader = call.section("vae")["evaluate_density_reader"]
    bf16 = inference_bf16(call.section("train"))
    rows = evaluate_unet(
        unet,
        val,
        truth,
        device=device,
        split=split,
        inverse_settings=inverse_settings(call),
        threads=call.threads,
        bf16=bf16,
    )
    if reader in ("true_density", "both"):
        rows += evaluate_density_reader(
            list(val.density),
            list(val.lattice),
            val,
            truth,
            classes=unet.classes,
            pipeline="density_true_density",
            max_sites=inverse_settings(call).max_sites,
            split=split,
        )
    rows += evaluate_chain(
        vae,
        chain_unet or unet,
        val,
        truth,
        device=device,
        split=split,
        inverse_settings=inverse_settings(call, decoded=True),
        density_reader=reader == "both",
        threads=call.threads,
        bf16=bf16,
    )
    seconds = time.perf_counter() - started
    log.info(
        "evaluation of %d structures (%s) took %.0f s: %.1f structures/s",
        len(val),
        split,
        seconds,
        len(val) / max(seconds, 1e-9),
    )
    return rows


def train_unet(call: StageCall) -> None:
    """Train the UNet on the voxel store's train split; score it on the val split."""
    from matdisc.models.evaluate import evaluate_unet, training_rows, true_structures
    from matdisc.train import resolve_device, save_model

    section = call.section("unet")
    store = _open(call)
    train, val = load_splits(store, section["max_structures"])
    classes = [int(z) for z in store.elements()]
    log.info("UNet classes: background + %d elements %s", len(classes), classes)
    config = train_config(section, call.section("train"), seed=call.seed, threads=call.threads)
    model_path = call.output("model")
    resume = _resume_path(model_path)
    substitution = None
    if section["substitution_probability"] > 0:
        from matdisc.models.data import substitution_for

        substitution = substitution_for(
            store,
            train,
            classes,
            probability=section["substitution_probability"],
            radius_ratio=section["substitution_radius_ratio"],
        )
        log.info(
            "UNet: %.0f%% of the training maps re-rendered with substituted species "
            "(radius within x%.2f)",
            100 * substitution.probability,
            substitution.radius_ratio,
        )
    model, result, extra = fit_unet(train, val, classes, section, config, resume, substitution)
    extra.update(
        decile_edges=np.asarray(store.decile_edges, dtype=float).tolist(), history=result.history
    )
    save_model(model_path, model, extra=extra)
    rows = training_rows("unet", result, len(train), len(val))
    rows += evaluate_unet(
        model,
        val,
        true_structures(store, val),
        device=resolve_device(config.device),
        inverse_settings=inverse_settings(call),
        threads=call.threads,
        bf16=inference_bf16(call.section("train")),
    )
    _write_metrics(call, rows, {"history": result.history, "seed": call.seed})
    resume.unlink(missing_ok=True)


def train_vae(call: StageCall) -> None:
    """Train the Cond-DFC-VAE (the trained UNet as perceptual model when alpha > 0), then
    fine-tune the UNet on its reconstructions (``vae.unet_finetune_epochs``) into the chain's
    UNet (output ``unet_chain``); score the UNet and the chain."""
    from matdisc.models.evaluate import training_rows
    from matdisc.train import load_model, resolve_device, save_model

    section = call.section("vae")
    store = _open(call)
    train, val = (
        with_species_channels(store, split, section["species_channels"])
        for split in load_splits(store, section["max_structures"])
    )
    config = train_config(section, call.section("train"), seed=call.seed, threads=call.threads)
    device = resolve_device(config.device)
    unet, unet_extra = load_model(call.input("unet"), device=device)
    model_path = call.output("model")
    resume = _resume_path(model_path)
    if section["species_fit_weight"] > 0:
        train, val = with_sites(store, train), with_sites(store, val)
    vae, result, extra = fit_vae(train, val, unet, section, config, resume)
    if vae.n_species:
        from matdisc.models.evaluate import true_structures
        from matdisc.models.training import species_reference

        vae.set_species_reference(
            species_reference(vae, train, true_structures(store, train), device)
        )
        log.info(
            "species reference of %d elements from the training maps", len(vae.species_reference)
        )
    extra.update(
        decile_edges=np.asarray(store.decile_edges, dtype=float).tolist(),
        unet_density_scale=unet_extra.get("density_scale"),
        history=result.history,
    )
    save_model(model_path, vae, extra=extra)
    chain_path = call.output("unet_chain")
    chain_resume = _resume_path(chain_path)
    epochs = int(section["unet_finetune_epochs"])
    chain_extra = {**unet_extra, "finetuned_on": "vae reconstructions", "finetune_epochs": epochs}
    chain_unet = unet
    rows = training_rows("vae", result, extra["n_train"], extra["n_val"])
    if epochs > 0:
        chain_unet, tuned = finetune_unet(
            unet,
            unet_extra,
            vae,
            train,
            val,
            epochs,
            config,
            chain_resume,
            patience=section["unet_finetune_patience"],
            unknown=section["unknown_decile"],
        )
        chain_extra["finetune_history"] = tuned.history
        rows += training_rows("unet_chain", tuned, len(train), len(val))
    save_model(chain_path, chain_unet, extra=chain_extra)
    rows += _evaluation_rows(call, vae, unet, store, val, device, chain_unet=chain_unet)
    _write_metrics(call, rows, {"history": result.history, "seed": call.seed})
    resume.unlink(missing_ok=True)
    chain_resume.unlink(missing_ok=True)


def evaluate_vae(call: StageCall) -> None:
    """Score given UNet and VAE checkpoints on the store's ``vae.evaluate_split`` (val by
    default; ``all``: the whole store) without training."""
    from matdisc.train import load_model, resolve_device

    device = resolve_device(call.section("train")["device"])
    torch.set_num_threads(call.threads)
    store = _open(call)
    from matdisc.models.data import load_split

    unet, _ = load_model(call.input("unet"), device=device)
    vae, _ = load_model(call.input("vae"), device=device)
    split = call.section("vae")["evaluate_split"]
    data = with_species_channels(store, load_split(store, split), vae.species_channels)
    if not len(data):
        raise UserError(f"the voxel store has no {split} structures; set vae.evaluate_split.")
    chain_unet = None
    if "unet_chain" in call.inputs:
        chain_unet, _ = load_model(call.input("unet_chain"), device=device)
    rows = _evaluation_rows(
        call, vae, unet, store, data, device, chain_unet=chain_unet, split=split
    )
    _write_metrics(call, rows, {"seed": call.seed})
