"""Benchmark of the crystal <-> voxel representation (issue 3); prints one JSON object.

Measured on every cubic structure of ``results/data/structures.parquet``:

* oracle round trip: voxelize -> true species map S -> invert (cell lengths read back
  from the coordinate grid by least squares) -> compare with the voxelized conventional
  cell: exact site count and species, mean site EMD (Å), |Δ sites|, cell-length MAE;
  failures by structure class and cell size;
* speed on one core: the grids of <= 20-site cells (ours vs. the straightforward Python
  loop over voxels x sites, timed on one 5-site and one 20-site cell), the same including
  the cell standardisation, and the inverse;
* the whole ``voxelize-structures`` stage as a subprocess with 2 threads: wall time, peak memory.

Run from the repository root: ``python benchmarks/bench_voxel.py [--skip-rule]``.
Wall times depend on other load on the machine; CPU times (process_time) less so, and
the load average at the start is reported.
"""

from __future__ import annotations

import os

# One core for the in-process timings (set before numpy is imported).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from matdisc.config import validate_config  # noqa: E402
from matdisc.io import read_table  # noqa: E402
from matdisc.segment import InverseSettings, invert, lattice_from_coords  # noqa: E402
from matdisc.segment.metrics import delta_n_sites, lattice_mae, site_emd  # noqa: E402
from matdisc.voxel.cell import arrays_from_dict, conventional_cubic  # noqa: E402
from matdisc.voxel.core import check_cell, voxelize_cell  # noqa: E402
from matdisc.voxel.errors import VoxelizeError  # noqa: E402
from matdisc.voxel.grid import voxel_fractions  # noqa: E402
from matdisc.voxel.radii import radius_lookup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "results" / "data" / "structures.parquet"
PAPER = {
    "note": "learned VAE+UNet chain out of sample (Table 5, Fig. 4); ours is the oracle ceiling",
    "mean_site_emd_angstrom": 0.09,
    "mean_abs_delta_n_sites": 0.198,
    "lattice_mae_angstrom": 0.06,
}


def size_bin(n: int) -> str:
    for hi in (5, 10, 20, 40):
        if n <= hi:
            return f"<={hi}"
    return ">40"


def reference_loop(cell, grid_size: int, padding: float, label_fraction: float) -> float:
    """Seconds for the straightforward grids: Python loops over voxels x sites (no images)."""
    radii = radius_lookup()[cell.numbers]
    u = voxel_fractions(grid_size, padding)
    a = float(cell.lattice[0])
    sites = cell.frac * a
    density = np.zeros((grid_size,) * 3)
    species = np.zeros((grid_size,) * 3, dtype=np.uint8)
    start = time.perf_counter()
    for i in range(grid_size):
        for j in range(grid_size):
            for k in range(grid_size):
                v = (a * u[i], a * u[j], a * u[k])
                best = np.inf
                for s in range(len(sites)):
                    dx, dy, dz = v[0] - sites[s, 0], v[1] - sites[s, 1], v[2] - sites[s, 2]
                    r = (dx * dx + dy * dy + dz * dz) ** 0.5
                    sigma = radii[s]
                    density[i, j, k] += (
                        cell.numbers[s]
                        * np.exp(-0.5 * (r / sigma) ** 2)
                        / ((2 * np.pi) ** 1.5 * sigma**3)
                    )
                    if r <= label_fraction * sigma and r < best:
                        best = r
                        species[i, j, k] = cell.numbers[s]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--skip-rule", action="store_true", help="do not time the stage")
    args = parser.parse_args()
    settings = validate_config({})
    vox = settings["voxel"]
    grid = {
        "grid_size": vox["grid_size"],
        "padding": vox["padding"],
        "label_fraction": vox["label_fraction"],
        "min_label_radius_voxels": vox["min_label_radius_voxels"],
    }
    # true species maps: regions by species
    inverse_settings = replace(InverseSettings.from_config(vox), regions="species")
    load = os.getloadavg()

    table = read_table(args.data, "structures")
    cubic = table[table["crystal_system"] == "cubic"].reset_index(drop=True)

    # --- cells (standardisation), timed per structure -------------------------------
    cells, rows, skipped = [], [], collections.Counter()
    std_cpu = time.process_time()
    for row in cubic.itertuples():
        try:
            matrix, frac, numbers = arrays_from_dict(json.loads(row.structure_json))
            cell = conventional_cubic(
                matrix, frac, numbers, tolerance=vox["lattice_tolerance"], symprec=vox["symprec"]
            )
            check_cell(cell, max_sites=vox["max_sites"])
        except VoxelizeError as exc:
            skipped[exc.reason] += 1
            continue
        cells.append(cell)
        rows.append(row)
    std_cpu = time.process_time() - std_cpu
    methods = collections.Counter(c.method for c in cells)

    # --- oracle round trip --------------------------------------------------------------
    results, grids = [], []
    fwd_cpu = fwd_wall = inv_cpu = inv_wall = 0.0
    for row, cell in zip(rows, cells, strict=True):
        c0, w0 = time.process_time(), time.perf_counter()
        voxels = voxelize_cell(cell, **grid)
        c1, w1 = time.process_time(), time.perf_counter()
        abc = lattice_from_coords(voxels.coords, grid["padding"])
        inverse = invert(
            voxels.species, lattice_abc=abc, padding=grid["padding"], settings=inverse_settings
        )
        c2, w2 = time.process_time(), time.perf_counter()
        fwd_cpu += c1 - c0
        fwd_wall += w1 - w0
        inv_cpu += c2 - c1
        inv_wall += w2 - w1
        true = voxels.structure
        exact = inverse.structure is not None and sorted(inverse.numbers.tolist()) == sorted(
            cell.numbers.tolist()
        )
        results.append(
            {
                "material_id": row.material_id,
                "formula": row.formula,
                "class": row.structure_class,
                "nsites": len(cell),
                "exact": bool(exact),
                "reason": inverse.reason,
                "n_found": inverse.n_sites,
                "emd": site_emd(inverse.structure, true) if inverse.structure else float("nan"),
                "dn": delta_n_sites(inverse.n_sites, len(cell)),
                "lattice_mae": lattice_mae(abc, voxels.lattice),
            }
        )
        if len(cell) <= 20:
            grids.append(cell)
    n = len(results)
    exact = np.array([r["exact"] for r in results])
    emd = np.array([r["emd"] for r in results])
    by_class: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"n": 0, "failed": 0})
    by_size: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"n": 0, "failed": 0})
    for r in results:
        for table_, key in ((by_class, r["class"]), (by_size, size_bin(r["nsites"]))):
            table_[key]["n"] += 1
            table_[key]["failed"] += int(not r["exact"])
    failures = [
        {k: r[k] for k in ("material_id", "formula", "class", "nsites", "n_found", "reason")}
        for r in results
        if not r["exact"]
    ]
    worst = sorted(results, key=lambda r: -np.nan_to_num(r["emd"], nan=9.0))[:5]

    # --- speed: grids of <= 20-site cells on one core ------------------------------------
    c0, w0 = time.process_time(), time.perf_counter()
    for cell in grids:
        voxelize_cell(cell, **grid)
    grid_cpu, grid_wall = time.process_time() - c0, time.perf_counter() - w0
    c0, w0 = time.process_time(), time.perf_counter()
    small_rows = [r for r, c in zip(rows, cells, strict=True) if len(c) <= 20]
    for row in small_rows:
        matrix, frac, numbers = arrays_from_dict(json.loads(row.structure_json))
        cell = conventional_cubic(
            matrix, frac, numbers, tolerance=vox["lattice_tolerance"], symprec=vox["symprec"]
        )
        voxelize_cell(cell, **grid)
    e2e_cpu, e2e_wall = time.process_time() - c0, time.perf_counter() - w0
    five = next(c for c in cells if len(c) == 5)
    twenty = next(c for c in cells if len(c) == 20)
    ref5 = reference_loop(five, grid["grid_size"], grid["padding"], grid["label_fraction"])
    ref20 = reference_loop(twenty, grid["grid_size"], grid["padding"], grid["label_fraction"])

    def ours(cell, repeat: int = 50) -> float:
        start = time.perf_counter()
        for _ in range(repeat):
            voxelize_cell(cell, **grid)
        return (time.perf_counter() - start) / repeat

    out = {
        "machine": {"cpus": os.cpu_count(), "load_average_1_5_15": [round(x, 2) for x in load]},
        "data": {
            "file": str(args.data),
            "structures": len(table),
            "cubic": len(cubic),
            "voxelizable": n,
            "skipped": dict(skipped),
            "cell_method": dict(methods),
        },
        "oracle_round_trip": {
            "structures": n,
            "exact_sites_and_species_fraction": round(float(exact.mean()), 4),
            "failed": int((~exact).sum()),
            "mean_site_emd_angstrom": round(float(np.nanmean(emd)), 4),
            "max_site_emd_angstrom": round(float(np.nanmax(emd)), 4),
            "mean_abs_delta_n_sites": round(float(np.mean([r["dn"] for r in results])), 4),
            "lattice_mae_angstrom": float(np.mean([r["lattice_mae"] for r in results])),
            "by_class": dict(by_class),
            "by_cell_size": {
                k: by_size[k] for k in ("<=5", "<=10", "<=20", "<=40") if k in by_size
            },
            "failures": failures,
            "largest_emd": [
                {k: r[k] for k in ("material_id", "formula", "class", "nsites", "emd")}
                for r in worst
            ],
            "targets": {
                "exact_fraction": 0.99,
                "mean_site_emd_angstrom": 0.03,
                "lattice_mae_angstrom": 0.02,
            },
            "paper_learned_chain": PAPER,
        },
        "speed_one_core": {
            "grids_le20_sites": {
                "structures": len(grids),
                "per_s_wall": round(len(grids) / grid_wall, 1),
                "per_s_cpu": round(len(grids) / grid_cpu, 1),
                "target_per_s": 500,
            },
            "grids_le20_sites_incl_standardisation": {
                "per_s_wall": round(len(small_rows) / e2e_wall, 1),
                "per_s_cpu": round(len(small_rows) / e2e_cpu, 1),
            },
            "standardisation_all_cubic_cpu_ms_per_structure": round(1e3 * std_cpu / len(cubic), 3),
            "reference_loop_s": {"5_sites": round(ref5, 3), "20_sites": round(ref20, 3)},
            "ours_s": {"5_sites": round(ours(five), 5), "20_sites": round(ours(twenty), 5)},
            "speedup": {
                "5_sites": round(ref5 / ours(five), 1),
                "20_sites": round(ref20 / ours(twenty), 1),
            },
            "forward_all_voxelizable_per_s_cpu": round(n / fwd_cpu, 1),
            "inverse_per_s_wall": round(n / inv_wall, 1),
            "inverse_per_s_cpu": round(n / inv_cpu, 1),
            "inverse_target_per_s": 100,
        },
    }
    if not args.skip_rule:
        out["voxelize_rule"] = time_rule(args.data)
    print(json.dumps(out, indent=1, default=float))


def time_rule(data: Path) -> dict:
    """The voxelize-structures stage on ``data`` with 2 threads, as the workflow runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "cubic.zarr"
        cmd = [
            sys.executable,
            "-m",
            "matdisc.cli",
            "voxelize-structures",
            "--config",
            str(ROOT / "config" / "config.yaml"),
            "--threads",
            "2",
            "--input",
            f"structures={data}",
            "--output",
            f"voxels={target}",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"voxelize-structures stage failed:\n{proc.stderr[-3000:]}")
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        entries = int(
            np.asarray(__import__("zarr").open_group(str(target), mode="r")["lattice"]).shape[0]
        )
    return {
        "threads": 2,
        "wall_s": round(wall, 2),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
        "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
        "entries": entries,
        "store_mb": round(size / 2**20, 1),
        "target_wall_s": 60,
    }


if __name__ == "__main__":
    main()
