"""Evaluation speed: the reconstruction metrics of a whole voxel store, on CPU.

    python benchmarks/bench_evaluate.py [--split all] [--threads 2] [--limit N]
                                        [--store PATH] [--models DIR]

Runs what ``matdisc evaluate-vae`` runs (the UNet on every true map, the VAE -> UNet
chain on the maps with a formation-energy decile, each map read back and scored) on the
trained checkpoints of a run (default: this work tree's ``results/``), side by side: the
VAE and the UNets in fp32 and under bf16 autocast (where ``train.bf16: auto`` turns it on:
a CPU with AMX, a bf16 GPU); the read-back on one worker thread (the models on one torch
thread) and on ``--threads`` worker processes (the models then on half the torch threads,
:func:`matdisc.train.device.model_threads_beside`, and once more on all of them); and the
model passes alone (no read-back, ``--threads`` torch threads) in each precision. The
rows of one precision must not depend on the workers; bf16 against fp32 gives the
largest change of any metric. Prints one JSON object. Target (issue #26): 50 structures/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TARGET = 50.0


@torch.inference_mode()
def model_passes(unet, chain_unet, vae, data, bf16: bool, batch_size: int = 8) -> float:
    """Seconds of the evaluation's model passes alone: the UNet on every true map, the
    VAE and the chain's UNet on the maps with a decile."""
    from matdisc.models.data import vae_batch
    from matdisc.models.inference import (
        inference_copy,
        run_autocast,
        segment_masked,
        segment_scored,
    )

    fast, fast_chain = inference_copy(unet, bf16=bf16), inference_copy(chain_unet, bf16=bf16)
    fast_vae = inference_copy(vae, bf16=bf16)
    started = time.perf_counter()
    for start in range(0, len(data), batch_size):
        segment_masked(fast, torch.from_numpy(data.density[start : start + batch_size]))
    chain = data.subset(np.flatnonzero(data.decile >= 0))
    for start in range(0, len(chain), batch_size):
        density, coords, cond, species = vae_batch(chain, start, start + batch_size, "cpu")
        with run_autocast(fast_vae):
            recon, *_ = fast_vae(density, coords, cond, species)
        segment_scored(fast_chain, (recon[:, 0].float() * vae.density_scale).clamp_min(0.0))
    return time.perf_counter() - started


def evaluation(
    unet, chain_unet, vae, data, truth, config, threads: int, bf16: bool
) -> tuple[float, list]:
    """Seconds and rows of the evaluation with the read-back on ``threads`` workers."""
    from matdisc.models.evaluate import evaluate_chain, evaluate_unet
    from matdisc.segment import InverseSettings

    voxel = config["voxel"]
    started = time.perf_counter()
    rows = evaluate_unet(
        unet, data, truth, device=torch.device("cpu"), split="bench",
        inverse_settings=InverseSettings.from_config(voxel), threads=threads, bf16=bf16,
    )  # fmt: skip
    rows += evaluate_chain(
        vae, chain_unet, data, truth, device=torch.device("cpu"), split="bench",
        inverse_settings=InverseSettings.from_config(voxel, decoded=True), threads=threads,
        bf16=bf16,
    )  # fmt: skip
    return time.perf_counter() - started, rows


def same_rows(got: list, reference: list) -> bool:
    """Whether two evaluations give the same rows. Equal to the last digit, except that
    the VAE's summed squared errors may differ in the ninth: torch sums them in another
    order on another number of threads (the worker processes halve the model's)."""
    return bool(np.allclose(got, reference, equal_nan=True, rtol=1e-7, atol=0))


@contextlib.contextmanager
def all_model_threads() -> Iterator[None]:
    """The evaluation with the model passes on all the torch threads beside the worker
    processes (:func:`matdisc.train.device.model_threads_beside` off)."""
    import matdisc.models.evaluate as evaluate

    kept = evaluate.model_threads_beside
    evaluate.model_threads_beside = lambda workers: contextlib.nullcontext()
    try:
        yield
    finally:
        evaluate.model_threads_beside = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N structures")
    parser.add_argument("--store", type=Path, default=ROOT / "results/voxels/cubic.zarr")
    parser.add_argument("--models", type=Path, default=ROOT / "results/models")
    args = parser.parse_args()

    from matdisc.config import load_config
    from matdisc.models.data import load_split
    from matdisc.models.evaluate import true_structures
    from matdisc.train import load_model
    from matdisc.train.device import inference_bf16
    from matdisc.voxel.store import open_store

    paths = {name: args.models / f"{name}.pt" for name in ("unet", "unet_chain", "vae")}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing or not args.store.exists():
        raise SystemExit(
            f"no trained run to evaluate ({', '.join(missing) or args.store} missing); run "
            "`snakemake --cores all all` first or pass --store and --models."
        )
    config = load_config(ROOT / "config/config.yaml")
    torch.set_num_threads(args.threads)
    unet, _ = load_model(paths["unet"], device="cpu")
    chain_unet, _ = load_model(paths["unet_chain"], device="cpu")
    vae, _ = load_model(paths["vae"], device="cpu")
    store = open_store(args.store)
    data = load_split(store, args.split, limit=args.limit)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    truth = true_structures(store, data)
    truth_seconds = time.perf_counter() - started
    precisions = {"fp32": False}
    if inference_bf16(config["train"]):
        precisions["bf16"] = True
    passes = {
        name: model_passes(unet, chain_unet, vae, data, bf16) for name, bf16 in precisions.items()
    }
    runs = {}
    values: dict[str, list] = {}

    def arm(label: str, name: str, threads: int) -> None:
        """One evaluation on ``threads`` as ``matdisc evaluate-vae --threads`` runs it."""
        import matdisc.models.evaluate as evaluate

        torch.set_num_threads(threads)
        with evaluate.model_threads_beside(threads):  # what the evaluation gives the models
            model_threads = torch.get_num_threads()
        seconds, rows = evaluation(
            unet, chain_unet, vae, data, truth, config, threads, precisions[name]
        )
        got = [r["value"] for r in rows]
        values.setdefault(name, got)
        runs[label] = {
            "seconds": round(seconds, 2),
            "structures_per_s": round(len(data) / seconds, 2),
            "model_threads": model_threads,
            # the rows do not depend on the workers (the model's threads may change a
            # decoded voxel in fp32: the rows of equal model threads must agree)
            "same_rows": same_rows(got, values[name]),
        }
        if name == "fp32":
            keys[:] = [(r["pipeline"], r["metric"]) for r in rows]

    keys: list[tuple[str, str]] = []
    for name in precisions:
        for threads in sorted({1, args.threads}):
            arm(f"{name}_workers_{threads}", name, threads)
    if args.threads > 1:
        # the A/B of the model's threads: all of them beside the worker processes
        name = "bf16" if "bf16" in precisions else "fp32"
        with all_model_threads():
            arm(f"{name}_workers_{args.threads}_all_model_threads", name, args.threads)
    torch.set_num_threads(args.threads)
    best = max(r["structures_per_s"] for r in runs.values())
    out = {
        "benchmark": "evaluation",
        "split": args.split,
        "structures": len(data),
        "chain_structures": int((data.decile >= 0).sum()),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(load_before, 2),
        "true_structures_seconds": round(truth_seconds, 2),
        "runs": runs,
        "model_passes_seconds": {k: round(v, 2) for k, v in passes.items()},
        "best_structures_per_s": best,
        "target_structures_per_s": TARGET,
        "meets_target": best >= TARGET,
    }
    if "bf16" in values:
        delta = np.abs(np.asarray(values["bf16"], float) - np.asarray(values["fp32"], float))
        worst = int(np.nanargmax(delta))
        out["bf16_largest_metric_change"] = {
            "pipeline": keys[worst][0], "metric": keys[worst][1],
            "fp32": values["fp32"][worst], "bf16": values["bf16"][worst],
        }  # fmt: skip
        out["bf16_against_fp32"] = {
            f"{p}/{m}": [round(values["fp32"][k], 4), round(values["bf16"][k], 4)]
            for k, (p, m) in enumerate(keys)
            if m in ("nonzero_recall", "same_composition_fraction", "site_emd_mean_angstrom")
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
