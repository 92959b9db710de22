"""Training throughput (samples/s) of the UNet and the Cond-DFC-VAE on CPU.

Measures one optimisation step (forward, loss, backward, Adam) at the default config's
sizes on random 32³ batches, for each speed-up variant: plain (contiguous fp32),
channels-last 3-D, bf16 autocast, both, and (``--compile``) ``torch.compile``. Variants
are timed in interleaved rounds and the median per variant is reported, because the
machine is shared and its load drifts. The VAE step uses the config's loss weights: with
``vae.alpha > 0`` it includes the perceptual term (a frozen UNet forward on real and
reconstructed density), as in training; the default (alpha 0) has none.

    python benchmarks/bench_training.py [--threads 2] [--batch 8] [--rounds 3] [--compile]

Prints one JSON object; ``fastest`` names the fastest variant and ``default`` the one
config/config.yaml picks on this machine (``channels_last`` of the section, ``train.bf16``
resolved here: ``auto`` = bf16 where the CPU has AMX).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from matdisc.config import load_config
from matdisc.models.losses import unet_training_loss, vae_loss
from matdisc.models.unet import UNet3D
from matdisc.models.vae import CondVAE3D
from matdisc.train.device import resolve_bf16, resolve_channels_last

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = 60  # about the number of elements in the cubic training split


def _unet(cfg: dict, channels_last: bool) -> UNet3D:
    return UNet3D(
        classes=list(range(1, N_CLASSES)),
        base_channels=cfg["base_channels"],
        depth=cfg["depth"],
        channels_last=channels_last,
    )


def make_step(
    kind: str, cfg: dict, grid: int, batch: int, channels_last: bool, bf16: bool, compile_: bool
):
    torch.manual_seed(0)
    density = torch.rand(batch, 1, grid, grid, grid)
    if kind == "unet":
        model = _unet(cfg["unet"], channels_last)
        # About 10% of the voxels belong to an atom, as in the cubic maps.
        target = torch.randint(0, N_CLASSES, (batch, grid, grid, grid))
        target[torch.rand(target.shape) > 0.1] = 0
        mask = (target > 0).float()
        weights = torch.ones(N_CLASSES)
        weights[0] = 0

        def loss(m):
            return unet_training_loss(m, density, target, mask, weights)[0]
    else:
        model = CondVAE3D(
            grid_size=grid,
            channels=cfg["vae"]["channels"],
            latent_dim=cfg["vae"]["latent_dim"],
            channels_last=channels_last,
        )
        perceptual = _unet(cfg["unet"], channels_last).eval().requires_grad_(False)
        coords = torch.rand(batch, 3, grid, grid, grid) * 10
        cond = torch.eye(10)[torch.arange(batch) % 10]

        def loss(m):
            out = m(density, coords, cond)
            return vae_loss(
                *out,
                beta=cfg["vae"]["beta"],
                alpha=cfg["vae"]["alpha"],
                unet=perceptual,
                density_scale=1.0,
            )[0]

    model.train()
    runner = model
    if compile_:
        # Compile the convolution stacks; the loss helpers call methods of the model.
        if kind == "unet":
            model.last_features = torch.compile(model.last_features)
        else:
            model.encoder = torch.compile(model.encoder)
            model.decoder = torch.compile(model.decoder)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    )

    def step() -> None:
        with autocast():
            value = loss(runner)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--grid", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile (minutes to compile)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "config" / "config.yaml")

    variants = {
        "plain": dict(channels_last=False, bf16=False, compile_=False),
        "channels_last": dict(channels_last=True, bf16=False, compile_=False),
        "bf16": dict(channels_last=False, bf16=True, compile_=False),
        "channels_last+bf16": dict(channels_last=True, bf16=True, compile_=False),
    }
    if args.compile:
        variants["compiled+channels_last"] = dict(channels_last=True, bf16=False, compile_=True)
    out: dict = {
        "device": "cpu",
        "threads": args.threads,
        "batch": args.batch,
        "grid": args.grid,
        "unet": {"base_channels": cfg["unet"]["base_channels"], "depth": cfg["unet"]["depth"]},
        "vae": {
            "channels": cfg["vae"]["channels"],
            "latent_dim": cfg["vae"]["latent_dim"],
            "alpha": cfg["vae"]["alpha"],
        },
        "load_average_1min": None,
    }
    bf16 = resolve_bf16(cfg["train"]["bf16"], torch.device("cpu"))
    for kind in ("unet", "vae"):
        layout = resolve_channels_last(cfg[kind]["channels_last"], bf16)
        if bf16:
            default = "channels_last+bf16" if layout else "bf16"
        else:
            default = "channels_last" if layout else "plain"
        steps = {}
        warmup = {}
        for name, v in variants.items():
            steps[name] = make_step(kind, cfg, args.grid, args.batch, **v)
            t0 = time.perf_counter()
            steps[name]()  # warm-up (and compilation)
            warmup[name] = time.perf_counter() - t0
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, step in steps.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                rates[name].append(args.batch * args.steps / (time.perf_counter() - t0))
        median = {name: round(statistics.median(r), 3) for name, r in rates.items()}
        out[kind] = {
            **out.get(kind, {}),
            "samples_per_s": median,
            "all_rounds": {k: [round(x, 3) for x in v] for k, v in rates.items()},
            "first_step_s": {k: round(v, 2) for k, v in warmup.items()},
            "speedup_vs_plain": {k: round(v / median["plain"], 2) for k, v in median.items()},
            "fastest": max(median, key=median.get),
            "default": default,
            "default_is_fastest": default == max(median, key=median.get),
        }
    with contextlib.suppress(OSError):
        out["load_average_1min"] = round(float(Path("/proc/loadavg").read_text().split()[0]), 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
