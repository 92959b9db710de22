"""Generation speed: decode -> UNet -> inverse -> distance check, batched, on CPU.

    python benchmarks/bench_generation.py [--n 256] [--threads 2] [--base FORMULA]
                                          [--unet PATH --vae PATH] [--bf16 auto]

Uses the trained checkpoints (results/models/unet_chain.pt, the UNet sampling uses, and
vae.pt) when they exist, otherwise randomly initialised models of the config's sizes (the
inverse then sees untrained grids, so its time is not representative: the JSON says
which). Draws targeted latents
around a base compound's encoding (``--base``, default the first of
results/data/base_compounds.parquet) when the voxel store exists (else N(0, I)),
runs the chain at two batch sizes side by side, and prints one JSON object: samples/s
and the time split by step. ``--bf16``: the UNet's precision as the pipeline resolves
``train.bf16`` (auto: bf16 autocast on a CPU with AMX or a bf16 GPU). The seed: 12,000
candidates in 12 h on one GPU (0.28/s).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PAPER_SAMPLES_PER_S = 12000 / (12 * 3600)


def load_models(args: argparse.Namespace, config: dict):
    from matdisc.train import load_model

    if args.unet.exists() and args.vae.exists():
        unet, _ = load_model(args.unet, device="cpu")
        vae, _ = load_model(args.vae, device="cpu")
        return unet, vae, "trained"
    from matdisc.models.unet import UNet3D
    from matdisc.models.vae import CondVAE3D

    torch.manual_seed(0)
    u, v = config["unet"], config["vae"]
    classes = [3, 8, 9, 11, 12, 17, 19, 20, 22, 38]
    unet = UNet3D(classes=classes, base_channels=u["base_channels"], depth=u["depth"],
                  channels_last=True)  # fmt: skip
    vae = CondVAE3D(grid_size=config["voxel"]["grid_size"], channels=v["channels"],
                    latent_dim=v["latent_dim"], channels_last=True)  # fmt: skip
    return unet.eval(), vae.eval(), "random_init"


def latents(vae, gen, n: int, seed: int, base: str | None):
    from matdisc.sample import latent

    store_path = ROOT / "results/voxels/cubic.zarr"
    bases = ROOT / "results/data/base_compounds.parquet"
    if store_path.exists() and bases.exists():
        from matdisc.io import read_table
        from matdisc.sample.stage import decile_of, encode_entry
        from matdisc.voxel.store import open_store

        store = open_store(store_path)
        table = read_table(bases)
        if base is not None and base not in set(table["base"]):
            raise SystemExit(f"--base {base} is not a base compound of the run; pick one of "
                             f"{', '.join(table['base'])}.")  # fmt: skip
        row = table.iloc[0] if base is None else table[table["base"] == base].iloc[0]
        hits = np.flatnonzero(store.material_id == row["material_id"])
        if len(hits) and store.grid_size == vae.grid_size:
            i = int(hits[0])
            decile = decile_of(store, i)
            mu = encode_entry(gen, store, i, decile)
            draws = latent.targeted(mu, decile, n, 0.5, latent.rng_for(seed, row["base"]))
            return draws, f"targeted around {row['base']}"
    return latent.random(vae.latent_dim, n, latent.rng_for(seed, "bench")), "random N(0, I)"


def invert_true_grids(gen, n: int) -> dict | None:
    """Inverse + distance check of ``n`` true species maps of the voxel store (batched on
    the Generator's thread pool): ms per sample, wall and CPU."""
    from concurrent.futures import ThreadPoolExecutor

    from matdisc.sample.generate import _one

    path = ROOT / "results/voxels/cubic.zarr"
    if not path.exists():
        return None
    from matdisc.voxel.store import open_store

    store = open_store(path)
    n = min(n, len(store))
    species = np.asarray(store.species[:n])
    lattice = store.lattice[:n].astype(np.float64)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=gen.threads) as pool:
        rows = list(
            pool.map(
                _one, species, lattice, [None] * n, [gen.padding] * n,
                [gen.inverse_settings] * n, [None] * n,
            )
        )  # fmt: skip
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    return {
        "n": n,
        "ms_per_sample": round(1000 * wall / n, 2),
        "cpu_ms_per_sample": round(1000 * cpu / n, 2),
        "invert_cpu_ms": round(1000 * sum(r["_t_invert"] for r in rows) / n, 2),
        "distance_cpu_ms": round(1000 * sum(r["_t_distance"] for r in rows) / n, 2),
        "with_structure": sum(r["reason"] is None for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="samples per batch-size setting")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--base", default=None, help="base compound to sample around")
    parser.add_argument("--unet", type=Path, default=ROOT / "results/models/unet_chain.pt")
    parser.add_argument("--vae", type=Path, default=ROOT / "results/models/vae.pt")
    parser.add_argument("--bf16", choices=["auto", "true", "false"], default="auto")
    args = parser.parse_args()

    from matdisc.config import load_config
    from matdisc.sample.generate import Generator
    from matdisc.segment import InverseSettings
    from matdisc.train.device import inference_bf16

    config = load_config(ROOT / "config/config.yaml")
    torch.set_num_threads(args.threads)
    unet, vae, kind = load_models(args, config)
    inverse_settings = InverseSettings.from_config(config["voxel"], decoded=True)
    spec = {"true": True, "false": False}.get(args.bf16, "auto")
    bf16 = inference_bf16({**config["train"], "bf16": spec})
    gen = Generator(vae=vae, unet=unet, padding=config["voxel"]["padding"],
                    inverse_settings=inverse_settings, threads=args.threads,
                    species_choice=config["sample"]["species_choice"], bf16=bf16)  # fmt: skip
    draws, how = latents(vae, gen, args.n, config["seed"], args.base)
    gen.run(draws.z[:8], draws.condition[:8], batch_size=8)  # warm-up
    results = {}
    for batch in args.batch_sizes:
        gen.timings.clear()
        load_before = os.getloadavg()[0]
        cpu_started = time.process_time()
        started = time.perf_counter()
        rows = gen.run(draws.z, draws.condition, batch_size=batch)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        n_ok = sum(r["reason"] is None for r in rows)
        valid = sum(r["reason"] is None and r["min_distance_angstrom"] >= 0.5 for r in rows)
        reasons: dict[str, int] = {}
        for r in rows:
            if r["reason"] is not None:
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        results[f"batch_{batch}"] = {
            "samples_per_s": round(len(rows) / seconds, 2),
            "seconds": round(seconds, 3),
            # CPU time of this process over its threads: the rate on otherwise idle cores
            "cpu_seconds": round(cpu_seconds, 3),
            "samples_per_s_if_cores_idle": round(len(rows) * args.threads / cpu_seconds, 2),
            "load_average_1min": round(load_before, 2),
            "time_split_s": {k: round(v, 3) for k, v in gen.timings.items()},
            "time_split_pct": {k: round(100 * v / seconds, 1) for k, v in gen.timings.items()},
            "with_structure": n_ok,
            "distance_valid": valid,
            "no_structure": reasons,
        }
    true_grids = invert_true_grids(gen, args.n)
    best = max(v["samples_per_s"] for v in results.values())
    out = {
        "benchmark": "generation",
        "models": kind,
        "latents": how,
        "n_samples": args.n,
        "threads": args.threads,
        "species_choice": config["sample"]["species_choice"],
        "inference_bf16": bf16,
        "cpu_count": os.cpu_count(),
        "grid_size": vae.grid_size,
        "results": results,
        # the inverse + distance step on the voxel store's true species maps (what a
        # well-trained UNet returns), for when the models' grids hold no atoms
        "invert_true_grids": true_grids,
        "best_samples_per_s": best,
        "target_samples_per_s": 30,
        "meets_target": best >= 30,
        "paper_samples_per_s": round(PAPER_SAMPLES_PER_S, 3),
        "speedup_vs_paper": round(best / PAPER_SAMPLES_PER_S, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
