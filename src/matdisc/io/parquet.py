"""Schema-checked, atomic parquet I/O with provenance in the file metadata."""

from __future__ import annotations

import contextlib
import contextvars
import json
import platform
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from matdisc.errors import UserError
from matdisc.io.atomic import atomic_path
from matdisc.io.schemas import SCHEMAS

METADATA_KEY = b"matdisc"
#: Metadata every table written in this context records besides its own (see
#: :func:`run_metadata`).
RUN_METADATA: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "RUN_METADATA", default=None
)
_VERSIONED = ("matdisc", "numpy", "pandas", "pyarrow", "pymatgen", "torch", "snakemake")


def package_versions() -> dict[str, str]:
    """Versions of matdisc and the libraries whose behaviour shapes its results."""
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _schema(name: str) -> pa.Schema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"no parquet schema named {name!r}; known: {sorted(SCHEMAS)}") from None


def conform(frame: pd.DataFrame, schema_name: str) -> pa.Table:
    """Cast ``frame`` to the named schema; a missing or extra column is an error."""
    schema = _schema(schema_name)
    expected = schema.names
    missing = [c for c in expected if c not in frame.columns]
    extra = [c for c in frame.columns if c not in expected]
    if missing or extra:
        raise ValueError(
            f"table {schema_name!r} does not match its schema: missing columns {missing}, "
            f"unexpected columns {extra}"
        )
    table = pa.Table.from_pandas(frame[expected], preserve_index=False)
    return table.cast(schema)


def write_table(
    frame: pd.DataFrame,
    path: Path | str,
    schema_name: str,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``frame`` atomically as parquet, cast to its schema, with provenance metadata.

    The file metadata key ``matdisc`` holds JSON with the schema name, the versions of
    the libraries involved, and ``metadata`` (for example seeds, sources, config).
    """
    table = conform(frame, schema_name)
    info = {
        "schema": schema_name,
        "versions": package_versions(),
        **(RUN_METADATA.get() or {}),
        **(metadata or {}),
    }
    existing = table.schema.metadata or {}
    table = table.replace_schema_metadata(
        {**existing, METADATA_KEY: json.dumps(info, sort_keys=True, default=str).encode()}
    )
    path = Path(path)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


@contextlib.contextmanager
def run_metadata(values: Mapping[str, Any]) -> Iterator[None]:
    """Inside the block, every table written also records ``values`` (the command line sets
    the stage's seed and settings, so that no table lacks them)."""
    token = RUN_METADATA.set(dict(values))
    try:
        yield
    finally:
        RUN_METADATA.reset(token)


def read_table(path: Path | str, schema_name: str | None = None) -> pd.DataFrame:
    """Read a parquet table; with ``schema_name``, check that it has that schema.

    A missing file, a file that is not parquet and a table of another schema are each one
    sentence (:class:`UserError`) naming the path.
    """
    if not Path(path).is_file():
        raise UserError(
            f"input table {path} does not exist; run the rule that writes it, or fix the path."
        )
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(
            f"{path} is not a readable parquet table ({type(exc).__name__}); pass the parquet "
            "file the pipeline wrote, or re-run the rule that writes it."
        ) from exc
    if schema_name is not None:
        schema = _schema(schema_name)
        if table.schema.names != schema.names:
            raise UserError(
                f"{path} is not a {schema_name!r} table: columns {table.schema.names} "
                f"differ from {schema.names}; re-run the stage that writes it"
            )
    return table.to_pandas()


def read_metadata(path: Path | str) -> dict[str, Any]:
    """The ``matdisc`` provenance metadata of a parquet file written by :func:`write_table`."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}
