"""The ``local`` source: the user's own structures.

``data.local.path`` is either

- a folder of ``*.cif`` files (material id = file name without ``.cif``), or
- a ``.csv`` or ``.parquet`` table with a ``material_id`` column, a structure column
  (``cif`` with CIF text, or ``structure_json`` with pymatgen ``Structure.as_dict()``
  JSON) and any of the property columns of :data:`matdisc.io.schemas.PROPERTY_COLUMNS`.

A CIF that cannot be read is skipped, counted and named in the log; the run fails only
when nothing usable remains.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from matdisc.data.records import Record
from matdisc.errors import UserError
from matdisc.io.schemas import PROPERTY_COLUMNS

log = logging.getLogger(__name__)


def _from_folder(folder: Path) -> list[Record]:
    files = sorted(folder.glob("*.cif"))
    if not files:
        raise UserError(
            f"data.local.path {folder} holds no *.cif files; point it at CIFs or a table."
        )
    label = f"local:{folder.name}"
    return [
        Record(material_id=f.stem, structure=("cif", f.read_text(errors="replace")), source=label)
        for f in files
    ]


def _from_table(path: Path) -> list[Record]:
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path)
    else:
        raise UserError(f"data.local.path {path} is neither a folder, a .csv nor a .parquet file.")
    if "material_id" not in frame.columns:
        raise UserError(f"{path} has no material_id column; add one (a unique id per row).")
    if "cif" in frame.columns:
        kind, column = "cif", "cif"
    elif "structure_json" in frame.columns:
        kind, column = "json", "structure_json"
    else:
        raise UserError(f"{path} has neither a cif nor a structure_json column; add one of them.")
    props = [c for c in PROPERTY_COLUMNS if c in frame.columns]
    for name in props:
        _check_numbers(frame[name], name, path)
    log.info("%s: %d rows, structures from %r, properties %s", path, len(frame), column, props)
    records = []
    for row in frame.to_dict("records"):
        values: dict[str, Any] = {p: float(row[p]) for p in props if not _missing(row[p])}
        records.append(
            Record(
                material_id=str(row["material_id"]),
                structure=(kind, row[column]),
                properties=values,
                source=f"local:{path.name}",
            )
        )
    return records


def _check_numbers(column: pd.Series, name: str, path: Path) -> None:
    """One sentence for the first value of a property column that is not a finite number
    (empty cells are fine: the property is unknown there)."""
    numbers = pd.to_numeric(column, errors="coerce")
    bad = column.notna() & ~numbers.map(lambda v: math.isfinite(v) if pd.notna(v) else False)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise UserError(
            f"{path}: column {name} holds '{column.iloc[row]}' in row {row + 1}, not a finite "
            f"number; write plain numbers in the column's unit (leave a cell empty if unknown)."
        )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def load_local(settings: dict[str, Any]) -> list[Record]:
    """Records of the ``local`` source (``settings`` = the ``data.local`` section)."""
    if not settings.get("path"):
        raise UserError(
            "data.source is 'local' but data.local.path is not set; set it in config/config.yaml."
        )
    path = Path(settings["path"]).expanduser()
    if not path.exists():
        raise UserError(
            f"data.local.path {path} does not exist; fix the path in config/config.yaml."
        )
    return _from_folder(path) if path.is_dir() else _from_table(path)
