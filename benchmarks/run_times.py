"""Where the time of a pipeline run went: per-rule wall and CPU time from Snakemake's
``benchmark:`` records, and the run's wall time from its Snakemake log.

Run it in the work tree of a finished run (``snakemake --cores all all``):

    python benchmarks/run_times.py [--root .] [--log .snakemake/log/<newest>.snakemake.log]

Prints one JSON object: ``wall_s`` (first to last time stamp of the log), and per rule the
number of jobs, the summed and the longest job's wall time and the summed CPU time
(``cpu_time`` / ``s`` near the rule's threads means its threads were busy). Jobs run side by
side when their threads fit the cores, so the rules' sum can exceed ``wall_s``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]")


def rule_times(root: Path) -> dict[str, dict[str, float]]:
    """Per rule: jobs, summed and longest wall seconds, summed CPU seconds."""
    rules: dict[str, dict[str, float]] = {}
    for record in sorted((root / "benchmarks").glob("*/*.tsv")):
        with record.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows:
            continue
        wall, cpu = float(rows[-1]["s"]), float(rows[-1]["cpu_time"])
        entry = rules.setdefault(
            record.parent.name, {"jobs": 0, "wall_s": 0.0, "longest_s": 0.0, "cpu_s": 0.0}
        )
        entry["jobs"] += 1
        entry["wall_s"] = round(entry["wall_s"] + wall, 1)
        entry["longest_s"] = round(max(entry["longest_s"], wall), 1)
        entry["cpu_s"] = round(entry["cpu_s"] + cpu, 1)
    return dict(sorted(rules.items(), key=lambda item: -item[1]["wall_s"]))


def log_wall_seconds(log: Path) -> float | None:
    """Seconds from the first to the last time stamp of a Snakemake log."""
    stamps = [
        datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        for line in log.read_text().splitlines()
        if (m := STAMP.match(line))
    ]
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--log", type=Path, default=None, help="default: the newest log")
    args = parser.parse_args()
    logs = sorted((args.root / ".snakemake" / "log").glob("*.snakemake.log"))
    log = args.log or (logs[-1] if logs else None)
    rules = rule_times(args.root)
    print(
        json.dumps(
            {
                "benchmark": "run_times",
                "log": str(log) if log else None,
                "wall_s": log_wall_seconds(log) if log else None,
                "rules_wall_s": round(sum(r["wall_s"] for r in rules.values()), 1),
                "rules": rules,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
