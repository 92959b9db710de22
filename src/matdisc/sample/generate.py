"""Latent vectors -> crystals: VAE decode -> UNet segment -> inverse map -> distance check.

With ``species_reader="channels"`` (a VAE trained with ``vae.species_channels``) each
species group of the inverted structure takes the element its decoded channels read as
(:func:`matdisc.segment.species.species_from_descriptors`); the UNet then only delimits
the atoms.

:class:`Generator` runs the chain in batches and keeps the time spent in each step
(``decode``, ``segment``, ``invert``, ``distance``; seconds) in :attr:`Generator.timings`.
The inverse runs on a thread pool: scikit-image/scipy release the GIL for most of it.
The models run as :mod:`matdisc.models.inference` prepares them (BatchNorm folded,
channels-last, the species head only on the voxels the mask marks).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from typing import Any

import numpy as np
import torch

from matdisc.geometry import shortest_distance
from matdisc.models.inference import class_scores, inference_copy, run_autocast, segment_scored
from matdisc.parallel import single_blas_thread
from matdisc.progress import progress
from matdisc.segment import InverseSettings, invert, lattice_from_coords
from matdisc.segment.invert import ClassScores

log = logging.getLogger(__name__)


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
    ``charge_aware`` or ``sampled`` (:mod:`matdisc.segment.readback`; UNet reader only);
    bf16: the VAE decodes and the UNet segments under bf16 autocast
    (:func:`matdisc.train.device.inference_bf16`)."""

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
        bf16: bool = False,
    ) -> None:
        self.vae = inference_copy(vae, bf16=bf16)
        self.species_choice = species_choice
        self.unet = inference_copy(unet, bf16=bf16)
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
        with run_autocast(self.vae):
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
        with run_autocast(self.vae):
            density, coords, channels = self.vae.decode_all(
                torch.as_tensor(z, device=self.device),
                torch.as_tensor(condition, device=self.device),
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
        with single_blas_thread(), ThreadPoolExecutor(max_workers=self.threads) as pool:
            batches = range(0, len(z), batch_size)
            for start in batches if desc is None else progress(batches, desc=desc, unit="batch"):
                sl = slice(start, start + batch_size)
                species, abc, channels, scores = self.grids(z[sl], condition[sl])
                t0 = time.perf_counter()
                padding, settings = repeat(self.padding), repeat(self.inverse_settings)
                reader, choice = repeat(self.reader), repeat(self.species_choice)
                per_item = repeat(None) if channels is None else channels
                per_scores = repeat(None) if scores is None else scores
                rngs = (
                    (np.random.default_rng([seed, i]) for i in range(start, start + len(abc)))
                    if self.species_choice == "sampled"
                    else repeat(None)
                )
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
