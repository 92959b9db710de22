"""The structures table from the configured source (``data.source``)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from matdisc.data.local import load_local
from matdisc.data.records import Record, build_table
from matdisc.data.snapshot import load_snapshot
from matdisc.io.schemas import PROPERTY_COLUMNS

log = logging.getLogger(__name__)


def load_records(data: dict[str, Any], cache_dir: Path) -> list[Record]:
    """Records from ``data.source`` (``data`` = the validated ``data`` config section)."""
    source = data["source"]
    if source == "snapshot":
        return load_snapshot(data["snapshot"], cache_dir)
    if source == "local":
        return load_local(data["local"])
    from matdisc.data.mp import fetch_mp_records

    fetched = fetch_mp_records(data["mp"], cache_dir / "mp", api_key=os.environ.get("MP_API_KEY"))
    return [records_from_mp(doc) for doc in fetched]


def records_from_mp(doc: dict[str, Any]) -> Record:
    """A record from one document of :func:`matdisc.data.mp.fetch_mp_records`."""
    properties = {
        name: float(doc[name])
        for name in PROPERTY_COLUMNS
        if doc.get(name) is not None and not math.isnan(float(doc[name]))
    }
    return Record(
        material_id=str(doc["material_id"]),
        structure=doc["structure"],
        properties=properties,
        source=str(doc.get("source", "mp-api")),
    )


def structures_table(
    data: dict[str, Any], cache_dir: Path, *, seed: int, workers: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The structures table (schema ``structures``) of ``data.source`` and the number of
    structures skipped per reason; ``cache_dir`` keeps the sdist and raw API pages."""
    records = load_records(data, cache_dir)
    log.info(
        "%s: %d records read; building the table with %d workers",
        data["source"],
        len(records),
        workers,
    )
    frame, skipped = build_table(
        records,
        seed=seed,
        split=data["split"],
        symprec=data["symprec"],
        workers=workers,
    )
    total_skipped = sum(skipped.values())
    if total_skipped:
        log.warning("skipped %d of %d structures:", total_skipped, len(records))
        for reason, count in sorted(skipped.items(), key=lambda kv: -kv[1]):
            log.warning("  %5d  %s", count, reason)
    return frame, skipped
