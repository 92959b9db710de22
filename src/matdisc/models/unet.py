"""3-D UNet: electron-density map -> per-voxel species logits + binary occupancy mask.

Seed 000 (Court et al. 2020), Fig. 1b and Methods "UNet": Conv3D + BatchNorm + ReLU
blocks, max-pooling on the way down, upsampling on the way up, skip connections. The
species head has one class per element of the training data plus the background
class 0; the mask head says whether a voxel belongs to any atom. Because the background
class carries weight 0 in the loss (as in the seed), :meth:`UNet3D.segment` takes the
occupancy from the mask head and the element from the non-background species logits.

Shapes: ``B`` batch, ``d`` grid size (divisible by ``2**depth``), ``K = len(classes) + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from matdisc.errors import UserError

#: Added to the density (network units: the median peak is 1) before the logarithm of
#: the ``log_input`` channel: the Gaussian tails stay parabolic down to 1e-3 of a typical
#: peak, below which the decoded maps are noise.
LOG_FLOOR = 1e-3


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two (Conv3d 3³ → BatchNorm → ReLU) layers; spatial size kept."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet3D(nn.Module):
    """Segmenter of density maps into atomic-number maps.

    Args:
        classes: atomic numbers of the non-background classes; class ``i + 1`` is
            element ``classes[i]`` and class 0 is the background.
        base_channels: channels of the first level; level ``l`` has ``base * 2**l``.
        depth: number of down (and up) steps; the seed uses 4.
        density_scale: density units per network unit; the input is divided by it, so
            callers pass densities as the voxel store holds them.
        channels_last: run convolutions in the channels-last 3-D memory format
            (faster on some CPUs; see ``benchmarks/bench_training.py``).
        log_input: feed ``log(density / scale + LOG_FLOOR)`` as a second input channel.
            Each atom's density is a Gaussian ``Z / ((2π)^1.5 σ³) exp(-r² / 2σ²)``: its
            logarithm is a parabola whose height gives ``Z / σ³`` and whose curvature
            gives ``-1 / σ²`` at every voxel of the atom, so the species, which the seed
            encodes in exactly (Z, σ), is a local, near-linear feature of that channel;
            in the linear channel the peaks of light anions are ~1 % of the heavy
            cations' and share their voxels' dynamic range.
    """

    def __init__(
        self,
        *,
        classes: Sequence[int],
        base_channels: int = 8,
        depth: int = 4,
        density_scale: float = 1.0,
        channels_last: bool = False,
        log_input: bool = False,
    ) -> None:
        super().__init__()
        classes = [int(z) for z in classes]
        if not classes or min(classes) < 1 or len(set(classes)) != len(classes):
            raise UserError(
                f"the UNet needs distinct atomic numbers >= 1 as classes, got {classes}; "
                "check that the voxel store's training split holds structures."
            )
        if depth < 1 or base_channels < 1 or not density_scale > 0:
            raise UserError(
                f"unet needs depth >= 1, base_channels >= 1 and a positive density scale "
                f"(got {depth}, {base_channels}, {density_scale}); fix the unet config section."
            )
        self.model_args = dict(
            classes=classes,
            base_channels=int(base_channels),
            depth=int(depth),
            density_scale=float(density_scale),
            channels_last=bool(channels_last),
            log_input=bool(log_input),
        )
        self.classes = classes
        self.depth = int(depth)
        self.density_scale = float(density_scale)
        self.channels_last = bool(channels_last)
        self.log_input = bool(log_input)
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.inc = conv_block(2 if self.log_input else 1, widths[0])
        self.down = nn.ModuleList(conv_block(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool3d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.up = nn.ModuleList(
            conv_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))
        )
        self.species_head = nn.Conv3d(widths[0], len(classes) + 1, 1)
        self.mask_head = nn.Conv3d(widths[0], 1, 1)
        # Start the mask near a typical occupancy (a few % of the voxels hold an atom)
        # rather than 50%; training sets it to the measured one (models.training.fit_unet).
        nn.init.constant_(self.mask_head.bias, -3.0)
        # Class index -> atomic number (index 0 = background = 0).
        self.register_buffer(
            "atomic_numbers", torch.tensor([0, *classes], dtype=torch.long), persistent=False
        )
        if self.channels_last:
            self.to(memory_format=torch.channels_last_3d)

    @property
    def n_classes(self) -> int:
        """Number of species classes including the background."""
        return len(self.classes) + 1

    def _prepare(self, density: torch.Tensor) -> torch.Tensor:
        if density.dim() == 4:
            density = density.unsqueeze(1)
        if density.dim() != 5 or density.shape[1] != 1:
            raise ValueError(
                f"density must be (B, d, d, d) or (B, 1, d, d, d), got {tuple(density.shape)}"
            )
        size = density.shape[-1]
        if size % 2**self.depth:
            raise UserError(
                f"the UNet of depth {self.depth} needs a grid size divisible by {2**self.depth}, "
                f"got {size}; change voxel.grid_size or unet.depth."
            )
        x = density / self.density_scale
        if self.log_input:
            x = torch.cat([x, torch.log(x.clamp_min(0.0) + LOG_FLOOR)], dim=1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def features(self, density: torch.Tensor) -> list[torch.Tensor]:
        """Hidden encoder features, one tensor per level (finest first).

        Used as the perceptual model of the DFC-VAE. ``density``: (B, [1,] d, d, d).
        Level ``l`` has shape (B, base * 2**l, d / 2**l, d / 2**l, d / 2**l).
        """
        x = self.inc(self._prepare(density))
        skips = [x]
        for block in self.down:
            x = block(self.pool(x))
            skips.append(x)
        return skips

    def last_features(self, density: torch.Tensor) -> torch.Tensor:
        """Features of the last up block (B, base_channels, d, d, d), before the heads."""
        skips = self.features(density)
        x = skips[-1]
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = block(torch.cat([self.upsample(x), skip], dim=1))
        return x

    def forward(self, density: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return species logits (B, K, d, d, d) and mask logits (B, d, d, d)."""
        x = self.last_features(density)
        return self.species_head(x), self.mask_head(x).squeeze(1)

    def species_logits_at(self, features: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Species logits (N, K) of the N voxels where ``where`` (B, d, d, d) is true.

        The species head is a 1×1×1 convolution, i.e. a linear map per voxel, so this
        equals ``species_head(features)`` at those voxels without computing the rest.
        Training uses it: background voxels carry weight 0 in the cross-entropy.
        """
        picked = features.permute(0, 2, 3, 4, 1)[where]
        weight = self.species_head.weight.flatten(1)
        return torch.nn.functional.linear(picked, weight, self.species_head.bias)

    @staticmethod
    def classes_from_logits(
        species_logits: torch.Tensor, mask_logits: torch.Tensor
    ) -> torch.Tensor:
        """Class indices (B, d, d, d): 0 where the mask says empty, else the best element."""
        element = species_logits[:, 1:].argmax(dim=1) + 1
        return torch.where(mask_logits > 0, element, torch.zeros_like(element))

    @torch.no_grad()
    def segment(self, density: torch.Tensor) -> torch.Tensor:
        """Atomic-number map (B, d, d, d) int64 of densities (B, [1,] d, d, d); 0 = empty.

        Runs in whatever mode the model is in; call ``model.eval()`` first (the loaders
        in :mod:`matdisc.train` return models in eval mode).
        """
        species_logits, mask_logits = self(density)
        return self.atomic_numbers[self.classes_from_logits(species_logits, mask_logits)]
