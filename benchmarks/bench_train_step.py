"""CPU training steps, each variant against the other, side by side in one process.

1. CGCNN step (forward, MSE, backward, Adam) on real crystal graphs of the run's data:
   the Gaussian edge expansion with its far tails set to zero (ours) against the plain
   ``exp(-((d - μ)/σ)²)``, whose tails are float32 subnormals that CPU matrix products
   handle up to 70x slower.
2. Adam's update of the default UNet's 1.5 M parameters: the per-tensor loop (ours)
   against the fused kernel and the multi-tensor (``foreach``) variant. The fused kernel
   is faster but rounds differently, and the models trained with it differ (one seed gave
   a lower UNet recall: docs/experiments.md), so training keeps the per-tensor loop.

Variants alternate in rounds and the median per variant is reported (the machine is
shared). Needs ``results/data/structures.parquet``. Prints one JSON object.

    python benchmarks/bench_train_step.py [--threads 1] [--rounds 5] [--crystals 3200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pandas as pd
import torch

from matdisc.config import default_section
from matdisc.graphs import GraphStore, build_graph, parse_structures
from matdisc.models.unet import UNet3D
from matdisc.screen.train import CGCNNSettings


class _PlainExpansion(torch.nn.Module):
    """The expansion as it was: every Gaussian evaluated, subnormal tails included."""

    def __init__(self, centers: torch.Tensor, width: float) -> None:
        super().__init__()
        self.centers, self.width = centers, width

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(((distance[:, None] - self.centers) / self.width) ** 2))


def _timed(fn, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return 1000 * (time.perf_counter() - started) / steps


def cgcnn_steps(crystals: int, rounds: int) -> dict:
    settings = CGCNNSettings.from_section(default_section("cgcnn"))
    table = pd.read_parquet("results/data/structures.parquet")
    arrays, _, _ = parse_structures(table["structure_json"].tolist()[:crystals])
    store = GraphStore(build_graph(arrays, **settings.graph))
    rng = np.random.default_rng(0)
    batches = [store.batch(rng.choice(len(store), 64, replace=False)) for _ in range(10)]
    target = torch.zeros(64)
    torch.manual_seed(0)
    model = settings.new_model()
    ours = model.expansion
    plain = _PlainExpansion(ours.centers, ours.width)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch_edges = float(np.mean([b.edge_center.shape[0] for b in batches]))
    subnormal = plain(batches[0].edge_distance)
    tiny = torch.finfo(torch.float32).tiny
    share = float(((subnormal > 0) & (subnormal < tiny)).float().mean())

    def run() -> None:
        for graph in batches:
            optimizer.zero_grad()
            ((model(graph) - target) ** 2).mean().backward()
            optimizer.step()

    times: dict[str, list[float]] = {"zeroed_tails": [], "subnormal_tails": []}
    run()  # warm-up
    for _ in range(rounds):
        for name, expansion in (("zeroed_tails", ours), ("subnormal_tails", plain)):
            model.expansion = expansion
            times[name].append(_timed(run, 1) / len(batches))
    model.expansion = ours
    ms = {k: round(statistics.median(v), 1) for k, v in times.items()}
    return {
        "crystals_per_batch": 64,
        "edges_per_batch": round(batch_edges),
        "subnormal_share_of_expansion": round(share, 4),
        "ms_per_step": ms,
        "speedup": round(ms["subnormal_tails"] / ms["zeroed_tails"], 2),
    }


def adam_steps(rounds: int) -> dict:
    model = UNet3D(
        classes=list(range(1, 61)), base_channels=8, depth=4, density_scale=1.0, log_input=True
    )
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    optimizers = {
        "fused": torch.optim.Adam(params, lr=1e-3, fused=True),
        "per_tensor": torch.optim.Adam(params, lr=1e-3, foreach=False),
        "foreach": torch.optim.Adam(params, lr=1e-3, foreach=True),
    }
    times: dict[str, list[float]] = {k: [] for k in optimizers}
    for optimizer in optimizers.values():
        optimizer.step()
    for _ in range(rounds):
        for name, optimizer in optimizers.items():
            times[name].append(_timed(optimizer.step, 20))
    ms = {k: round(statistics.median(v), 2) for k, v in times.items()}
    return {
        "parameters": sum(p.numel() for p in params),
        "tensors": len(params),
        "ms_per_step": ms,
        "speedup_over_per_tensor": round(ms["per_tensor"] / ms["fused"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--crystals", type=int, default=3200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = {
        "benchmark": "train_step",
        "device": "cpu",
        "threads": args.threads,
        "cgcnn": cgcnn_steps(args.crystals, args.rounds),
        "adam_unet": adam_steps(args.rounds),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
