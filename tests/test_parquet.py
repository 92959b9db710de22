"""Parquet tables: schema casting, round trips, provenance metadata, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from matdisc.errors import UserError
from matdisc.io import read_table, write_table
from matdisc.io.parquet import read_metadata
from matdisc.io.schemas import PROPERTY_COLUMNS, STRUCTURES


def _row(**overrides) -> dict:
    row = {
        "material_id": "mp-1", "formula": "NaCl", "formula_anonymous": "AB",
        "structure_class": "binary_AB", "crystal_system": "cubic", "spacegroup_number": 225,
        "nsites": 2, "structure_json": "{}", "source": "test", "split": "train",
        **dict.fromkeys(PROPERTY_COLUMNS, np.nan),
    }  # fmt: skip
    row.update(overrides)
    return row


def test_round_trip_keeps_schema_and_values(tmp_path: Path) -> None:
    frame = pd.DataFrame([_row(), _row(material_id="mp-2", band_gap_ev=1.5)])
    path = write_table(frame, tmp_path / "s.parquet", "structures", metadata={"seed": 7})
    assert pq.read_schema(path).remove_metadata().equals(STRUCTURES.remove_metadata())
    back = read_table(path, "structures")
    assert back["band_gap_ev"].tolist()[1] == 1.5 and np.isnan(back["band_gap_ev"].tolist()[0])
    assert back["spacegroup_number"].dtype == np.int16
    meta = read_metadata(path)
    assert meta["seed"] == 7 and meta["schema"] == "structures"
    assert {"matdisc", "pymatgen", "pyarrow", "torch"} <= set(meta["versions"])


def test_missing_or_extra_column_is_an_error(tmp_path: Path) -> None:
    frame = pd.DataFrame([_row()])
    with pytest.raises(ValueError, match="missing columns \\['split'\\]"):
        write_table(frame.drop(columns="split"), tmp_path / "a.parquet", "structures")
    with pytest.raises(ValueError, match="unexpected columns \\['extra'\\]"):
        write_table(frame.assign(extra=1), tmp_path / "b.parquet", "structures")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    write_table(pd.DataFrame([_row()]), path, "structures")
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_table(pd.DataFrame([_row()]).drop(columns="nsites"), path, "structures")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.parquet"]


def test_reading_the_wrong_table_is_an_error(tmp_path: Path) -> None:
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(UserError, match="not a 'structures' table"):
        read_table(tmp_path / "x.parquet", "structures")


def test_a_missing_or_unreadable_input_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"input table .*nope.parquet does not exist"):
        read_table(tmp_path / "nope.parquet", "structures")
    (tmp_path / "table.csv").write_text("material_id,formula\nmp-1,NaCl\n")
    with pytest.raises(UserError, match=r"table.csv is not a readable parquet table"):
        read_table(tmp_path / "table.csv", "structures")
