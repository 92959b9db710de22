"""Losses of the UNet and the Cond-DFC-VAE (seed 000, Methods, eqs for L_UNet and L_DFC-VAE).

- UNet: class-weighted categorical cross-entropy over voxels (weights inversely
  proportional to the class voxel counts of the training split, background weight 0)
  plus binary cross-entropy of the occupancy mask. Two optional terms speed up learning
  the mask when training is short (the CPU defaults; the paper preset switches both off):
  a positive-class weight in the BCE (atoms fill ~5% of the voxels) and a soft Dice loss
  of the mask.
- VAE: MSE(real, reconstruction) + β·KLD + α·perceptual, where the perceptual term
  compares the hidden features of the frozen, trained UNet on the real and the
  reconstructed density, layer by layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from matdisc.models.unet import UNet3D

#: Class index of voxels whose element the UNet has no class for (ignored by the CE).
IGNORE_INDEX = -100


def class_weights(counts: Sequence[int] | np.ndarray, power: float = 1.0) -> np.ndarray:
    """Weights ∝ count^-power per class, background (index 0) weight 0, mean 1 over the rest.

    ``counts[k]``: voxels of class ``k`` in the training split. ``power = 1`` is the
    seed's inverse-count weighting; smaller powers temper it (0 = unweighted). A class
    with no voxels gets weight 0 (nothing to weigh).
    """
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.zeros_like(counts)
    seen = counts > 0
    seen[0] = False
    weights[seen] = counts[seen] ** -float(power)
    if seen.any():
        weights[seen] /= weights[seen].mean()
    return weights


def soft_dice_loss(mask_logits: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice coefficient of the mask over the whole batch (0 = perfect overlap)."""
    prob = torch.sigmoid(mask_logits.float())
    target = target_mask.float()
    overlap = (prob * target).sum()
    return 1.0 - (2.0 * overlap + 1.0) / (prob.sum() + target.sum() + 1.0)


def mask_loss(
    mask_logits: torch.Tensor,
    target_mask: torch.Tensor,
    *,
    pos_weight: float = 1.0,
    dice_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE of the occupancy mask (atom voxels weighted ``pos_weight``) + ``dice_weight`` × Dice.

    With the defaults (1, 0) this is the seed's plain binary cross-entropy.
    """
    bce = F.binary_cross_entropy_with_logits(
        mask_logits.float(),
        target_mask.float(),
        pos_weight=torch.tensor(float(pos_weight), device=mask_logits.device),
    )
    parts = {"bce": float(bce.detach())}
    if dice_weight > 0:
        dice = soft_dice_loss(mask_logits, target_mask)
        parts["dice"] = float(dice.detach())
        return bce + dice_weight * dice, parts
    return bce, parts


def unet_loss(
    species_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    target_classes: torch.Tensor,
    target_mask: torch.Tensor,
    weights: torch.Tensor,
    *,
    pos_weight: float = 1.0,
    dice_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted CE (B, K, d, d, d) vs (B, d, d, d) class indices + the mask loss.

    ``weights`` (K,) with ``weights[0] = 0``; ``target_mask`` (B, d, d, d) in {0, 1};
    ``pos_weight`` and ``dice_weight`` as in :func:`mask_loss`. Returns the loss and its
    parts.
    """
    ce = F.cross_entropy(
        species_logits.float(),
        target_classes,
        weight=weights.to(species_logits.device, torch.float32),
        ignore_index=IGNORE_INDEX,
    )
    if not torch.isfinite(ce):  # a batch without any weighted voxel (all background)
        ce = species_logits.sum() * 0.0
    mask, parts = mask_loss(
        mask_logits, target_mask, pos_weight=pos_weight, dice_weight=dice_weight
    )
    return ce + mask, {"ce": float(ce.detach()), **parts}


def unet_training_loss(
    model: UNet3D,
    density: torch.Tensor,
    target_classes: torch.Tensor,
    target_mask: torch.Tensor,
    weights: torch.Tensor,
    *,
    pos_weight: float = 1.0,
    dice_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`unet_loss` of ``model`` on a batch, with the species logits evaluated only on
    voxels of a weighted class.

    Equal to ``unet_loss(*model(density), ...)`` whenever ``weights[0] == 0`` (the
    seed's choice): weighted cross-entropy averages over the target weights, so
    background voxels add nothing to it. Skipping them saves most of the species head's
    cost (about a third of a training step at 32³).
    """
    weights = weights.to(density.device, torch.float32)
    features = model.last_features(density)
    mask_logits = model.mask_head(features).squeeze(1)
    where = target_classes > 0 if weights[0] == 0 else target_classes != IGNORE_INDEX
    logits = model.species_logits_at(features, where)
    picked = target_classes[where]
    if picked.numel() and weights[picked.clamp_min(0)][picked >= 0].sum() > 0:
        ce = F.cross_entropy(logits.float(), picked, weight=weights, ignore_index=IGNORE_INDEX)
    else:  # no weighted voxel in the batch
        ce = features.sum() * 0.0
    mask, parts = mask_loss(
        mask_logits, target_mask, pos_weight=pos_weight, dice_weight=dice_weight
    )
    return ce + mask, {"ce": float(ce.detach()), **parts}


def kld(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent dimensions, averaged over the batch."""
    mu, logvar = mu.float(), logvar.float()
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def perceptual_loss(
    unet: UNet3D, real_density: torch.Tensor, fake_density: torch.Tensor
) -> torch.Tensor:
    """Sum over UNet encoder levels of the MSE between features of real and fake density.

    The UNet must be frozen (eval mode, no parameter gradients); gradients flow to
    ``fake_density`` only. Both densities are (B, [1,] d, d, d) in store units.
    """
    with torch.no_grad():
        real = unet.features(real_density)
    fake = unet.features(fake_density)
    return sum(
        (F.mse_loss(f.float(), r.float()) for f, r in zip(fake, real, strict=True)),
        start=torch.zeros((), device=fake_density.device),
    )


def site_profiles_torch(
    sites: torch.Tensor, lattice: torch.Tensor, grid_size: int, padding: float
) -> torch.Tensor:
    """Axis profiles (B, m, 3, d) 1/Å of each site's normalised Gaussian (periodic images
    summed) at the voxel centres: sites (B, m, 4) fractional x, y, z and σ Å (σ = 0: no
    site, zero profile), lattice (B, 3) Å. The torch twin of
    :func:`matdisc.voxel.core.site_profiles`."""
    from matdisc.voxel.core import TAIL_SIGMAS
    from matdisc.voxel.grid import voxel_fractions

    frac, sigma = sites[..., :3].double(), sites[..., 3].double()
    real = sigma > 0
    sigma = torch.where(real, sigma, torch.ones_like(sigma))
    a = lattice.double()
    u = torch.as_tensor(voxel_fractions(grid_size, padding), device=sites.device)
    reach = float((TAIL_SIGMAS * sigma.max() / a.min()).item()) if real.any() else 0.0
    n_img = int(np.ceil(padding + reach)) + 1
    shifts = torch.arange(-n_img, n_img + 1, dtype=torch.float64, device=sites.device)
    # (B, m, 3, images, d): signed distance Å from every 1-D image to every voxel centre
    delta = u - frac[..., None, None] - shifts[:, None]
    delta = delta * a[:, None, :, None, None]
    s = sigma[..., None, None, None]
    profile = torch.exp(-0.5 * (delta / s) ** 2).sum(dim=3) / (np.sqrt(2.0 * np.pi) * s[..., 0])
    return profile * real[..., None, None]


def fitted_charges(
    grids: torch.Tensor, sites: torch.Tensor, lattice: torch.Tensor, padding: float
) -> torch.Tensor:
    """(B, m) float64: each map of ``grids`` (B, d, d, d) least-squares fitted with unit
    Gaussians at ``sites`` (B, m, 4: fractional x, y, z and σ Å; σ = 0 pads, fitted 0) in
    cells ``lattice`` (B, 3) Å. On a true map at its own sites this returns each Z (in
    the map's units): the species-fidelity metric's fit, differentiable."""
    g = site_profiles_torch(sites, lattice, grids.shape[-1], padding)
    gx, gy, gz = g[:, :, 0], g[:, :, 1], g[:, :, 2]  # (B, m, d)
    gram = (gx @ gx.transpose(1, 2)) * (gy @ gy.transpose(1, 2)) * (gz @ gz.transpose(1, 2))
    gram = gram + torch.diag_embed((sites[..., 3] <= 0).double())  # padding: identity rows
    projected = torch.einsum("bxyz,bmz->bmxy", grids.double(), gz)
    projected = torch.einsum("bmxy,bmy->bmx", projected, gy)
    rhs = torch.einsum("bmx,bmx->bm", projected, gx)
    return torch.linalg.solve(gram, rhs[..., None])[..., 0]


def species_fit_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    sites: torch.Tensor,
    lattice: torch.Tensor,
    padding: float,
) -> torch.Tensor:
    """The species-fidelity metric as a loss: the squared error of the charges
    :func:`fitted_charges` finds in the reconstruction (B, d, d, d) at the true sites,
    over the target's squared charges (per batch), i.e. the relative squared error of
    the Z a reader would fit."""
    true = fitted_charges(target, sites, lattice, padding)
    error = fitted_charges(reconstruction, sites, lattice, padding) - true
    return ((error**2).sum() / (true**2).sum().clamp_min(1e-12)).float()


def vae_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    beta: float,
    alpha: float,
    unet: UNet3D | None,
    density_scale: float,
    species_weight: float = 1.0,
    fit_weight: float = 0.0,
    sites: torch.Tensor | None = None,
    lattice: torch.Tensor | None = None,
    padding: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE + β·KLD + α·perceptual on normalised grids (B, 4 [+ species], d, d, d) from the VAE.

    The MSE is over the density and coordinate channels; ``mse_density`` (also reported)
    is the density channel alone, the seed's "VAE reconstruction MSE". Species channels,
    when present, add ``species_weight`` × their own MSE. The perceptual term feeds the
    UNet densities in store units (normalised × ``density_scale``). With ``fit_weight``
    > 0 and the true ``sites`` (B, m, 4) and ``lattice`` (B, 3), ``fit_weight`` ×
    :func:`species_fit_loss` of the density channel is added (``species_fit``).
    """
    reconstruction = reconstruction.float()
    mse = F.mse_loss(reconstruction[:, :4], target[:, :4])
    mse_density = F.mse_loss(reconstruction[:, :1], target[:, :1])
    kl = kld(mu, logvar)
    loss = mse + beta * kl
    metrics = {
        "mse": float(mse.detach()),
        "mse_density": float(mse_density.detach()),
        "mse_coords": float(F.mse_loss(reconstruction[:, 1:4], target[:, 1:4]).detach()),
        "kld": float(kl.detach()),
    }
    if reconstruction.shape[1] > 4:
        mse_species = F.mse_loss(reconstruction[:, 4:], target[:, 4:])
        loss = loss + species_weight * mse_species
        metrics["mse_species"] = float(mse_species.detach())
    if fit_weight > 0 and sites is not None and lattice is not None:
        fit = species_fit_loss(reconstruction[:, 0], target[:, 0], sites, lattice, padding)
        loss = loss + fit_weight * fit
        metrics["species_fit"] = float(fit.detach())
    if unet is not None and alpha > 0:
        perc = perceptual_loss(
            unet, target[:, :1] * density_scale, reconstruction[:, :1] * density_scale
        )
        loss = loss + alpha * perc
        metrics["perceptual"] = float(perc.detach())
    return loss, metrics
