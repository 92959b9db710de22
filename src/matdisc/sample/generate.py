"""Latent vectors -> crystals: VAE decode -> UNet segment -> inverse map -> distance check.

With ``species_reader="channels"`` (a VAE trained with ``vae.species_channels``) each
species group of the inverted structure takes the element its decoded channels read as
(:func:`matdisc.segment.species.species_from_descriptors`); the UNet then only delimits
the atoms.

:class:`Generator` runs the chain in batches and keeps the time spent in each step
(``decode``, ``segment``, ``invert``, ``distance``; seconds) in :attr:`Generator.timings`.
The inverse runs on a thread pool: scikit-image/scipy release the GIL for most of it.
For inference the BatchNorm layers are folded into the convolutions before them
(:func:`fold_batchnorm`; same outputs to float rounding, ~15% faster UNet on CPU), and
the species head is evaluated only on the voxels the mask head marks
(:func:`segment_masked`; the same map as ``UNet3D.segment``, about 40% faster: the full
(B, K, d, d, d) logits tensor is never built).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise, repeat
from typing import Any

import numpy as np
import torch
from torch import nn

from matdisc.geometry import shortest_distance
from matdisc.progress import progress
from matdisc.segment import InverseSettings, invert, lattice_from_coords
from matdisc.segment.invert import ClassScores

log = logging.getLogger(__name__)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every Conv3d -> BatchNorm3d pair inside an
    ``nn.Sequential`` replaced by one convolution (the BatchNorm becomes Identity)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.Conv3d) and isinstance(module[i + 1], nn.BatchNorm3d):
                module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                module[i + 1] = nn.Identity()
    return model


@torch.inference_mode()
def segment_masked(unet: Any, density: torch.Tensor) -> torch.Tensor:
    """``UNet3D.segment`` with the species head applied to occupied voxels only.

    density: (B, [1,] d, d, d). Returns (B, d, d, d) int64 atomic numbers, 0 = empty:
    equal to ``unet.segment(density)`` (tested), without the dense class-logit tensor.
    """
    return segment_scored(unet, density)[0]


@torch.inference_mode()
def segment_scored(
    unet: Any, density: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
    """:func:`segment_masked`, plus the occupied voxels (``nonzero`` indices: batch, x, y,
    z) and their element-class logits (M, k; background excluded, the columns of
    ``unet.atomic_numbers[1:]``)."""
    skips = unet.features(density)
    h = skips[-1]
    for block, skip in zip(unet.up, reversed(skips[:-1]), strict=True):
        h = block(torch.cat([unet.upsample(h), skip], dim=1))
    occupied = unet.mask_head(h).squeeze(1) > 0
    where = occupied.nonzero(as_tuple=True)
    features = h.permute(0, 2, 3, 4, 1)[where]  # (M, C) of the occupied voxels
    weight = unet.species_head.weight[1:, :, 0, 0, 0]  # background class excluded
    logits = torch.addmm(unet.species_head.bias[1:], features, weight.t())
    out = torch.zeros(occupied.shape, dtype=torch.long, device=density.device)
    out[where] = unet.atomic_numbers[logits.argmax(dim=1) + 1]
    return out, where, logits


def class_scores(
    where: tuple[torch.Tensor, ...], logits: torch.Tensor, numbers: np.ndarray, batch: int, d: int
) -> list[ClassScores]:
    """Per grid of a batch, the probabilities of its occupied voxels (softmax of the
    element-class ``logits`` of :func:`segment_scored`; ``numbers``: the classes' atomic
    numbers)."""
    probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
    b, x, y, z = (w.cpu().numpy() for w in where)
    flat = np.ravel_multi_index((x, y, z), (d, d, d))
    order = np.argsort(b, kind="stable")
    bounds = np.searchsorted(b[order], np.arange(batch + 1))
    return [
        ClassScores(flat[order[lo:hi]], probs[order[lo:hi]], numbers) for lo, hi in pairwise(bounds)
    ]


def _one(
    species: np.ndarray,
    abc: np.ndarray,
    channels: np.ndarray | None,
    padding: float,
    settings: InverseSettings,
    reader: tuple[str, list[int], dict | None] | None,
    scores: ClassScores | None = None,
    choice: str = "argmax",
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Invert one grid (species (d, d, d), cell lengths abc (3,) Å) and measure its
    structure; with ``reader`` (descriptor set, candidate elements, the VAE's reference
    descriptors) every orbit takes the
    element its decoded species ``channels`` (1 + k, d, d, d) read as. With the UNet's
    class ``scores`` the orbits' alternatives and the validity of the read are recorded,
    and with ``choice="charge_aware"`` an invalid composition takes the most probable
    valid combination, with ``choice="sampled"`` every orbit's element is drawn with
    ``rng`` (:mod:`matdisc.segment.readback`). Returns a samples-table row fragment."""
    started = time.perf_counter()
    result = invert(species, lattice_abc=abc, padding=padding, settings=settings, scores=scores)
    read: dict[str, Any] = {
        "formula_unconstrained": None,
        "valid_unconstrained": None,
        "choice_rank": None,
        "species_alternatives_json": None,
    }
    if result.ok and reader is None and result.soft is not None:
        from matdisc.segment.readback import charge_aware, sampled
        from matdisc.stability.validity import is_strict_valid

        if choice == "sampled":
            if rng is None:
                raise ValueError("species_choice 'sampled' needs a random generator")
            picked = sampled(result.structure, result.soft, valid=is_strict_valid, rng=rng)
        else:
            picked = charge_aware(
                result.structure,
                result.soft,
                valid=is_strict_valid,
                choose=choice == "charge_aware",
            )
        result = dataclasses.replace(result, structure=picked.structure)
        read.update(
            formula_unconstrained=picked.formula_unconstrained,
            valid_unconstrained=picked.valid_unconstrained,
            choice_rank=picked.rank,
            species_alternatives_json=picked.alternatives_json,
        )
    if result.ok and reader is not None and channels is not None:
        from matdisc.segment.species import species_from_descriptors

        kind, candidates, reference = reader
        structure = species_from_descriptors(
            result.structure,
            channels,
            kind=kind,
            candidates=candidates,
            padding=padding,
            reference=reference,
        )
        result = dataclasses.replace(result, structure=structure)
    mid = time.perf_counter()
    row: dict[str, Any] = {
        "reason": result.reason,
        "n_sites": int(result.n_sites),
        "lattice_a_angstrom": float(abc[0]),
        "lattice_b_angstrom": float(abc[1]),
        "lattice_c_angstrom": float(abc[2]),
        "min_distance_angstrom": float("nan"),
        "formula": None,
        "formula_anonymous": None,
        "structure": None,
        **read,
    }
    if result.ok:
        s = result.structure
        comp = s.composition
        row.update(
            min_distance_angstrom=shortest_distance(s.frac_coords, s.lattice.matrix),
            formula=comp.reduced_formula,
            formula_anonymous=comp.anonymized_formula,
            structure=s,
        )
    row["_t_invert"] = mid - started
    row["_t_distance"] = time.perf_counter() - mid
    return row


class Generator:
    """The trained chain. vae: ``CondVAE3D``; unet: ``UNet3D`` (both in eval mode, on
    ``device``); padding: the grid padding fraction; inverse_settings: how the grids are
    read back into crystals (:meth:`matdisc.segment.InverseSettings.from_config`, usually
    with ``decoded=True``); species_reader: ``unet`` or ``channels`` (see the module);
    species_choice: ``argmax`` (each orbit takes the UNet's majority element),
    ``charge_aware`` or ``sampled`` (:mod:`matdisc.segment.readback`; UNet reader only)."""

    def __init__(
        self,
        *,
        vae: Any,
        unet: Any,
        padding: float,
        inverse_settings: InverseSettings,
        device: torch.device | str = "cpu",
        threads: int = 1,
        species_reader: str = "unet",
        species_choice: str = "argmax",
    ) -> None:
        self.vae = fold_batchnorm(vae)
        self.species_choice = species_choice
        self.unet = fold_batchnorm(unet)
        # Inference runs in fp32, where channels-last 3-D is the faster layout whatever
        # the layout the models were trained in (benchmarks/bench_training.py).
        for model in (self.vae, self.unet):
            model.channels_last = True
            model.to(memory_format=torch.channels_last_3d)
        self.padding = float(padding)
        self.device = torch.device(device)
        self.inverse_settings = inverse_settings
        self.threads = max(1, int(threads))
        self.timings: dict[str, float] = defaultdict(float)
        #: (descriptor set, candidate elements, reference descriptors) of the species-
        #: channel reader, or None (the UNet's species)
        self.reader = None
        if species_reader == "channels":
            if not getattr(vae, "n_species", 0):
                from matdisc.errors import UserError

                raise UserError(
                    "sample.species_reader: channels needs a VAE trained with species "
                    "channels; set vae.species_channels: table_position (and retrain) or "
                    "sample.species_reader: unet."
                )
            self.reader = (
                vae.species_channels,
                [int(z) for z in unet.classes],
                vae.species_reference,
            )

    @torch.inference_mode()
    def encode(
        self,
        density: np.ndarray,
        coords: np.ndarray,
        condition: np.ndarray,
        species: np.ndarray | None = None,
    ) -> np.ndarray:
        """μ (B, latent_dim) of density (B, d, d, d), coords (B, 3, d, d, d) Å, condition
        (B, 10) and, for a VAE with them, species channels (B, 1 + k, d, d, d)."""
        mu, _ = self.vae.encode(
            torch.as_tensor(density, device=self.device),
            torch.as_tensor(coords, device=self.device),
            torch.as_tensor(condition, device=self.device),
            None if species is None else torch.as_tensor(species, device=self.device),
        )
        return mu.float().cpu().numpy()

    @torch.inference_mode()
    def grids(
        self, z: np.ndarray, condition: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[ClassScores] | None]:
        """Species maps (B, d, d, d) atomic numbers, cell lengths (B, 3) Å, the decoded
        species channels (B, 1 + k, d, d, d) (None without them) of latents, and the
        UNet's class probabilities of each map's occupied voxels (None with the channel
        reader)."""
        t0 = time.perf_counter()
        density, coords, channels = self.vae.decode_all(
            torch.as_tensor(z, device=self.device), torch.as_tensor(condition, device=self.device)
        )
        abc = np.asarray(lattice_from_coords(coords, self.padding).cpu().numpy(), dtype=np.float64)
        t1 = time.perf_counter()
        species, where, logits = segment_scored(self.unet, density)
        species_np = species.cpu().numpy().astype(np.uint8)
        scores = None
        if self.reader is None:
            numbers = self.unet.atomic_numbers[1:].cpu().numpy()
            scores = class_scores(where, logits, numbers, len(species_np), species_np.shape[1])
        t2 = time.perf_counter()
        self.timings["decode"] += t1 - t0
        self.timings["segment"] += t2 - t1
        return species_np, abc, None if channels is None else channels.cpu().numpy(), scores

    def run(
        self,
        z: np.ndarray,
        condition: np.ndarray,
        *,
        batch_size: int = 32,
        desc: str | None = None,
        seed: int = 0,
    ) -> list[dict[str, Any]]:
        """One row fragment per latent (same order): reason, n_sites, lattice lengths,
        min distance, formulas and the pymatgen ``structure`` (None when no structure).
        ``seed``: the species draws of ``species_choice: sampled`` (draw i uses the
        generator of (seed, i), so threads and batch sizes do not change them)."""
        rows: list[dict[str, Any]] = []
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            batches = range(0, len(z), batch_size)
            for start in batches if desc is None else progress(batches, desc=desc, unit="batch"):
                sl = slice(start, start + batch_size)
                species, abc, channels, scores = self.grids(z[sl], condition[sl])
                t0 = time.perf_counter()
                padding, settings = repeat(self.padding), repeat(self.inverse_settings)
                reader, choice = repeat(self.reader), repeat(self.species_choice)
                per_item = repeat(None) if channels is None else channels
                per_scores = repeat(None) if scores is None else scores
                rngs = (np.random.default_rng([seed, i]) for i in range(start, start + len(abc)))
                part = list(
                    pool.map(
                        _one,
                        species,
                        abc,
                        per_item,
                        padding,
                        settings,
                        reader,
                        per_scores,
                        choice,
                        rngs,
                    )
                )
                wall = time.perf_counter() - t0
                # split the pool's wall time between invert and distance by their CPU shares
                cpu_inv = sum(r.pop("_t_invert") for r in part)
                cpu_dist = sum(r.pop("_t_distance") for r in part)
                total = cpu_inv + cpu_dist
                share = cpu_inv / total if total > 0 else 1.0
                self.timings["invert"] += wall * share
                self.timings["distance"] += wall * (1 - share)
                rows.extend(part)
        return rows
