"""Conditional deep-feature-consistent VAE over density + coordinate grids.

Seed 000 (Court et al. 2020), Fig. 1a and Methods "Conditional Deep-Feature-Consistent
Variational Autoencoder": the input is the density map M with the Cartesian coordinate
grid C of its voxels (coordinate convolution, four channels); the encoder repeats
Conv3D → BatchNorm → LeakyReLU → MaxPool; the latent has 256 dimensions (μ, log σ²);
the one-hot formation-energy decile (10 dimensions) is concatenated at the input
(broadcast as 10 constant channels) and at the bottleneck; the decoder mirrors the
encoder with upsampling and returns density and coordinates. The unit-cell lengths are
read back from the decoded coordinates (:func:`matdisc.segment.lattice_from_coords`).

Species channels (``species_channels``, a departure from the seed, off in its preset): an
occupancy channel and element-descriptor channels (:mod:`matdisc.segment.species`) enter
beside the density and come back out of the decoder, so the latent carries the elements
and a reader takes them from the decoded channels rather than from the density's shape.

Units: callers pass and receive densities as the voxel store holds them and coordinates
in Å; inside, densities are divided by ``density_scale`` and coordinates by
``coord_scale`` so that all four channels are O(1). The loss compares the normalised
tensors that :meth:`CondVAE3D.forward` returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from matdisc.errors import UserError

#: |log σ²| stays below this (soft bound, tanh); σ² in [2e-9, 5e8].
LOGVAR_BOUND = 20.0


def _down_block(in_channels: int, out_channels: int, slope: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(slope, inplace=True),
        nn.MaxPool3d(2),
    )


def _up_block(in_channels: int, out_channels: int, slope: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(slope, inplace=True),
    )


class CondVAE3D(nn.Module):
    """Conditional VAE: (density, coords, condition) -> latent -> (density, coords).

    Args:
        grid_size: voxels per side ``d``; divisible by ``2**len(channels)``.
        channels: encoder widths, one per Conv/Pool block (the decoder mirrors them).
        latent_dim: size of z (the seed's 256).
        n_conditions: size of the one-hot condition (the seed's 10 deciles).
        density_scale: density units per network unit.
        coord_scale: Å per network unit of the coordinate channels.
        negative_slope: LeakyReLU slope.
        channels_last: channels-last 3-D memory format for the convolutions.
        species_channels: descriptor set of the species channels
            (:data:`matdisc.segment.species.DESCRIPTOR_KINDS`; ``none`` = the seed's four).
        species_reference: {atomic number: descriptor} the decoder gives each element on
            average (see :meth:`set_species_reference`); the reader compares decoded
            descriptors with these rather than with the elements' table positions.
    """

    def __init__(
        self,
        *,
        grid_size: int = 32,
        channels: Sequence[int] = (8, 16, 32, 64),
        latent_dim: int = 256,
        n_conditions: int = 10,
        density_scale: float = 1.0,
        coord_scale: float = 10.0,
        negative_slope: float = 0.2,
        channels_last: bool = False,
        species_channels: str = "none",
        species_reference: dict[int, list[float]] | None = None,
    ) -> None:
        super().__init__()
        from matdisc.segment.species import DESCRIPTOR_KINDS, descriptor_table

        if species_channels not in DESCRIPTOR_KINDS:
            raise UserError(
                f"vae.species_channels must be one of {', '.join(DESCRIPTOR_KINDS)}, "
                f"got {species_channels!r}."
            )
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1 or latent_dim < 1 or n_conditions < 0:
            raise UserError(
                f"vae needs at least one positive channel width and latent_dim >= 1 "
                f"(got channels={channels}, latent_dim={latent_dim}); fix the vae config section."
            )
        if grid_size % 2 ** len(channels):
            raise UserError(
                f"a VAE with {len(channels)} pooling blocks needs a grid size divisible by "
                f"{2 ** len(channels)}, got {grid_size}; change voxel.grid_size or vae.channels."
            )
        if not (density_scale > 0 and coord_scale > 0):
            raise UserError("vae density_scale and coord_scale must be positive.")
        self.model_args = dict(
            grid_size=int(grid_size),
            channels=channels,
            latent_dim=int(latent_dim),
            n_conditions=int(n_conditions),
            density_scale=float(density_scale),
            coord_scale=float(coord_scale),
            negative_slope=float(negative_slope),
            channels_last=bool(channels_last),
            species_channels=str(species_channels),
            species_reference=None,
        )
        self.species_channels = str(species_channels)
        self.species_reference: dict[int, list[float]] | None = None
        if species_reference is not None:
            self.set_species_reference(species_reference)
        #: occupancy + descriptor channels beside density and coordinates (0 = none)
        self.n_species = (
            0 if species_channels == "none" else 1 + descriptor_table(species_channels).shape[1]
        )
        n_grids = 4 + self.n_species
        self.grid_size = int(grid_size)
        self.latent_dim = int(latent_dim)
        self.n_conditions = int(n_conditions)
        self.density_scale = float(density_scale)
        self.coord_scale = float(coord_scale)
        self.channels_last = bool(channels_last)
        self.bottom = self.grid_size // 2 ** len(channels)
        self._bottom_shape = (channels[-1], self.bottom, self.bottom, self.bottom)
        flat = channels[-1] * self.bottom**3

        widths_in = [n_grids + n_conditions, *channels[:-1]]
        self.encoder = nn.Sequential(
            *(_down_block(i, o, negative_slope) for i, o in zip(widths_in, channels, strict=True))
        )
        self.to_stats = nn.Linear(flat, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim + n_conditions, flat)
        rev = channels[::-1]
        self.decoder = nn.Sequential(
            nn.LeakyReLU(negative_slope),
            *(
                _up_block(i, o, negative_slope)
                for i, o in zip(rev, [*rev[1:], rev[-1]], strict=True)
            ),
        )
        self.head = nn.Conv3d(rev[-1], n_grids, 3, padding=1)
        if self.channels_last:
            self.to(memory_format=torch.channels_last_3d)

    def set_species_reference(self, reference: dict[int, list[float]]) -> None:
        """Keep (and save with the model) the mean decoded descriptor of each element."""
        self.species_reference = {int(z): [float(x) for x in v] for z, v in reference.items()}
        self.model_args["species_reference"] = self.species_reference

    # -- normalised tensors (what the loss compares) -----------------------------------
    def normalise(
        self, density: torch.Tensor, coords: torch.Tensor, species: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 4 [+ n_species], d, d, d): density / density_scale, coords / coord_scale and
        the species channels as they are (already O(1)).

        ``density``: (B, [1,] d, d, d) store units; ``coords``: (B, 3, d, d, d) Å;
        ``species``: (B, n_species, d, d, d), required when the model has species channels.
        """
        if density.dim() == 4:
            density = density.unsqueeze(1)
        parts = [density / self.density_scale, coords / self.coord_scale]
        if self.n_species:
            if species is None or species.shape[1] != self.n_species:
                raise ValueError(
                    f"this VAE takes {self.n_species} species channels "
                    f"({self.species_channels}); got "
                    f"{None if species is None else tuple(species.shape)}"
                )
            parts.append(species.to(density.dtype))
        return torch.cat(parts, dim=1)

    def _check_condition(self, condition: torch.Tensor, batch: int) -> torch.Tensor:
        if condition.shape != (batch, self.n_conditions):
            raise ValueError(
                f"condition must be (B={batch}, {self.n_conditions}), got {tuple(condition.shape)}"
            )
        return condition

    def encode_normalised(
        self, x: torch.Tensor, condition: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """μ, log σ² (B, latent_dim) of normalised input ``x`` (B, 4 [+ n_species], d, d, d)."""
        b, _, d1, d2, d3 = x.shape
        if (d1, d2, d3) != (self.grid_size,) * 3:
            raise ValueError(f"input grid {(d1, d2, d3)} differs from the model's {self.grid_size}")
        condition = self._check_condition(condition, b).to(x.dtype)
        cond_channels = condition[:, :, None, None, None].expand(b, self.n_conditions, d1, d2, d3)
        h = torch.cat([x, cond_channels], dim=1)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last_3d)
        h = self.encoder(h).flatten(1)
        mu, logvar = self.to_stats(h).chunk(2, dim=1)
        # Bounded log-variance: an early large step can otherwise overflow exp(logvar)
        # in the KL term (seen on CPU runs at lr 1e-3: val KLD 2e9 for one batch).
        return mu, LOGVAR_BOUND * torch.tanh(logvar / LOGVAR_BOUND)

    def decode_normalised(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Normalised reconstruction (B, 4 [+ n_species], d, d, d) of latents ``z`` (B, latent_dim)."""
        condition = self._check_condition(condition, z.shape[0]).to(z.dtype)
        h = self.from_latent(torch.cat([z, condition], dim=1)).view(-1, *self._bottom_shape)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last_3d)
        return self.head(self.decoder(h))

    def forward(
        self,
        density: torch.Tensor,
        coords: torch.Tensor,
        condition: torch.Tensor,
        species: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (reconstruction, target, μ, log σ²), both grids normalised
        (B, 4 [+ n_species], d, d, d).

        z is drawn with the reparametrisation trick in train mode and is μ in eval mode.
        """
        target = self.normalise(density, coords, species)
        mu, logvar = self.encode_normalised(target, condition)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode_normalised(z, condition), target, mu, logvar

    # -- physical units (what the sampler and evaluation use) --------------------------
    def encode(
        self,
        density: torch.Tensor,
        coords: torch.Tensor,
        condition: torch.Tensor,
        species: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """μ, log σ² (B, latent_dim) of density (B, [1,] d, d, d), coords (B, 3, d, d, d) Å,
        one-hot condition (B, n_conditions) and species channels (B, n_species, d, d, d)."""
        return self.encode_normalised(self.normalise(density, coords, species), condition)

    def decode_all(
        self, z: torch.Tensor, condition: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Density (B, d, d, d) in store units (clamped at 0), coords (B, 3, d, d, d) Å and
        the species channels (B, n_species, d, d, d) clamped at 0 (None without them)."""
        out = self.decode_normalised(z, condition).float()
        density = (out[:, 0] * self.density_scale).clamp_min(0.0)
        species = out[:, 4:].clamp_min(0.0) if self.n_species else None
        return density, out[:, 1:4] * self.coord_scale, species

    def decode(self, z: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density (B, d, d, d) in store units (clamped at 0) and coords (B, 3, d, d, d) Å."""
        density, coords, _ = self.decode_all(z, condition)
        return density, coords
