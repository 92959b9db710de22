"""Stages ``train-unet``, ``train-vae`` and ``evaluate`` (seed 000, Methods; issue 4).

``train-unet``: voxel store → UNet (``results/models/unet.pt``) + its metrics.
``train-vae``: voxel store + trained UNet → Cond-DFC-VAE (``results/models/vae.pt``) +
the full metrics table (VAE MSE, UNet scores, the encode → decode → UNet → inverse chain
and the UNet on the true density), so the rule's metrics file holds every Table 5 /
Fig. 4 quantity. ``evaluate`` recomputes those rows for given models.

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
from matdisc.stage import StageCall

log = logging.getLogger(__name__)


def _open(call: StageCall) -> Any:
    from matdisc.voxel.store import open_store

    path = call.input("voxels")
    if not Path(path).exists():
        raise UserError(f"voxel store {path} does not exist; run the voxelize rule first.")
    return open_store(path)


def _splits(store: Any, limit: int | None) -> tuple[Any, Any]:
    from matdisc.models.data import load_split

    train = load_split(store, "train", limit=limit)
    val = load_split(store, "val")
    if len(train) < 2 or len(val) < 1:
        raise UserError(
            f"the voxel store holds {len(train)} training and {len(val)} validation "
            "structures; at least 2 and 1 are needed: use more data or another split."
        )
    log.info(
        "voxel store: %d train, %d val structures (grid %d)", len(train), len(val), train.grid_size
    )
    return train, val


def _train_config(call: StageCall, section: dict[str, Any]) -> Any:
    from matdisc.train import TrainConfig

    train = call.section("train")
    return TrainConfig(
        epochs=section["epochs"],
        lr=section["lr"],
        batch_size=section["batch_size"],
        patience=section["patience"],
        device=train["device"],
        bf16=train["bf16"],
        seed=call.seed,
        num_threads=call.threads,
        max_minutes=section["max_minutes"],
        lr_schedule=section["lr_schedule"],
        lr_final=section["lr_final"],
    )


def _resume_path(model_path: Path) -> Path:
    return Path(str(model_path) + ".resume")


def _write_metrics(path: Path, rows: list[dict], metadata: dict[str, Any]) -> None:
    from matdisc.models.evaluate import metrics_frame

    frame = metrics_frame(rows)
    write_table(frame, path, "reconstruction_metrics", metadata=metadata)
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


def channels_last_of(section: dict[str, Any], config: Any) -> bool:
    """The section's ``channels_last`` for a training run with ``config`` (a TrainConfig)."""
    from matdisc.train.device import resolve_bf16, resolve_channels_last, resolve_device

    bf16 = resolve_bf16(config.bf16, resolve_device(config.device))
    return resolve_channels_last(section["channels_last"], bf16)


def density_scale_of(density: np.ndarray) -> float:
    """Median over structures of the peak density: the network unit of density."""
    peaks = density.reshape(len(density), -1).max(axis=1)
    scale = float(np.median(peaks))
    return scale if scale > 0 else 1.0


# -- UNet --------------------------------------------------------------------------------
def unet_loss_fn(weights: torch.Tensor, *, pos_weight: float = 1.0, dice_weight: float = 0.0):
    """``loss_fn`` for :func:`matdisc.train.fit` over :class:`UNetDataset` batches."""
    from matdisc.models.losses import unet_training_loss

    def loss_fn(model, batch, device):
        density, target, mask = (t.to(device, non_blocking=True) for t in batch)
        return unet_training_loss(
            model, density, target, mask, weights, pos_weight=pos_weight, dice_weight=dice_weight
        )

    return loss_fn


def fit_unet(
    train: Any,
    val: Any,
    classes: list[int],
    section: dict[str, Any],
    config: Any,
    resume_path: Path,
    substitution: Any = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Build and train the UNet; return (model, FitResult, extra for the checkpoint).
    ``substitution``: a :class:`matdisc.models.data.Substitution` of the training maps."""
    from matdisc.models.data import UNetDataset, class_counts
    from matdisc.models.losses import class_weights
    from matdisc.models.unet import UNet3D
    from matdisc.train import fit, seed_everything

    counts = class_counts(train.species, classes)
    weights = class_weights(counts, section["class_weight_power"])
    scale = section["density_scale"] or density_scale_of(train.density)
    seed_everything(config.seed)
    model = UNet3D(
        classes=classes,
        base_channels=section["base_channels"],
        depth=section["depth"],
        density_scale=scale,
        channels_last=channels_last_of(section, config),
        log_input=section["log_input"],
    )
    # Start the mask head at the training occupancy (about 2% of the voxels at the
    # default label radius): otherwise the first hundreds of steps only move its bias.
    occupancy = float(np.clip((train.species > 0).mean(), 1e-4, 0.5))
    torch.nn.init.constant_(model.mask_head.bias, float(np.log(occupancy / (1 - occupancy))))
    extra = {
        "classes": classes,
        "train_occupancy": occupancy,
        "class_counts": counts.tolist(),
        "class_weights": weights.tolist(),
        "density_scale": scale,
        "grid_size": train.grid_size,
        "padding": train.padding,
        "config": section,
    }
    result = fit(
        model=model,
        loss_fn=unet_loss_fn(
            torch.tensor(weights, dtype=torch.float32),
            pos_weight=section["mask_pos_weight"],
            dice_weight=section["mask_dice_weight"],
        ),
        train_set=UNetDataset(
            train, classes, augment=section["augment"], substitution=substitution
        ),
        val_set=UNetDataset(val, classes, augment=False),
        config=config,
        resume_path=resume_path,
        meta=extra,
        desc="UNet",
    )
    return model, result, extra


def train_unet(call: StageCall) -> None:
    """Train the UNet on the voxel store's train split; score it on the val split."""
    from matdisc.models.evaluate import evaluate_unet, training_rows, true_structures
    from matdisc.train import resolve_device, save_model

    section = call.section("unet")
    store = _open(call)
    train, val = _splits(store, section["max_structures"])
    classes = [int(z) for z in store.elements()]
    log.info("UNet classes: background + %d elements %s", len(classes), classes)
    config = _train_config(call, section)
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
        invert_kwargs=inverse_options(call),
    )
    _write_metrics(call.output("metrics"), rows, {"history": result.history, "seed": call.seed})
    resume.unlink(missing_ok=True)


# -- VAE ---------------------------------------------------------------------------------
def vae_loss_fn(unet: Any, *, alpha: float, beta: float):
    """``loss_fn`` for :func:`matdisc.train.fit` over :class:`VAEDataset` batches."""
    from matdisc.models.losses import vae_loss

    def loss_fn(model, batch, device):
        density, coords, cond, _ = (t.to(device, non_blocking=True) for t in batch)
        if unet is not None and next(unet.parameters()).device != device:
            unet.to(device)
        recon, target, mu, logvar = model(density, coords, cond)
        return vae_loss(
            recon,
            target,
            mu,
            logvar,
            beta=beta,
            alpha=alpha,
            unet=unet,
            density_scale=model.density_scale,
        )

    return loss_fn


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no parameter gradients: the perceptual model of the DFC loss."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def fit_vae(
    train: Any,
    val: Any,
    unet: Any,
    section: dict[str, Any],
    config: Any,
    resume_path: Path,
) -> tuple[Any, Any, dict[str, Any]]:
    """Build and train the Cond-DFC-VAE; return (model, FitResult, extra)."""
    from matdisc.models.data import N_DECILES, VAEDataset
    from matdisc.models.vae import CondVAE3D
    from matdisc.train import fit, seed_everything

    train_set = VAEDataset(train, augment=section["augment"], name="train")
    val_set = VAEDataset(val, augment=False, name="val")
    if len(train_set) < 2:
        raise UserError(
            "fewer than 2 training structures have a formation-energy decile; "
            "the VAE cannot be trained on this data."
        )
    # Coordinates run from -p·L to (1 + p)·L: scale by the largest such extent.
    coord_scale = float(np.ceil(train.lattice.max() * (1 + train.padding)))
    seed_everything(config.seed)
    model = CondVAE3D(
        grid_size=train.grid_size,
        channels=section["channels"],
        latent_dim=section["latent_dim"],
        n_conditions=N_DECILES,
        density_scale=unet.density_scale,
        coord_scale=coord_scale,
        channels_last=channels_last_of(section, config),
    )
    extra = {
        "classes": list(unet.classes),
        "grid_size": train.grid_size,
        "padding": train.padding,
        "alpha": section["alpha"],
        "beta": section["beta"],
        "config": section,
    }
    extra.update(n_train=len(train_set), n_val=len(val_set))
    result = fit(
        model=model,
        loss_fn=vae_loss_fn(freeze(unet), alpha=section["alpha"], beta=section["beta"]),
        train_set=train_set,
        val_set=val_set,
        config=config,
        resume_path=resume_path,
        meta=extra,
        desc="VAE",
    )
    return model, result, extra


def inverse_options(call: StageCall, *, decoded: bool = False) -> dict[str, Any]:
    """Keyword arguments of :func:`matdisc.segment.invert` from the voxel config section,
    except the padding (the evaluation takes it from the voxel store); ``decoded``: for
    the chain's maps of VAE-decoded densities."""
    from matdisc.segment import invert_options

    options = invert_options(call.section("voxel"), decoded=decoded)
    return {k: v for k, v in options.items() if k != "padding"}


def _evaluation_rows(
    call: StageCall,
    vae: Any,
    unet: Any,
    store: Any,
    val: Any,
    device: Any,
    chain_unet: Any = None,
) -> list[dict]:
    """UNet rows on the true density (``unet``) and chain rows (``chain_unet``, by default
    the same UNet; its maps of decoded densities inverted with their own noise threshold)."""
    from matdisc.models.evaluate import evaluate_chain, evaluate_unet, true_structures

    started = time.perf_counter()
    truth = true_structures(store, val)
    rows = evaluate_unet(unet, val, truth, device=device, invert_kwargs=inverse_options(call))
    rows += evaluate_chain(
        vae,
        chain_unet or unet,
        val,
        truth,
        device=device,
        invert_kwargs=inverse_options(call, decoded=True),
    )
    log.info("evaluation of %d structures took %.0f s", len(val), time.perf_counter() - started)
    return rows


@torch.no_grad()
def reconstructions(vae: Any, data: Any, device: Any, batch_size: int = 16) -> Any:
    """The maps of ``data`` (a VoxelSplit) with known decile, their density replaced by the
    VAE's reconstruction at z = μ (store units; species, lattices, ids unchanged)."""
    import dataclasses

    from matdisc.models.data import vae_batch

    data = data.subset(np.flatnonzero(data.decile >= 0))
    vae.eval().to(device)
    out = np.empty_like(data.density)
    for start in range(0, len(data), batch_size):
        density, coords, cond = vae_batch(data, start, start + batch_size, device)
        mu, _ = vae.encode(density, coords, cond)
        out[start : start + len(density)] = vae.decode(mu, cond)[0].float().cpu().numpy()
    return dataclasses.replace(data, density=out)


def finetune_unet(
    unet: Any,
    unet_extra: dict[str, Any],
    vae: Any,
    train: Any,
    val: Any,
    epochs: int,
    config: Any,
    resume_path: Path,
    patience: int | None = None,
) -> tuple[Any, Any]:
    """Fine-tune a copy of ``unet`` on the VAE's reconstructions of the training maps, the
    kind of density it segments when sampling (a departure from the seed, whose UNet sees
    true densities only). Optimiser settings and loss are the UNet's own
    (``unet_extra["config"]``) except early stopping (``patience``, None = all epochs; the
    best val epoch is kept either way); returns (fine-tuned UNet, FitResult)."""
    import copy
    import dataclasses

    from matdisc.models.data import UNetDataset
    from matdisc.train import fit, resolve_device

    device = resolve_device(config.device)
    tuned = copy.deepcopy(unet).to(device)
    tuned.requires_grad_(True)  # the perceptual model of the VAE was frozen
    section = unet_extra["config"]
    recon_train = reconstructions(vae, train, device)
    recon_val = reconstructions(vae, val, device)
    log.info(
        "UNet fine-tuning on %d reconstructed training maps (%d val), %d epochs",
        len(recon_train), len(recon_val), epochs,
    )  # fmt: skip
    tune_config = dataclasses.replace(
        config,
        epochs=epochs,
        lr=section["lr"],
        batch_size=section["batch_size"],
        patience=patience,
        max_minutes=None,
        lr_schedule=section.get("lr_schedule", "constant"),
        lr_final=section.get("lr_final", 0.01),
    )
    result = fit(
        model=tuned,
        loss_fn=unet_loss_fn(
            torch.tensor(unet_extra["class_weights"], dtype=torch.float32),
            pos_weight=section["mask_pos_weight"],
            dice_weight=section["mask_dice_weight"],
        ),
        train_set=UNetDataset(recon_train, tuned.classes, augment=section["augment"]),
        val_set=UNetDataset(recon_val, tuned.classes, augment=False),
        config=tune_config,
        resume_path=resume_path,
        meta={"finetune_of": "unet", "epochs": epochs},
        desc="UNet on reconstructions",
    )
    return tuned, result


def train_vae(call: StageCall) -> None:
    """Train the Cond-DFC-VAE (the trained UNet as perceptual model when alpha > 0), then
    fine-tune the UNet on its reconstructions (``vae.unet_finetune_epochs``) into the chain's
    UNet (output ``unet_chain``); score the UNet and the chain."""
    from matdisc.models.evaluate import training_rows
    from matdisc.train import load_model, resolve_device, save_model

    section = call.section("vae")
    store = _open(call)
    train, val = _splits(store, section["max_structures"])
    config = _train_config(call, section)
    device = resolve_device(config.device)
    unet, unet_extra = load_model(call.input("unet"), device=device)
    model_path = call.output("model")
    resume = _resume_path(model_path)
    vae, result, extra = fit_vae(train, val, unet, section, config, resume)
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
        )
        chain_extra["finetune_history"] = tuned.history
        rows += training_rows("unet_chain", tuned, len(train), len(val))
    save_model(chain_path, chain_unet, extra=chain_extra)
    rows += _evaluation_rows(call, vae, unet, store, val, device, chain_unet=chain_unet)
    _write_metrics(call.output("metrics"), rows, {"history": result.history, "seed": call.seed})
    resume.unlink(missing_ok=True)
    chain_resume.unlink(missing_ok=True)


def evaluate(call: StageCall) -> None:
    """Score given UNet and VAE checkpoints on the store's val split (no training)."""
    from matdisc.train import load_model, resolve_device

    device = resolve_device(call.section("train")["device"])
    torch.set_num_threads(call.threads)
    store = _open(call)
    from matdisc.models.data import load_split

    val = load_split(store, "val")
    unet, _ = load_model(call.input("unet"), device=device)
    vae, _ = load_model(call.input("vae"), device=device)
    chain_unet = None
    if "unet_chain" in call.inputs:
        chain_unet, _ = load_model(call.input("unet_chain"), device=device)
    rows = _evaluation_rows(call, vae, unet, store, val, device, chain_unet=chain_unet)
    _write_metrics(call.output("metrics"), rows, {"seed": call.seed})
