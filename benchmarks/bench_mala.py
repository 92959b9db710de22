"""MALA throughput on CPU: chain-steps per second by batch size and cell size, against a
baseline revision of the code in the same run.

Energy: an untrained ContinuouSP model (float32 weights, float64 geometry, as the stages
run it) of the seed's Perov-5 size (32-d, 3 convolutions, 2-layer MLP). Crystals: SrTiO3
(5 sites) at 64, 256 and 1,024 chains, and Sr4Ti4O12 (20 sites) at 64 chains, from the
sampler's random starts (seeded: both revisions see the same crystals); one chain at a
time as well. Each configuration runs ``steps`` MALA steps of the default schedule.

The current tree and the baseline (``git archive`` of ``--baseline``, by default the
last commit before the sampler was made faster) run in alternating subprocesses, and the
median over ``--rounds`` is reported: the machine is shared, so only figures taken side
by side are compared. Prints one JSON object.

    python benchmarks/bench_mala.py [--baseline df402a7] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: (name, formula unit, formula units per cell, chains, steps)
CONFIGS = [
    ("5_sites_64_chains", [38, 22, 8, 8, 8], 1, 64, 30),
    ("5_sites_256_chains", [38, 22, 8, 8, 8], 1, 256, 10),
    ("5_sites_1024_chains", [38, 22, 8, 8, 8], 1, 1024, 4),
    ("20_sites_64_chains", [38, 22, 8, 8, 8], 4, 64, 6),
    ("5_sites_1_chain", [38, 22, 8, 8, 8], 1, 1, 60),
]


def worker(threads: int) -> None:
    """Time every configuration with the ``matdisc`` on sys.path; print {name: rate}."""
    import numpy as np
    import torch

    from matdisc.config import default_section
    from matdisc.csp.energy import ContinuousEnergy
    from matdisc.csp.sampler import Schedule, mala, random_crystals

    try:  # the current tree's heap setting (a baseline may predate it)
        from matdisc.memory import retain_freed_memory

        retain_freed_memory()
    except ImportError:
        pass
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = ContinuousEnergy()
    rates = {}
    for name, unit, units, chains, steps in CONFIGS:
        gen = torch.Generator().manual_seed(0)
        numbers = [np.array(unit * units)] * chains
        schedule = Schedule.from_section(default_section("csp", eval_steps=steps), "eval_steps")
        mala(model, random_crystals(numbers[:4], generator=gen), schedule, generator=gen)
        start = random_crystals(numbers, generator=gen)
        t0 = time.perf_counter()
        mala(model, start, schedule, generator=gen)
        rates[name] = chains * steps / (time.perf_counter() - t0)
    print(json.dumps(rates))


def _baseline_tree(revision: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _run(src: Path, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="df402a7", help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.threads)
        return
    runs: dict[str, list[dict[str, float]]] = {"current": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        baseline_src = _baseline_tree(args.baseline, Path(tmp))
        for _ in range(args.rounds):
            runs["current"].append(_run(ROOT / "src", args.threads))
            runs["baseline"].append(_run(baseline_src, args.threads))
    median = {
        side: {name: statistics.median(r[name] for r in rows) for name, *_ in CONFIGS}
        for side, rows in runs.items()
    }
    # the fastest batch of five-site chains (one chain at a time is not a batch)
    batched = [name for name, _, units, chains, _ in CONFIGS if units == 1 and chains > 1]
    fastest = max(batched, key=median["current"].__getitem__)
    print(
        json.dumps(
            {
                "benchmark": "mala",
                "device": "cpu",
                "threads": args.threads,
                "rounds": args.rounds,
                "baseline_revision": args.baseline,
                "steps": {name: steps for name, *_, steps in CONFIGS},
                "chain_steps_per_s": {k: round(v, 1) for k, v in median["current"].items()},
                "baseline_chain_steps_per_s": {
                    k: round(v, 1) for k, v in median["baseline"].items()
                },
                "speedup": {
                    k: round(median["current"][k] / median["baseline"][k], 2)
                    for k in median["current"]
                },
                "fastest_5_site_batch": fastest,
                "fastest_5_site_chain_steps_per_s": round(median["current"][fastest], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
