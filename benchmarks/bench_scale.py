"""How the data-parallel stages scale from 1 to 2 dask workers on this machine.

Runs, side by side, the voxelize-structures stage on every cubic structure of
``results/data/structures.parquet`` and the filter's interatomic-distance check on the
same structures, with 1 and with 2 local workers, and prints one JSON object with the
wall times and the 1 -> 2 speed-up of each. Needs the downloaded table
(``snakemake --cores 2 results/data/structures.parquet``).

    python benchmarks/bench_scale.py [--structures results/data/structures.parquet] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from matdisc.config import validate_config
from matdisc.filters.funnel import min_distances
from matdisc.io import read_table
from matdisc.voxel.stage import build_store


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=Path, default=Path("results/data/structures.parquet"))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    table = read_table(args.structures, "structures")
    cubic_json = table.loc[table["crystal_system"] == "cubic", "structure_json"].tolist()
    settings = validate_config({})["voxel"]
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    results: dict[str, dict[str, float]] = {}
    try:
        for workers in (1, 2):

            def voxelize(workers: int = workers) -> None:
                target = work / f"v{workers}.zarr"
                shutil.rmtree(target, ignore_errors=True)
                build_store(args.structures, target, settings, threads=workers)

            def distances(workers: int = workers) -> None:
                min_distances(cubic_json, threads=workers)

            results.setdefault("voxelize_s", {})[str(workers)] = _best(voxelize, args.repeat)
            results.setdefault("filter_distances_s", {})[str(workers)] = _best(
                distances, args.repeat
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "structures": len(cubic_json),
        **results,
        "speedup_1_to_2": {
            stage: round(times["1"] / times["2"], 3) for stage, times in results.items()
        },
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
