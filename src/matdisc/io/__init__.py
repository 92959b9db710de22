"""Typed, atomic reading and writing of the pipeline's tables and files."""

from __future__ import annotations

from matdisc.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from matdisc.io.parquet import read_table, write_table

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "read_table", "write_table"]
