"""Does the VAE keep a half-Heusler's empty holes? A check on a run's store and VAE.

    python benchmarks/half_heusler_holes.py [--store PATH] [--vae PATH]

A half-Heusler XYZ (F-43m) fills one of the two sets of tetrahedral holes of its cell (4c)
and leaves the other (4d) empty; a full Heusler X2YZ fills both. For every half-Heusler
of the store with a formation-energy decile (the maps the VAE conditions), the density at
the empty holes over the density at the filled ones (the set inversion swaps them with,
whichever site the cell's origin is on), each read at the voxel of the site,
on the true map and on the VAE's reconstruction decoded from μ. Prints one JSON object,
per split: the maps, the median ratio of each, and the share of decoded maps whose ratio
stays below 0.6 (their empty holes still look empty).

And whether the encoder sees which set is filled: the distance between the μ of each
half-Heusler and the μ of its inversion through the cell centre (which swaps the two sets
and keeps the rest), beside the median and 5th-percentile distance between the μ of two
different maps of the split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from matdisc.voxel.cell import CENTRINGS

ROOT = Path(__file__).resolve().parents[1]
#: the four face-centred sublattices of a (half-)Heusler cell, at s × (¼, ¼, ¼), s = 0..3
#: (fractional). A half-Heusler leaves one of them empty; the empty set is compared with
#: the filled one ½ along the diagonal from it (the other set of the same kind of holes).
SUBLATTICES = tuple((CENTRINGS["F"] + 0.25 * s) % 1.0 for s in range(4))


def at_sites(grid: np.ndarray, frac: np.ndarray, padding: float) -> float:
    """Mean of ``grid`` (d, d, d) at the voxels of the fractional positions ``frac``."""
    from matdisc.voxel.grid import index_of_fraction

    idx = np.round(index_of_fraction(frac, grid.shape[0], padding)).astype(int)
    return float(grid[idx[:, 0], idx[:, 1], idx[:, 2]].mean())


@torch.no_grad()
def phase_distances(store, vae, split: str) -> dict:
    """|μ(map) - μ(inverted map)| of the split's half-Heuslers against |μ_i - μ_j| of its
    maps with a decile (medians and the 5th percentile, latent units)."""
    from matdisc.models.data import load_split, vae_batch

    data = load_split(store, split)
    data = data.subset(np.flatnonzero(data.decile >= 0))
    mus, inverted = [], []
    for start in range(0, len(data), 32):
        density, coords, cond, species = vae_batch(data, start, start + 32, "cpu")
        mus.append(vae.encode(density, coords, cond, species)[0])
        flipped = torch.flip(density, dims=[-3, -2, -1])  # inversion through the centre
        inverted.append(vae.encode(flipped, coords, cond, species)[0])
    mu, mu_inv = torch.cat(mus), torch.cat(inverted)
    half = [k for k, i in enumerate(data.index) if store.structure_class[i] == "half_heusler_XYZ"]
    pairs = torch.cdist(mu, mu)[~torch.eye(len(mu), dtype=torch.bool)]
    return {
        "median_inversion_distance": round(float((mu - mu_inv)[half].norm(dim=1).median()), 3)
        if half
        else None,
        "median_distance_between_maps": round(float(pairs.median()), 3),
        "p5_distance_between_maps": round(float(pairs.quantile(0.05)), 3),
    }


@torch.no_grad()
def ratios(store, vae, split: str) -> tuple[list[float], list[float]]:
    """Empty-over-filled density ratios (true, decoded) of the split's half-Heuslers."""
    from matdisc.models.data import load_split, vae_batch

    data = load_split(store, split)
    keep = [
        k
        for k in range(len(data))
        if store.structure_class[data.index[k]] == "half_heusler_XYZ" and data.decile[k] >= 0
    ]
    true_ratio, decoded_ratio = [], []
    for k in keep:
        item = data.subset(np.array([k]))
        density, coords, cond, species = vae_batch(item, 0, 1, "cpu")
        recon, *_ = vae(density, coords, cond, species)
        decoded = (recon[0, 0] * vae.density_scale).numpy()
        true = np.asarray(item.density[0], dtype=np.float64).squeeze()
        empty_at = int(np.argmin([at_sites(true, h, store.padding) for h in SUBLATTICES]))
        empty, filled = SUBLATTICES[empty_at], SUBLATTICES[(empty_at + 2) % 4]
        true_ratio.append(
            at_sites(true, empty, store.padding) / at_sites(true, filled, store.padding)
        )
        decoded_ratio.append(
            at_sites(decoded, empty, store.padding) / at_sites(decoded, filled, store.padding)
        )
    return true_ratio, decoded_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "results/voxels/cubic.zarr")
    parser.add_argument("--vae", type=Path, default=ROOT / "results/models/vae.pt")
    args = parser.parse_args()
    if not args.store.exists() or not args.vae.exists():
        raise SystemExit(
            "no trained run here; run `snakemake --cores all all` first or pass --store and --vae."
        )
    from matdisc.train import load_model
    from matdisc.voxel.store import open_store

    store = open_store(args.store)
    vae, _ = load_model(args.vae, device="cpu")
    vae.eval()
    out: dict = {"check": "half_heusler_holes", "vae": str(args.vae)}
    for split in ("train", "val", "test"):
        true, decoded = ratios(store, vae, split)
        out[split] = {
            "maps": len(true),
            "true_median_ratio": round(float(np.median(true)), 3) if true else None,
            "decoded_median_ratio": round(float(np.median(decoded)), 3) if decoded else None,
            "decoded_share_below_0.6": round(float(np.mean(np.array(decoded) < 0.6)), 3)
            if decoded
            else None,
            **(phase_distances(store, vae, split) if true else {}),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
