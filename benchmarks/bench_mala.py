"""MALA throughput on CPU: chain-steps per second, batched chains vs one chain at a time.

Energy: an untrained ContinuouSP model (float32 weights) of the seed's Perov-5 size (32-d, 3 convolutions,
2-layer MLP); crystals: SrTiO3 composition (5 sites), random starts. Prints one JSON.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from matdisc.config import default_section
from matdisc.csp.energy import ContinuousEnergy
from matdisc.csp.sampler import Schedule, mala, random_crystals

CHAINS = 64
STEPS = 20
SINGLE_CHAINS = 4


def _rate(model: ContinuousEnergy, chains: int, steps: int, gen: torch.Generator) -> float:
    numbers = [np.array([38, 22, 8, 8, 8])] * chains
    start = random_crystals(numbers, generator=gen)
    schedule = Schedule.from_section(default_section("csp", eval_steps=steps), "eval_steps")
    t0 = time.perf_counter()
    mala(model, start, schedule, generator=gen)
    return chains * steps / (time.perf_counter() - t0)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    model = ContinuousEnergy()  # float32 weights, float64 geometry (as the stages run it)
    _rate(model, 4, 2, gen)  # warm-up
    batched = _rate(model, CHAINS, STEPS, gen)
    t0 = time.perf_counter()
    for _ in range(SINGLE_CHAINS):
        _rate(model, 1, STEPS, gen)
    single = SINGLE_CHAINS * STEPS / (time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "benchmark": "mala",
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "sites_per_crystal": 5,
                "model": model.model_args,
                "chains_batched": CHAINS,
                "steps": STEPS,
                "chain_steps_per_s_batched": round(batched, 1),
                "chain_steps_per_s_one_at_a_time": round(single, 1),
                "speedup": round(batched / single, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
