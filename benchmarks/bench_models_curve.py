"""Learning curve of the UNet and the Cond-DFC-VAE chain on the voxel store (CPU run).

Trains the UNet in rounds (each round continues the same run through its resume file),
scoring the segmentation pipeline on the val split after every round; then trains the
VAE the same way with the final UNet as perceptual model, scoring the full chain after
every round. Writes ``results/metrics/curve.parquet`` (one row per round, pipeline and
metric, with the epochs and wall time so far) and ``results/metrics/curve.png``, and
prints the last round's figures beside the paper's as JSON.

    python benchmarks/bench_models_curve.py --unet-rounds 3 --unet-epochs 1 \
        --vae-rounds 4 --vae-epochs 3 [--max-structures N] [--threads 2]

Sizes and optimiser settings are the ``unet``/``vae`` sections of config/config.yaml
(``--max-structures`` overrides both sections' ``max_structures``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd

from matdisc.config import load_config
from matdisc.models import stage, training
from matdisc.models.evaluate import evaluate_chain, evaluate_unet, true_structures
from matdisc.stage import StageCall
from matdisc.train import resolve_device
from matdisc.voxel.store import open_store

ROOT = Path(__file__).resolve().parents[1]
SHOWN = [
    ("unet_true_density", "nonzero_recall"),
    ("unet_true_density", "site_emd_mean_angstrom"),
    ("unet_true_density", "delta_n_sites_mean"),
    ("unet_true_density", "valid_fraction"),
    ("vae", "density_mse"),
    ("vae_unet_chain", "nonzero_recall"),
    ("vae_unet_chain", "site_emd_mean_angstrom"),
    ("vae_unet_chain", "delta_n_sites_mean"),
    ("vae_unet_chain", "a_mae_angstrom"),
    ("vae_unet_chain", "valid_fraction"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "results/voxels/cubic.zarr")
    parser.add_argument("--out", type=Path, default=ROOT / "results/metrics")
    parser.add_argument("--work", type=Path, default=ROOT / "results/models/curve")
    parser.add_argument("--unet-rounds", type=int, default=3)
    parser.add_argument("--unet-epochs", type=int, default=1, help="epochs per round")
    parser.add_argument("--vae-rounds", type=int, default=4)
    parser.add_argument("--vae-epochs", type=int, default=3, help="epochs per round")
    parser.add_argument("--max-structures", type=int, default=None)
    parser.add_argument("--unet-batch", type=int, default=None, help="override unet.batch_size")
    parser.add_argument("--unet-lr", type=float, default=None, help="override unet.lr")
    parser.add_argument(
        "--reuse-unet",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="skip the UNet rounds: keep the UNet rows of an earlier curve.parquet and take "
        "the UNet from its resume file (trained EPOCHS epochs)",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    cfg = load_config(ROOT / "config" / "config.yaml")
    for name in ("unet", "vae"):
        cfg[name]["patience"] = None  # the curve shows every round
        cfg[name]["max_minutes"] = None
        if args.max_structures is not None:
            cfg[name]["max_structures"] = args.max_structures
    if args.unet_batch is not None:
        cfg["unet"]["batch_size"] = args.unet_batch
    if args.unet_lr is not None:
        cfg["unet"]["lr"] = args.unet_lr
    store = open_store(args.store)
    args.work.mkdir(parents=True, exist_ok=True)
    call = StageCall(settings=cfg, threads=args.threads)
    device = resolve_device(cfg["train"]["device"])
    rows: list[dict] = []
    started = time.perf_counter()

    def record(new_rows: list[dict], model: str, rnd: int, epochs: int) -> None:
        minutes = (time.perf_counter() - started) / 60
        for row in new_rows:
            rows.append({**row, "stage": model, "round": rnd, "epochs": epochs, "minutes": minutes})
        # Written after every round, so a run cut short still leaves its curve.
        args.out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(args.out / "curve.parquet", index=False)

    section = cfg["unet"]
    train, val = training.load_splits(store, section["max_structures"])
    truth = true_structures(store, val)
    classes = [int(z) for z in store.elements()]
    inverse = stage.inverse_settings(call)
    decoded_inverse = stage.inverse_settings(call, decoded=True)
    if args.reuse_unet is not None:
        earlier = pd.read_parquet(args.out / "curve.parquet")
        rows.extend(earlier[earlier.stage == "unet"].to_dict("records"))
        section = {**cfg["unet"], "epochs": args.reuse_unet}
        config = training.train_config(section, cfg["train"], seed=call.seed, threads=call.threads)
        unet, _, _ = training.fit_unet(
            train, val, classes, section, config, args.work / "unet.resume"
        )
        args.unet_rounds = 0
    for rnd in range(1, args.unet_rounds + 1):
        section = {**cfg["unet"], "epochs": rnd * args.unet_epochs}
        config = training.train_config(section, cfg["train"], seed=call.seed, threads=call.threads)
        unet, _, _ = training.fit_unet(
            train, val, classes, section, config, args.work / "unet.resume"
        )
        scores = evaluate_unet(unet, val, truth, device=device, inverse_settings=inverse)
        record(scores, "unet", rnd, section["epochs"])
        logging.info("UNet round %d done at %.1f min", rnd, (time.perf_counter() - started) / 60)

    section = cfg["vae"]
    train, val = training.load_splits(store, section["max_structures"])
    for rnd in range(1, args.vae_rounds + 1):
        section = {**cfg["vae"], "epochs": rnd * args.vae_epochs}
        config = training.train_config(section, cfg["train"], seed=call.seed, threads=call.threads)
        vae, _, _ = training.fit_vae(train, val, unet, section, config, args.work / "vae.resume")
        scores = evaluate_chain(
            vae, unet, val, truth, device=device, inverse_settings=decoded_inverse
        )
        record(scores, "vae", rnd, section["epochs"])
        logging.info("VAE round %d done at %.1f min", rnd, (time.perf_counter() - started) / 60)

    frame = pd.DataFrame(rows)
    plot(frame, args.out / "curve.png")
    last = {}
    for pipeline, metric in SHOWN:
        sel = frame[(frame.pipeline == pipeline) & (frame.metric == metric)]
        if len(sel):
            row = sel.iloc[-1]
            last[f"{pipeline}/{metric}"] = {
                "ours": round(float(row.value), 4),
                "paper": None if pd.isna(row.paper_value) else float(row.paper_value),
                "epochs": int(row.epochs),
                "curve": [round(float(v), 4) for v in sel.value],
            }
    print(
        json.dumps(
            {
                "minutes": round((time.perf_counter() - started) / 60, 1),
                "train_structures": {"unet": len(train)},
                "last_round": last,
            },
            indent=1,
        )
    )


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 5, figsize=(18, 6.5))
    for ax, (pipeline, metric) in zip(axes.ravel(), SHOWN, strict=True):
        sel = frame[(frame.pipeline == pipeline) & (frame.metric == metric)]
        ax.plot(sel.epochs, sel.value, "o-", label="ours")
        if len(sel) and not pd.isna(sel.paper_value.iloc[0]):
            ax.axhline(sel.paper_value.iloc[0], color="r", ls="--", label="paper")
        ax.set_title(f"{pipeline}\n{metric}", fontsize=9)
        ax.set_xlabel("epochs")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
