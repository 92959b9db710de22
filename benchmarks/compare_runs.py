"""Did two runs of the same commit and config give the same models and tables?

Compares every tensor of the state dicts in ``results/models/*.pt`` and
``results/models/cgcnn/*.pt`` (the files also hold timings, so their hashes differ), and the
data of every parquet table under ``results/`` (not their metadata, which holds times; nor
columns of seconds, nor the rows of long-form metric tables whose metric is a time or rate).
Prints one JSON object: per model file the tensors compared and those that differ, per table
whether its data are equal, and ``identical`` over all of them.

    python benchmarks/compare_runs.py RUN_A RUN_B   (the work trees, each with results/)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch


def _models(results: Path) -> dict[str, Path]:
    files = [*(results / "models").glob("*.pt"), *(results / "models" / "cgcnn").glob("*.pt")]
    return {str(f.relative_to(results)): f for f in files}


def compare_models(a: Path, b: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    models_a, models_b = _models(a), _models(b)
    for name in sorted(models_a.keys() | models_b.keys()):
        if name not in models_a or name not in models_b:
            out[name] = {"missing_in": "a" if name not in models_a else "b"}
            continue
        sa = torch.load(models_a[name], weights_only=False)["state_dict"]
        sb = torch.load(models_b[name], weights_only=False)["state_dict"]
        differ = [
            k
            for k in sorted(sa.keys() | sb.keys())
            if k not in sa
            or k not in sb
            or sa[k].dtype != sb[k].dtype
            or sa[k].shape != sb[k].shape
            or not torch.equal(sa[k], sb[k])
        ]
        out[name] = {"tensors": len(sa), "differ": differ}
    return out


def compare_tables(a: Path, b: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    tables = {p.relative_to(a) for p in a.rglob("*.parquet")} | {
        p.relative_to(b) for p in b.rglob("*.parquet")
    }
    for rel in sorted(tables, key=str):
        if "cache" in rel.parts:  # caches of downloads and reference phases, not results
            continue
        pa_, pb = a / rel, b / rel
        if not pa_.is_file() or not pb.is_file():
            out[str(rel)] = "missing in " + ("a" if not pa_.is_file() else "b")
            continue
        fa, fb = pd.read_parquet(pa_), pd.read_parquet(pb)
        # wall and CPU times and rates per CPU hour: measurements of the machine, not results
        timing = [c for c in fa.columns if "seconds" in c or "cpu_hour" in c]
        timing_rows: list[str] = []
        if "metric" in fa.columns and "metric" in fb.columns:  # long-form metric tables
            timing_rows = sorted({m for m in fa["metric"] if "second" in str(m)})
            fa = fa[~fa["metric"].isin(timing_rows)].reset_index(drop=True)
            fb = fb[~fb["metric"].isin(timing_rows)].reset_index(drop=True)
        try:
            pd.testing.assert_frame_equal(
                fa.drop(columns=timing), fb.drop(columns=timing, errors="ignore")
            )
            out[str(rel)] = {
                "rows": len(fa),
                "equal": True,
                "timing_columns_ignored": timing,
                **({"timing_metrics_ignored": timing_rows} if timing_rows else {}),
            }
        except AssertionError as exc:
            out[str(rel)] = {"rows": [len(fa), len(fb)], "equal": False, "first": str(exc)[:300]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    models = compare_models(args.a / "results", args.b / "results")
    tables = compare_tables(args.a / "results", args.b / "results")
    identical = all(not m.get("differ", [1]) for m in models.values()) and all(
        isinstance(t, dict) and t["equal"] for t in tables.values()
    )
    print(
        json.dumps(
            {
                "benchmark": "compare_runs",
                "identical": identical,
                "models": models,
                "tables": tables,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
