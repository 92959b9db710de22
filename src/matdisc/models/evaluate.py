"""The seed's reconstruction metrics (Court et al. 2020, Table 5 and Fig. 4).

Two pipelines are scored on held-out structures:

- ``unet_true_density``: the UNet segments the true density; the cell lengths come from
  the true coordinate grid (so their error is the read-back's alone). Measures the
  segmentation + inversion on their own.
- ``vae_unet_chain``: encode (z = μ) → decode → UNet → inverse, cell lengths read from
  the decoded coordinate channels; the seed's full chain.

Per pipeline: non-zero-class voxel recall and macro F1 of the UNet, mean site EMD (Å),
mean |Δ number of sites|, a/b/c MAE (Å) and the fraction of inputs that come back as a
valid structure. |Δ sites| counts every input (0 sites when none is found); the EMD
needs a structure, so it averages over the valid ones (``n_structures`` says how many).
The VAE alone adds its density MSE (normalised units; the seed's "VAE reconstruction
MSE") and the species fidelity of its decoded density (:mod:`matdisc.segment.species`):
the Z of the true sites, least-squares fitted with their true σ, on the decoded map and,
as the reference, on the true map (``species_fit_*`` rows of pipelines ``vae`` and
``true_density``). A VAE with species channels adds ``species_channel_exact`` (the share
of true sites whose element is read back from the channels at the true site) and the
pipeline ``vae_species_chain``: the chain's structures with each species group's element
read from the decoded channels, its voxel scores taken on the species map of the read
structures. Every pipeline also reports its recall and composition shares per structure
class of the truth (``metric:class`` rows).

The density reader (:mod:`matdisc.segment.density`, ``vae.evaluate_density_reader``)
reads the same maps without a UNet: ``density_true_density`` on the true densities (the
reader's own limit), ``vae_density_chain`` on the VAE's decoded densities (what the
decoder still carries of the sites and elements, apart from any UNet).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from matdisc.models.data import VoxelSplit, class_lookup, coords_of, vae_batch
from matdisc.models.inference import (
    class_scores,
    inference_copy,
    run_autocast,
    segment_masked,
    segment_scored,
)
from matdisc.models.unet import UNet3D
from matdisc.models.vae import CondVAE3D
from matdisc.parallel import lagged, worker_pool
from matdisc.segment import InverseSettings, invert, lattice_from_coords
from matdisc.segment.invert import ClassScores
from matdisc.segment.species import (
    Fidelity,
    fit_charges,
    nearest_elements,
    read_descriptors,
    species_from_descriptors,
)
from matdisc.train.device import model_threads_beside
from matdisc.voxel.cell import arrays_from_structure
from matdisc.voxel.radii import radius_lookup

log = logging.getLogger(__name__)

#: The seed's figures (REFERENCE.md), by metric name; NaN where the paper gives none.
PAPER = {
    "density_mse": 0.013,
    "nonzero_recall": 0.87,
    "macro_f1": 0.99,
    "site_emd_mean_angstrom": 0.09,
    "delta_n_sites_mean": 0.198,
    "a_mae_angstrom": 0.06,
    "b_mae_angstrom": 0.06,
    "c_mae_angstrom": 0.06,
}


def true_structures(store: Any, split: VoxelSplit) -> list[Any]:
    """The voxelized conventional cells (pymatgen Structures) of the items of ``split``."""
    return store.structures(split.index)


@dataclass
class Confusion:
    """Voxel confusion counts over class indices 0..K-1 (0 = background).

    Voxels of an element the UNet has no class for (index < 0) are counted apart: they
    are misses for the non-zero recall and left out of the F1.
    """

    n_classes: int
    matrix: np.ndarray = field(init=False)
    unknown_voxels: int = 0

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)

    def add(self, true: np.ndarray, pred: np.ndarray) -> None:
        """true, pred: class indices of the same shape (true < 0: element without class)."""
        true = true.ravel()
        pred = pred.ravel()
        known = true >= 0
        self.unknown_voxels += int((~known).sum())
        # background predicted as background (most voxels) is counted, not binned
        counted = known & ((true != 0) | (pred != 0))
        self.matrix[0, 0] += int(known.sum() - counted.sum())
        flat = true[counted] * self.n_classes + pred[counted]
        self.matrix += np.bincount(flat, minlength=self.matrix.size).reshape(self.matrix.shape)

    def nonzero_recall(self) -> float:
        """Fraction of voxels of a non-background class whose class is predicted right."""
        correct = np.trace(self.matrix) - self.matrix[0, 0]
        total = self.matrix[1:].sum() + self.unknown_voxels
        return float(correct / total) if total else float("nan")

    def by_element(
        self, classes: Sequence[int], top: int = 10
    ) -> list[tuple[str, int, float, float, str]]:
        """The ``top`` most frequent true elements: (symbol, voxels, recall, share the mask
        missed, element most often predicted instead)."""
        from pymatgen.core.periodic_table import Element

        rows = self.matrix[1:]
        total = rows.sum(axis=1)
        out = []
        for k in np.argsort(-total, kind="stable")[:top]:
            if total[k] == 0:
                break
            wrong = rows[k].copy()
            wrong[[0, k + 1]] = 0
            instead = (
                Element.from_Z(int(classes[wrong.argmax() - 1])).symbol if wrong.any() else "-"
            )
            out.append(
                (
                    Element.from_Z(int(classes[k])).symbol,
                    int(total[k]),
                    float(rows[k, k + 1] / total[k]),
                    float(rows[k, 0] / total[k]),
                    instead,
                )
            )
        return out

    def log_elements(self, classes: Sequence[int], label: str) -> None:
        """Log :meth:`by_element`: where the recall is lost (mask or species) per element."""
        parts = [
            f"{sym} {100 * recall:.0f}% (mask missed {100 * missed:.0f}%, else mostly {instead})"
            for sym, _, recall, missed, instead in self.by_element(classes)
        ]
        log.info("%s, recall of the most frequent elements: %s", label, "; ".join(parts))

    def mask_iou(self) -> float:
        """Intersection over union of the atom voxels (any species) with the true ones."""
        inter = self.matrix[1:, 1:].sum()
        union = inter + self.matrix[0, 1:].sum() + self.matrix[1:, 0].sum() + self.unknown_voxels
        return float(inter / union) if union else float("nan")

    def macro_f1(self, *, include_background: bool) -> float:
        """Unweighted mean F1 over the classes present in truth or prediction."""
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        both = m.sum(axis=1) + m.sum(axis=0)
        present = both > 0
        if not include_background:
            present[0] = False
        if not present.any():
            return float("nan")
        return float((2 * tp / np.maximum(both, 1))[present].mean())


@dataclass(frozen=True)
class Scored:
    """One structure's scores against its truth, computed once (the site EMD is a linear
    program) and added to every tally it belongs to (:class:`StructureScores`)."""

    ok: bool
    reason: str | None
    lattice_err: np.ndarray
    has_truth: bool
    dn: int = 0
    emd: float = float("nan")
    same_stoichiometry: bool = False
    same_composition: bool = False


def score(
    result: Any, true: Any, abc_pred: np.ndarray, abc_true: np.ndarray, *, emd: float | None = None
) -> Scored:
    """The scores of one inversion ``result`` against the true structure (None: no truth).
    ``emd``: the site EMD when it is already known (a result whose species alone changed
    has its sites')."""
    from matdisc.segment.metrics import delta_n_sites, site_emd

    err = np.abs(np.asarray(abc_pred, float) - np.asarray(abc_true, float))
    if true is None:
        return Scored(result.ok, result.reason, err, False)
    # Every input counts: a grid with no atom found has 0 sites.
    dn = delta_n_sites(int(result.n_sites), len(true))
    if not result.ok:
        return Scored(False, result.reason, err, True, dn)
    got, want = result.structure.composition, true.composition
    return Scored(
        True,
        None,
        err,
        True,
        dn,
        site_emd(result.structure, true) if emd is None else float(emd),
        got.anonymized_formula == want.anonymized_formula,
        got.reduced_formula == want.reduced_formula,
    )


@dataclass
class StructureScores:
    """Running per-structure scores of one pipeline."""

    emd: list[float] = field(default_factory=list)
    dn: list[int] = field(default_factory=list)
    lattice_err: list[np.ndarray] = field(default_factory=list)
    valid: int = 0
    total: int = 0
    same_stoichiometry: int = 0
    same_composition: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, result: Any, true: Any, abc_pred: np.ndarray, abc_true: np.ndarray) -> None:
        """Score ``result`` against ``true`` (:func:`score`) and add it."""
        self.add_scored(score(result, true, abc_pred, abc_true))

    def add_scored(self, scored: Scored) -> None:
        self.total += 1
        self.lattice_err.append(scored.lattice_err)
        if scored.ok:
            self.valid += 1
        else:
            self.reasons[scored.reason] += 1
        if not scored.has_truth:
            return
        self.dn.append(scored.dn)
        if scored.ok:
            self.emd.append(scored.emd)
            self.same_stoichiometry += scored.same_stoichiometry
            self.same_composition += scored.same_composition

    def rows(self) -> dict[str, tuple[float, int]]:
        err = np.array(self.lattice_err).reshape(-1, 3)
        return {
            "site_emd_mean_angstrom": (_mean(self.emd), len(self.emd)),
            "delta_n_sites_mean": (_mean(self.dn), len(self.dn)),
            "a_mae_angstrom": (_mean(err[:, 0]), len(err)),
            "b_mae_angstrom": (_mean(err[:, 1]), len(err)),
            "c_mae_angstrom": (_mean(err[:, 2]), len(err)),
            "valid_fraction": (self.valid / self.total if self.total else float("nan"), self.total),
            # the filter's stage 2 and the exact composition, over every input with a truth
            "same_stoichiometry_fraction": _share(self.same_stoichiometry, len(self.dn)),
            "same_composition_fraction": _share(self.same_composition, len(self.dn)),
        }


def species_map(structure: Any, data: VoxelSplit) -> np.ndarray:
    """(d, d, d) atomic numbers: the label spheres of ``structure``'s sites on the grid of
    ``data`` (the voxelizer's own labelling, its default label radii)."""
    from matdisc.voxel.core import density_and_species

    _, frac, numbers = arrays_from_structure(structure)
    _, species = density_and_species(
        np.asarray(structure.lattice.abc),
        frac,
        numbers,
        radius_lookup()[numbers],
        grid_size=data.grid_size,
        padding=data.padding,
    )
    return species


class PerClass:
    """Voxel recall and composition shares per structure class of the truth (binary AB,
    perovskite ABX3, Heusler X2YZ, half-Heusler XYZ, other): rows named ``metric:class``."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self.confusion: dict[str, Confusion] = {}
        self.scores: dict[str, StructureScores] = {}

    def add(self, true: np.ndarray, pred: np.ndarray, scored: Scored, truth: Any) -> None:
        """One map: true/predicted class indices (d, d, d) and its inversion's scores."""
        from matdisc.data.records import structure_class

        if truth is None:
            return
        cls = structure_class(truth.composition)
        self.confusion.setdefault(cls, Confusion(self.n_classes)).add(true, pred)
        self.scores.setdefault(cls, StructureScores()).add_scored(scored)

    def rows(self) -> dict[str, tuple[float, int]]:
        out: dict[str, tuple[float, int]] = {}
        for cls in sorted(self.confusion):
            scores = self.scores[cls].rows()
            n = self.scores[cls].total
            out[f"nonzero_recall:{cls}"] = (self.confusion[cls].nonzero_recall(), n)
            for metric in ("same_stoichiometry_fraction", "same_composition_fraction"):
                out[f"{metric}:{cls}"] = scores[metric]
        return out


def _share(count: int, total: int) -> tuple[float, int]:
    return (count / total if total else float("nan"), total)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Pearson correlation of each pair of maps a[i], b[i] (B, ...) over their voxels."""
    a = a.flatten(1) - a.flatten(1).mean(dim=1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(dim=1, keepdim=True)
    denom = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    return ((a * b).sum(dim=1) / denom).cpu().tolist()


def _mean(values: Sequence[float] | np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")


def _rows(
    model: str, pipeline: str, split: str, scores: dict[str, tuple[float, int]]
) -> list[dict]:
    return [
        {
            "model": model,
            "pipeline": pipeline,
            "split": split,
            "metric": name,
            "value": float(value),
            "paper_value": PAPER.get(name, float("nan")),
            "n_structures": int(n),
        }
        for name, (value, n) in scores.items()
    ]


def _invert_scored(
    species: np.ndarray,
    abc: np.ndarray,
    truth: Any,
    abc_true: np.ndarray,
    padding: float,
    settings: InverseSettings,
    scores: ClassScores | None = None,
) -> tuple[Any, Scored]:
    """Invert one species map (cell lengths ``abc``) and score it against ``truth``: the
    per-structure work of the evaluation, run on the worker pool."""
    result = invert(species, lattice_abc=abc, padding=padding, settings=settings, scores=scores)
    return result, score(result, truth, abc, abc_true)


@torch.no_grad()
def evaluate_unet(
    unet: UNet3D,
    data: VoxelSplit,
    truth: Sequence[Any],
    *,
    device: torch.device,
    batch_size: int = 8,
    split: str = "val",
    inverse_settings: InverseSettings,
    threads: int = 1,
    bf16: bool = False,
) -> list[dict]:
    """Rows of the ``unet_true_density`` pipeline (voxel scores + inversion scores);
    inverse_settings: how the UNet's maps are read back into crystals. The UNet runs as
    sampling runs it (:mod:`matdisc.models.inference`; ``bf16``: under bf16 autocast);
    ``threads`` worker processes invert and score the maps of a batch while the UNet runs
    on the next, on half the torch threads (:func:`matdisc.parallel.worker_pool`,
    :func:`matdisc.train.device.model_threads_beside`; the scores are added in order)."""
    unet.eval().to(device)
    fast = inference_copy(unet, bf16=bf16)
    lut = class_lookup(unet.classes)
    confusion = Confusion(unet.n_classes)
    scores = StructureScores()
    per_class = PerClass(unet.n_classes)

    def batches(pool: Executor) -> Iterator[tuple[tuple[range, np.ndarray], list[Future]]]:
        for start in tqdm(
            range(0, len(data), batch_size), desc="evaluate UNet", leave=False, disable=None
        ):
            idx = range(start, min(start + batch_size, len(data)))
            density = torch.from_numpy(data.density[start : idx.stop]).to(device)
            atomic = segment_masked(fast, density).cpu().numpy()
            pred = lut[atomic]
            confusion.add(lut[data.species[start : idx.stop]], pred)
            futures = []
            for j, i in enumerate(idx):
                lattice = data.lattice[i]
                abc = lattice_from_coords(
                    coords_of(lattice, data.grid_size, data.padding), data.padding
                )
                futures.append(
                    pool.submit(
                        _invert_scored,
                        atomic[j],
                        np.asarray(abc, dtype=np.float64),
                        truth[i],
                        lattice,
                        data.padding,
                        inverse_settings,
                    )
                )
            yield (idx, pred), futures

    with worker_pool(threads) as pool, model_threads_beside(threads):
        for (idx, pred), done in lagged(batches(pool)):
            true = lut[data.species[idx.start : idx.stop]]
            for j, (i, (_, scored)) in enumerate(zip(idx, done, strict=True)):
                scores.add_scored(scored)
                per_class.add(true[j], pred[j], scored, truth[i])
    voxel = {
        "nonzero_recall": (confusion.nonzero_recall(), len(data)),
        "mask_iou": (confusion.mask_iou(), len(data)),
        "macro_f1": (confusion.macro_f1(include_background=True), len(data)),
        "macro_f1_nonzero": (confusion.macro_f1(include_background=False), len(data)),
    }
    confusion.log_elements(unet.classes, "UNet on true density")
    if scores.reasons:
        log.info("UNet on true density: no structure for %s", dict(scores.reasons))
    rows = {**voxel, **scores.rows(), **per_class.rows()}
    return _rows("unet", "unet_true_density", split, rows)


#: The density reader's settings on decoded maps (:func:`evaluate_density_reader`).
DECODED_READ = {"floor": 0.05, "kicks": 1, "rounds": 1, "special_rounds": 1}


def evaluate_density_reader(
    maps: Sequence[np.ndarray],
    lattices: Sequence[np.ndarray],
    data: VoxelSplit,
    truth: Sequence[Any],
    *,
    classes: Sequence[int],
    pipeline: str,
    max_sites: int,
    split: str = "val",
    decoded: bool = False,
) -> list[dict]:
    """Rows of ``pipeline``: the crystals :func:`matdisc.segment.density.read_density`
    reads from ``maps`` (d, d, d) e/Å³ with cell lengths ``lattices``, scored against the
    items of ``data`` (same order) like the UNet's: voxel recall on the label spheres of
    the sites read, site EMD, Δsites, composition shares, per structure class. The
    candidate elements are ``classes`` (those the models know); a crystal has at most
    ``max_sites`` sites. ``decoded``: the maps are a decoder's, whose noise shows dozens of
    small maxima: only maxima above :data:`DECODED_READ` ``floor`` of the map's maximum
    start sites, and the searches are shorter (:data:`DECODED_READ`)."""
    import time

    from matdisc.segment.density import read_density
    from matdisc.segment.invert import InversionResult

    started = time.perf_counter()
    lut = class_lookup(classes)
    candidates = np.asarray(list(classes), dtype=np.int64)
    radii = radius_lookup()[candidates]
    confusion = Confusion(len(candidates) + 1)
    scores = StructureScores()
    per_class = PerClass(len(candidates) + 1)
    for i, (grid, abc) in enumerate(
        tqdm(
            zip(maps, lattices, strict=True),
            total=len(maps),
            desc=pipeline,
            leave=False,
            disable=None,
        )
    ):
        read = read_density(
            grid,
            abc,
            data.padding,
            candidates,
            radii,
            max_sites=max_sites,
            **(DECODED_READ if decoded else {}),
        )
        if len(read.numbers):
            result = InversionResult(read.structure(abc), None, len(read.numbers))
            pred = lut[species_map(result.structure, data)]
        else:
            result = InversionResult(None, "no_atoms", 0)
            pred = np.zeros_like(data.species[i], dtype=np.int64)
        true = lut[data.species[i]]
        confusion.add(true, pred)
        scored = score(result, truth[i], abc, data.lattice[i])
        scores.add_scored(scored)
        per_class.add(true, pred, scored, truth[i])
    seconds = time.perf_counter() - started
    log.info(
        "density reader (%s): %d maps in %.0f s, voxel recall %.3f",
        pipeline, len(maps), seconds, confusion.nonzero_recall(),
    )  # fmt: skip
    confusion.log_elements(classes, f"density reader ({pipeline})")
    rows = {
        "nonzero_recall": (confusion.nonzero_recall(), len(maps)),
        "mask_iou": (confusion.mask_iou(), len(maps)),
        "macro_f1_nonzero": (confusion.macro_f1(include_background=False), len(maps)),
        **scores.rows(),
        **per_class.rows(),
        "seconds_per_structure": (seconds / max(len(maps), 1), len(maps)),
    }
    return _rows("density", pipeline, split, rows)


@torch.no_grad()
def evaluate_chain(
    vae: CondVAE3D,
    unet: UNet3D,
    data: VoxelSplit,
    truth: Sequence[Any],
    *,
    device: torch.device,
    batch_size: int = 8,
    split: str = "val",
    inverse_settings: InverseSettings,
    density_reader: bool = False,
    threads: int = 1,
    bf16: bool = False,
) -> list[dict]:
    """Rows of the VAE alone (``vae``) and of the ``vae_unet_chain`` pipeline, and with
    ``density_reader`` of ``vae_density_chain`` (the decoded densities read without UNet).

    Structures with an unknown decile cannot be conditioned and are left out (logged).
    inverse_settings: how the UNet's maps of decoded densities are read back into crystals.
    The VAE and the UNet run as sampling runs them (:mod:`matdisc.models.inference`;
    ``bf16``: under bf16 autocast); ``threads`` worker processes invert and score the maps
    of a batch while the VAE and the UNet run on the next, on half the torch threads
    (:func:`matdisc.parallel.worker_pool`, :func:`matdisc.train.device.model_threads_beside`;
    added in order).
    """
    keep = np.flatnonzero(data.decile >= 0)
    if len(keep) < len(data):
        log.info(
            "evaluation: %d of %d structures skipped: decile unknown",
            len(data) - len(keep),
            len(data),
        )
    data = data.subset(keep)
    truth = [truth[i] for i in keep]
    vae.eval().to(device)
    unet.eval().to(device)
    lut = class_lookup(unet.classes)
    confusion = Confusion(unet.n_classes)
    scores = StructureScores()
    correlations: list[float] = []
    fidelity = {"vae": Fidelity(), "true_density": Fidelity()}
    channel_hits = {"vae": [0, 0], "true_density": [0, 0]}
    reader_confusion = Confusion(unet.n_classes)
    reader_scores = StructureScores()
    chain_classes = PerClass(unet.n_classes)
    reader_classes = PerClass(unet.n_classes)
    # the chain read as sampling reads it by default: invalid compositions charge-aware
    aware_scores = StructureScores()
    strict_valid = {"as_read": 0, "charge_aware": 0, "structures": 0}
    class_numbers = unet.atomic_numbers[1:].cpu().numpy()
    decoded: list[np.ndarray] = []
    decoded_abc: list[np.ndarray] = []
    fast = inference_copy(unet, bf16=bf16)
    fast_vae = inference_copy(vae, bf16=bf16)
    sums = {"density": 0.0, "coords": 0.0, "voxels": 0}

    def batches(pool: Executor) -> Iterator[tuple[tuple, list[Future]]]:
        for start in tqdm(
            range(0, len(data), batch_size), desc="evaluate chain", leave=False, disable=None
        ):
            idx = range(start, min(start + batch_size, len(data)))
            density, coords, cond, species = vae_batch(data, start, start + batch_size, device)
            with run_autocast(fast_vae):
                recon, target, _, _ = fast_vae(density, coords, cond, species)
            recon = recon.float()
            sums["density"] += float(((recon[:, 0] - target[:, 0]) ** 2).sum())
            sums["coords"] += float(((recon[:, 1:4] - target[:, 1:4]) ** 2).sum()) / 3
            sums["voxels"] += target[:, 0].numel()
            correlations.extend(_pearson(recon[:, 0].float(), target[:, 0].float()))
            dens_out = (recon[:, 0] * vae.density_scale).clamp_min(0.0)
            coords_out = recon[:, 1:4] * vae.coord_scale
            channels_out = recon[:, 4:].float().clamp_min(0.0).cpu().numpy()
            dens_np = dens_out.float().cpu().numpy()
            atomic_t, where, logits = segment_scored(fast, dens_out)
            atomic = atomic_t.cpu().numpy()
            pred = lut[atomic]
            true = lut[data.species[start : idx.stop]]
            confusion.add(true, pred)
            probs = class_scores(where, logits, class_numbers, len(idx), data.grid_size)
            abc_all = np.asarray(
                lattice_from_coords(coords_out.float().cpu().numpy(), data.padding)
            )
            if density_reader:
                decoded.extend(dens_np)
                decoded_abc.extend(abc_all)
            futures = [
                pool.submit(
                    _chain_item,
                    atomic[j],
                    abc_all[j],
                    probs[j],
                    dens_np[j],
                    data.density[i],
                    truth[i],
                    data.lattice[i],
                    data.padding,
                    inverse_settings,
                )
                for j, i in enumerate(idx)
            ]
            yield (idx, true, pred, abc_all, channels_out), futures

    with worker_pool(threads) as pool, model_threads_beside(threads):
        for (idx, true, pred, abc_all, channels_out), done in lagged(batches(pool)):
            for j, (i, item) in enumerate(zip(idx, done, strict=True)):
                result = item.result
                scores.add_scored(item.scored)
                aware_scores.add_scored(item.aware)
                if item.valid_as_read is not None:
                    strict_valid["structures"] += 1
                    strict_valid["as_read"] += int(item.valid_as_read)
                    strict_valid["charge_aware"] += int(item.valid_after)
                chain_classes.add(true[j], pred[j], item.scored, truth[i])
                for name, fitted in item.fitted.items():
                    fidelity[name].add(fitted, item.numbers)
                if truth[i] is None or not vae.n_species:
                    continue
                frac, numbers = item.frac, item.numbers
                lat = np.asarray(data.lattice[i], dtype=np.float64)
                # true channels against the table, decoded ones against the decoder's reference
                for name, grid, reference in (
                    ("vae", channels_out[j], vae.species_reference),
                    ("true_density", data.channels[i], None),
                ):
                    values = read_descriptors(grid, lat, frac, padding=data.padding)
                    read, _ = nearest_elements(
                        values, vae.species_channels, unet.classes, reference
                    )
                    channel_hits[name][0] += int((read == numbers).sum())
                    channel_hits[name][1] += len(numbers)
                if result.ok:
                    read = species_from_descriptors(
                        result.structure,
                        channels_out[j],
                        kind=vae.species_channels,
                        candidates=unet.classes,
                        padding=data.padding,
                        reference=vae.species_reference,
                    )
                    result = dataclasses.replace(result, structure=read)
                    read_classes = lut[species_map(read, data)]
                else:
                    read_classes = np.zeros_like(true[j])
                read_scored = score(result, truth[i], abc_all[j], data.lattice[i])
                reader_confusion.add(true[j], read_classes)
                reader_scores.add_scored(read_scored)
                reader_classes.add(true[j], read_classes, read_scored, truth[i])
    confusion.log_elements(unet.classes, "VAE→UNet chain")
    if scores.reasons:
        log.info("VAE→UNet chain: no structure for %s", dict(scores.reasons))
    n = len(data)
    vae_rows = _rows(
        "vae",
        "vae",
        split,
        {
            "density_mse": (sums["density"] / max(sums["voxels"], 1), n),
            "coords_mse": (sums["coords"] / max(sums["voxels"], 1), n),
            "density_correlation": (_mean(correlations), n),
            **fidelity["vae"].scores(),
        },
    )
    vae_rows += _rows("vae", "true_density", split, fidelity["true_density"].scores())
    if vae.n_species:
        for name, (hits, total) in channel_hits.items():
            vae_rows += _rows("vae", name, split, {"species_channel_exact": _share(hits, total)})
        reader_confusion.log_elements(unet.classes, "VAE species-channel chain")
        vae_rows += _rows(
            "vae",
            "vae_species_chain",
            split,
            {
                "nonzero_recall": (reader_confusion.nonzero_recall(), n),
                "mask_iou": (reader_confusion.mask_iou(), n),
                "macro_f1_nonzero": (reader_confusion.macro_f1(include_background=False), n),
                **reader_scores.rows(),
                **reader_classes.rows(),
            },
        )
    chain = {
        "nonzero_recall": (confusion.nonzero_recall(), n),
        "mask_iou": (confusion.mask_iou(), n),
        "macro_f1": (confusion.macro_f1(include_background=True), n),
        "macro_f1_nonzero": (confusion.macro_f1(include_background=False), n),
        **scores.rows(),
        "strict_valid_fraction": _share(strict_valid["as_read"], strict_valid["structures"]),
        **chain_classes.rows(),
    }
    aware = {
        **aware_scores.rows(),
        "strict_valid_fraction": _share(strict_valid["charge_aware"], strict_valid["structures"]),
    }
    rows = (
        vae_rows
        + _rows("vae", "vae_unet_chain", split, chain)
        + _rows("vae", "vae_unet_chain_charge_aware", split, aware)
    )
    if density_reader:
        rows += evaluate_density_reader(
            decoded,
            decoded_abc,
            data,
            truth,
            classes=unet.classes,
            pipeline="vae_density_chain",
            max_sites=inverse_settings.max_sites,
            split=split,
            decoded=True,
        )
    return rows


@dataclass(frozen=True)
class _ChainItem:
    """One decoded map's evaluation (:func:`_chain_item`)."""

    result: Any
    scored: Scored
    #: the scores after the charge-aware species choice (the same sites, so the same EMD)
    aware: Scored
    #: strict validity of the composition as read and after the choice; None: not read
    valid_as_read: bool | None
    valid_after: bool | None
    #: the true sites' Z fitted on the decoded ("vae") and true ("true_density") maps
    fitted: dict[str, np.ndarray]
    #: the true sites (fractional positions, atomic numbers); None without a truth
    frac: np.ndarray | None
    numbers: np.ndarray | None


def _chain_item(
    species: np.ndarray,
    abc: np.ndarray,
    probs: ClassScores,
    decoded: np.ndarray,
    density: np.ndarray,
    truth: Any,
    lattice: np.ndarray,
    padding: float,
    settings: InverseSettings,
) -> _ChainItem:
    """The per-structure work of :func:`evaluate_chain`, run on the worker pool: invert the
    UNet's map of a decoded density with its class probabilities, score it as read and as
    sampling reads it by default (an invalid composition read charge-aware,
    :mod:`matdisc.segment.readback`, the strict rule), and fit the true sites' Z on the
    decoded and the true density (the species fidelity)."""
    result, scored = _invert_scored(species, abc, truth, lattice, padding, settings, probs)
    aware, aware_scored = result, scored
    as_read = after = None
    if result.ok and result.soft is not None:
        from matdisc.segment.readback import charge_aware
        from matdisc.stability.validity import is_strict_valid

        picked = charge_aware(result.structure, result.soft, valid=is_strict_valid)
        as_read, after = picked.valid_unconstrained, picked.valid
        aware = dataclasses.replace(result, structure=picked.structure)
        aware_scored = score(aware, truth, abc, lattice, emd=scored.emd)
    fitted: dict[str, np.ndarray] = {}
    frac = numbers = None
    if truth is not None:
        _, frac, numbers = arrays_from_structure(truth)
        lat = np.asarray(lattice, dtype=np.float64)
        sigma = radius_lookup()[numbers]
        for name, grid in (("vae", decoded), ("true_density", density)):
            fitted[name] = fit_charges(grid, lat, frac, sigma, padding=padding)
    return _ChainItem(result, scored, aware_scored, as_read, after, fitted, frac, numbers)


def training_rows(
    model: str, result: Any, n_train: int, n_val: int, split: str = "val"
) -> list[dict]:
    """Rows summarising a :class:`matdisc.train.FitResult`."""
    best = result.history[result.best_epoch - 1] if result.best_epoch > 0 else {}
    seen = sum(h.get("train_samples", 0.0) for h in result.history)
    rows = {
        "epochs_run": (result.epochs_run, n_train),
        "best_epoch": (result.best_epoch, n_train),
        "stopped_early": (float(result.stopped_early), n_train),
        "time_capped": (float(result.time_capped), n_train),
        "train_seconds": (result.seconds, n_train),
        "train_samples_per_second": (
            seen / result.seconds if result.seconds else float("nan"),
            n_train,
        ),
        "best_val_loss": (best.get("val_loss", float("nan")), n_val),
    }
    return _rows(model, "training", split, rows)


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        rows,
        columns=["model", "pipeline", "split", "metric", "value", "paper_value", "n_structures"],
    )
