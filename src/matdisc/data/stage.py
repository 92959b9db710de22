"""Stage entry points: ``download-structures`` and ``select-base-compounds``.

``download-structures`` (rule ``download_structures``) writes
``results/data/structures.parquet`` from ``data.source``; ``select-base-compounds``
(rule ``select_base_compounds``) checks the configured base compounds against it and
writes ``results/data/base_compounds.parquet``.
"""

from __future__ import annotations

import logging

from matdisc.data.bases import select_bases
from matdisc.data.download import structures_table
from matdisc.io import read_table, write_table
from matdisc.stage import StageCall

log = logging.getLogger(__name__)


def download_structures(call: StageCall) -> None:
    """The configured source -> structures.parquet (schema ``structures``)."""
    data = call.section("data")
    out = call.output("structures")
    cache_dir = out.parent / "cache"  # kept between runs: the sdist, raw API pages
    frame, skipped = structures_table(data, cache_dir, seed=call.seed, workers=call.threads)
    write_table(
        frame,
        out,
        "structures",
        metadata={"source": data["source"], "seed": call.seed, "data": data, "skipped": skipped},
    )
    cubic = int((frame["crystal_system"] == "cubic").sum())
    log.info(
        "wrote %s: %d materials (%d cubic), splits %s",
        out,
        len(frame),
        cubic,
        frame["split"].value_counts().to_dict(),
    )


def select_base_compounds(call: StageCall) -> None:
    """structures.parquet + ``base_compounds`` -> base_compounds.parquet, one row per base."""
    table = read_table(call.input("structures"), "structures")
    bases = call.settings["base_compounds"]
    frame = select_bases(bases, table, call.section("voxel")["max_sites"])
    write_table(frame, call.output("bases"), "base_compounds", metadata={"bases": list(bases)})
