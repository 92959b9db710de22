"""A 2-D map of the conditional VAE's latent space (Court et al. 2020, Cond-DFC-VAE).

Every structure of the voxel store with a formation-energy decile is encoded to its
latent mean μ, conditioned on that decile (:func:`matdisc.sample.stage.decile_of`, the
sampler's own rule). The μ of the train and val splits fit a PCA (numpy SVD, centred
on their mean); all μ are projected onto its first two components and scattered,
coloured by decile. Each base compound's μ is marked, with the first ``n_draws`` latent
draws the ``sample-structures`` stage made around it: the same draws, rebuilt with the
stage's own functions and seeding (:func:`matdisc.sample.stage.draws_for`), not decoded.

Encoding goes through :meth:`matdisc.sample.generate.Generator.encode` on the VAE with
its BatchNorm folded, exactly as the sampler encodes the base, so μ_base (and so the
draws) match the stage's to float rounding.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from matdisc.errors import UserError

log = logging.getLogger(__name__)

#: Structures encoded per batch (a multiple of the store's 8-entry chunks).
BATCH = 64
#: Colours of the bases' markers and draws (apart from the viridis decile scale).
BASE_COLOURS = ("tab:red", "black", "tab:pink", "tab:orange", "tab:brown", "tab:cyan")


class _Encoder:
    """The encoding half of :class:`matdisc.sample.generate.Generator`: the same folded,
    channels-last VAE and the same ``encode`` (without a UNet to load)."""

    def __init__(self, vae: Any, device: Any) -> None:
        import torch

        from matdisc.models.inference import inference_copy
        from matdisc.sample.generate import Generator

        self.vae = inference_copy(vae)
        self.device = torch.device(device)
        self._encode = Generator.encode

    def encode(self, *grids: np.ndarray | None) -> np.ndarray:
        """μ of (density, coords, condition[, species channels]): Generator.encode's."""
        return self._encode(self, *grids)


def _deciles(store: Any) -> np.ndarray:
    """Decile per store entry (-1 where there is none: no formation energy)."""
    from matdisc.sample.stage import decile_of

    out = np.full(len(store), -1, dtype=np.int64)
    for i in range(len(store)):
        with contextlib.suppress(UserError):
            out[i] = decile_of(store, i)
    return out


def _encode_all(enc: _Encoder, store: Any, index: np.ndarray, deciles: np.ndarray) -> np.ndarray:
    """μ (len(index), latent_dim) of store entries ``index`` (ascending) conditioned on
    ``deciles``."""
    import torch

    from matdisc.models.data import species_channels_of
    from matdisc.sample import latent

    out = []
    with torch.no_grad():
        for start in range(0, len(store), BATCH):  # windows of store rows: whole chunks
            take = (index >= start) & (index < start + BATCH)
            if not take.any():
                continue
            idx = index[take]
            window = np.asarray(store.density[start : start + BATCH], dtype=np.float32)
            density = np.ascontiguousarray(window[idx - start])
            coords = np.stack([store.coords(int(i)) for i in idx])
            species = species_channels_of(store, idx, enc.vae.species_channels)
            out.append(enc.encode(density, coords, latent.onehot(deciles[take]), species))
    return np.concatenate(out).astype(np.float64)


def _base_index(store: Any, base: str, bases_table: Path) -> int:
    """Store row of ``base``: the material the base-compounds table names for it."""
    from matdisc.data.bases import base_row
    from matdisc.io import read_table
    from matdisc.sample.stage import store_index

    row = base_row(read_table(bases_table, "base_compounds"), base)
    return store_index(store, str(row["material_id"]), f"base compound '{base}'")


def _pca(mu_fit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (D,), first two components (2, D) and their explained-variance ratios (2,)."""
    mean = mu_fit.mean(axis=0)
    _, s, vt = np.linalg.svd(mu_fit - mean, full_matrices=False)
    var = s**2
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    components = np.zeros((2, mu_fit.shape[1]))
    k = min(2, len(vt))
    components[:k] = vt[:k]
    return mean, components, np.pad(ratio[:k], (0, 2 - k))


def _label_direction(
    at: np.ndarray, others: list[np.ndarray], points: np.ndarray
) -> tuple[float, float]:
    """Unit direction (in axis-range units) to put a base's label: away from the nearest
    other base marker, or away from the centre of the map when it is the only one."""
    span = np.ptp(points, axis=0)
    span = np.where(span > 0, span, 1.0)
    rest = [o for o in others if not np.array_equal(o, at)]
    if rest:
        near = min(rest, key=lambda o: float(np.linalg.norm((o - at) / span)))
        v = (at - near) / span
    else:
        v = (at - points.mean(axis=0)) / span
    norm = float(np.linalg.norm(v))
    return (float(v[0] / norm), float(v[1] / norm)) if norm > 0 else (0.7, 0.7)


def _plot(
    out_png: Path,
    xy: np.ndarray,
    deciles: np.ndarray,
    ratio: np.ndarray,
    bases: dict[str, dict[str, Any]],
    n_draws: int,
    mode: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm

    from matdisc.io.atomic import atomic_path

    cmap = plt.get_cmap("viridis", 10)
    norm = BoundaryNorm(np.arange(-0.5, 10.5), cmap.N)
    fig, ax = plt.subplots(figsize=(8.5, 7), dpi=120)
    points = ax.scatter(
        xy[:, 0], xy[:, 1], c=deciles, cmap=cmap, norm=norm, s=10, alpha=0.75,
        linewidths=0, zorder=1,
    )  # fmt: skip
    for k, (base, b) in enumerate(bases.items()):
        colour = BASE_COLOURS[k % len(BASE_COLOURS)]
        ax.scatter(
            b["draws_xy"][:, 0], b["draws_xy"][:, 1], s=9, marker="x", color=colour,
            alpha=0.35, linewidths=0.8, zorder=2,
        )  # fmt: skip
        ax.scatter(
            *b["mu_xy"], s=320, marker="*", color=colour, edgecolors="white", linewidths=1.2,
            zorder=4, label=f"{base} ({b['material_id']}, decile {b['decile']}) + draws",
        )  # fmt: skip
        dx, dy = _label_direction(b["mu_xy"], [o["mu_xy"] for o in bases.values()], xy)
        ax.annotate(
            base, b["mu_xy"], xytext=(16 * dx, 16 * dy), textcoords="offset points",
            ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
            fontsize=11, fontweight="bold", color=colour, zorder=5,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colour, "alpha": 0.8},
        )  # fmt: skip
    bar = fig.colorbar(points, ax=ax, ticks=range(10))
    bar.set_label("formation-energy decile (0 = lowest Ef)")
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.1f} % of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.1f} % of variance)")
    ax.set_title(
        f"VAE latent means μ of {len(xy)} structures (PCA fit on train+val); "
        f"x: {n_draws} {mode} draws per base",
        fontsize=10,
    )
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def latent_map(
    *,
    vae_path: Path,
    voxels: Path,
    bases: list[str],
    n_draws: int,
    seed_section: dict,
    out_png: Path,
    threads: int = 1,
    bases_table: Path,
) -> dict:
    """Draw the 2-D PCA map of the VAE's latent means with the bases and their draws.

    vae_path: the VAE checkpoint (``results/models/vae.pt``); voxels: the voxel store;
    bases: base-compound formulas; n_draws: how many of each base's sample-stage draws
    (the first ones) to overlay; seed_section: the validated config sections (``seed``,
    ``sample``, ``train``, ...) as the sample stage gets them; out_png: the figure,
    written atomically; bases_table: the base-compounds table (``base_compounds``
    schema) naming each base's material id, as the sampling stage reads it.

    Returns facts: n_structures (encoded and plotted), n_fit (train+val), the two PCs'
    explained-variance ratios, seconds, and per base its material id, decile and the
    mean distance of its draws from μ_base in the plane (and in the full latent space).
    """
    import torch

    from matdisc.sample.stage import check_settings, decile_of, draws_for, encode_entry
    from matdisc.train import load_model, resolve_device
    from matdisc.voxel.store import open_store

    started = time.perf_counter()
    section = seed_section["sample"]
    check_settings(section)
    seed = int(seed_section["seed"])
    torch.set_num_threads(max(1, int(threads)))
    device = resolve_device(seed_section["train"]["device"])
    store = open_store(voxels)
    vae, _ = load_model(vae_path, device=device)
    if int(vae.grid_size) != store.grid_size:
        raise UserError(
            f"the VAE was trained on {vae.grid_size}³ grids but the voxel store holds "
            f"{store.grid_size}³; give the store it was trained on."
        )
    enc = _Encoder(vae, device)

    deciles = _deciles(store)
    index = np.flatnonzero(deciles >= 0)
    if len(index) < 2:
        raise UserError(f"the voxel store {voxels} has fewer than 2 structures with a decile.")
    log.info(
        "latent map: encoding %d of %d structures (%d without a formation energy)",
        len(index), len(store), len(store) - len(index),
    )  # fmt: skip
    mu = _encode_all(enc, store, index, deciles[index])
    fit = np.isin(store.split[index], ("train", "val"))
    if fit.sum() < 2:
        log.warning("latent map: fewer than 2 train/val structures; PCA fit on all of them")
        fit[:] = True
    mean, components, ratio = _pca(mu[fit])

    def project(z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, dtype=np.float64) - mean) @ components.T

    xy = project(mu)
    facts: dict[str, Any] = {
        "n_structures": len(index),
        "n_fit": int(fit.sum()),
        "explained_variance": [float(r) for r in ratio],
        "mode": section["mode"],
        "bases": {},
    }
    plotted: dict[str, dict[str, Any]] = {}
    for base in bases:
        i = _base_index(store, base, bases_table)
        draws = draws_for(section, base, seed, enc, store, i)
        z = draws.z[:n_draws]
        mu_base = encode_entry(enc, store, i, decile_of(store, i))  # the stage's μ_base
        mu_xy = project(mu_base[None])[0]
        draws_xy = project(z)
        plotted[base] = {
            "material_id": str(store.material_id[i]),
            "decile": int(deciles[i]),
            "mu_xy": mu_xy,
            "draws_xy": draws_xy,
        }
        facts["bases"][base] = {
            "material_id": str(store.material_id[i]),
            "decile": int(deciles[i]),
            "n_draws": len(z),
            "mean_draw_distance_pc_plane": float(np.linalg.norm(draws_xy - mu_xy, axis=1).mean()),
            "mean_draw_distance_latent": float(np.mean(draws.z_distance[:n_draws])),
        }
    _plot(Path(out_png), xy, deciles[index], ratio, plotted, n_draws, section["mode"])
    facts["seconds"] = round(time.perf_counter() - started, 2)
    log.info("latent map -> %s: %s", out_png, facts)
    return facts
