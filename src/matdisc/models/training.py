"""Training of the 3-D UNet and the Cond-DFC-VAE: models, loss closures, fine-tuning.

The stages of :mod:`matdisc.models.stage` call these. A run checkpoints to its
``resume_path`` every epoch and continues from it when re-run
(:func:`matdisc.train.fit`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matdisc.errors import UserError

log = logging.getLogger(__name__)


def load_splits(store: Any, limit: int | None) -> tuple[Any, Any]:
    """The store's train split (at most ``limit`` structures) and val split; at least two
    and one structures, or a UserError."""
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


def train_config(section: dict[str, Any], train: dict[str, Any], *, seed: int, threads: int) -> Any:
    """The TrainConfig of a model's config section (``unet`` or ``vae``) and the ``train``
    section (device, bf16)."""
    from matdisc.train import TrainConfig

    return TrainConfig(
        epochs=section["epochs"],
        lr=section["lr"],
        batch_size=section["batch_size"],
        patience=section["patience"],
        weight_decay=0.0,
        device=train["device"],
        bf16=train["bf16"],
        seed=seed,
        grad_clip=None,
        num_threads=threads,
        max_minutes=section["max_minutes"],
        lr_schedule=section["lr_schedule"],
        lr_final=section["lr_final"],
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


# -- VAE ---------------------------------------------------------------------------------
def vae_loss_fn(
    unet: Any,
    *,
    alpha: float,
    beta: float,
    species_weight: float,
    fit_weight: float = 0.0,
    padding: float = 0.0,
):
    """``loss_fn`` for :func:`matdisc.train.fit` over :class:`VAEDataset` batches (whose
    items end with the true sites when ``fit_weight`` > 0)."""
    from matdisc.models.losses import vae_loss

    def loss_fn(model, batch, device):
        density, coords, cond, lattice, *rest = (t.to(device, non_blocking=True) for t in batch)
        sites = rest.pop() if fit_weight > 0 else None
        if unet is not None and next(unet.parameters()).device != device:
            unet.to(device)
        recon, target, mu, logvar = model(density, coords, cond, *rest)
        return vae_loss(
            recon,
            target,
            mu,
            logvar,
            beta=beta,
            alpha=alpha,
            unet=unet,
            density_scale=model.density_scale,
            species_weight=species_weight,
            fit_weight=fit_weight,
            sites=sites,
            lattice=lattice,
            padding=padding,
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

    unknown = section["unknown_decile"]
    train_set = VAEDataset(train, augment=section["augment"], name="train", unknown=unknown)
    val_set = VAEDataset(val, augment=False, name="val")
    if len(train_set) < 2:
        raise UserError(
            "fewer than 2 training structures have a formation-energy decile; "
            "set vae.unknown_decile: unconditioned to train on the others too."
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
        species_channels=section["species_channels"],
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
        loss_fn=vae_loss_fn(
            freeze(unet),
            alpha=section["alpha"],
            beta=section["beta"],
            species_weight=section["species_weight"],
            fit_weight=section["species_fit_weight"],
            padding=train.padding,
        ),
        train_set=train_set,
        val_set=val_set,
        config=config,
        resume_path=resume_path,
        meta=extra,
        desc="VAE",
    )
    return model, result, extra


@torch.no_grad()
def species_reference(
    vae: Any, data: Any, truth: Sequence[Any], device: Any, batch_size: int = 16
) -> dict[int, list[float]]:
    """{atomic number: mean descriptor} the VAE decodes at the true sites of each element
    of ``data`` (a VoxelSplit with species channels; ``truth`` its structures), each map
    encoded at z = μ: the reader's reference points (a decoder shrinks descriptors towards
    their mean, so an element's table position is not where its decoded value lies)."""
    from matdisc.models.data import vae_batch
    from matdisc.segment.species import read_descriptors
    from matdisc.voxel.cell import arrays_from_structure

    keep = np.flatnonzero(data.decile >= 0)
    data = data.subset(keep)
    truth = [truth[i] for i in keep]
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    vae.eval().to(device)
    for start in range(0, len(data), batch_size):
        density, coords, cond, species = vae_batch(data, start, start + batch_size, device)
        mu, _ = vae.encode(density, coords, cond, species)
        channels = vae.decode_all(mu, cond)[2].float().cpu().numpy()
        for j, grid in enumerate(channels):
            i = start + j
            _, frac, numbers = arrays_from_structure(truth[i])
            values = read_descriptors(grid, data.lattice[i], frac, padding=data.padding)
            for z, value in zip(numbers.tolist(), values, strict=True):
                sums[z] = sums.get(z, 0.0) + value
                counts[z] = counts.get(z, 0) + 1
    return {z: (sums[z] / counts[z]).tolist() for z in sorted(sums)}


# -- UNet fine-tuning on VAE reconstructions ---------------------------------------------
@torch.no_grad()
def reconstructions(
    vae: Any, data: Any, device: Any, batch_size: int = 16, unknown: str = "skip"
) -> Any:
    """The maps of ``data`` (a VoxelSplit) the VAE trains on (``unknown``: see
    :func:`matdisc.models.data.known_deciles`), their density replaced by the VAE's
    reconstruction at z = μ (store units; species, lattices, ids unchanged)."""
    import dataclasses

    from matdisc.models.data import known_deciles, vae_batch

    data = data.subset(known_deciles(data, unknown))
    vae.eval().to(device)
    out = np.empty_like(data.density)
    for start in range(0, len(data), batch_size):
        density, coords, cond, species = vae_batch(data, start, start + batch_size, device)
        mu, _ = vae.encode(density, coords, cond, species)
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
    unknown: str = "skip",
) -> tuple[Any, Any]:
    """Fine-tune a copy of ``unet`` on the VAE's reconstructions of the training maps, the
    kind of density it segments when sampling (a departure from the seed, whose UNet sees
    true densities only). Optimiser settings and loss are the UNet's own
    (``unet_extra["config"]``) except early stopping (``patience``, None = all epochs; the
    best val epoch is kept either way); ``unknown``: the training maps of unknown decile
    too (``"unconditioned"``) or not; returns (fine-tuned UNet, FitResult)."""
    import copy
    import dataclasses

    from matdisc.models.data import UNetDataset
    from matdisc.train import fit, resolve_device

    device = resolve_device(config.device)
    tuned = copy.deepcopy(unet).to(device)
    tuned.requires_grad_(True)  # the perceptual model of the VAE was frozen
    section = unet_extra["config"]
    recon_train = reconstructions(vae, train, device, unknown=unknown)
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
        lr_schedule=section["lr_schedule"],
        lr_final=section["lr_final"],
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
