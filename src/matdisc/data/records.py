"""The record every source produces, and its conversion into the structures table."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Structure
from pymatgen.io.cif import CifParser
from pymatgen.io.vasp import Poscar
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matdisc.errors import UserError
from matdisc.io.schemas import PROPERTY_COLUMNS, SPLITS
from matdisc.progress import progress

log = logging.getLogger(__name__)

_CLASS_BY_ANONYMOUS = {
    "AB": "binary_AB",
    "ABC3": "perovskite_ABX3",
    "ABC2": "heusler_X2YZ",
    "ABC": "half_heusler_XYZ",
}


#: Ways a source may hand over a structure without parsing it itself: parsing is the slow
#: part of reading a data set, so it happens in the worker processes of :func:`build_table`.
PAYLOAD_KINDS = ("pymatgen_dict", "python_repr_dict", "poscar", "cif", "json")


@dataclass
class Record:
    """One material from any source: its structure, known properties and provenance.

    ``structure`` is a pymatgen Structure, or a ``(kind, data)`` payload parsed later by
    :func:`parse_structure` (kind in :data:`PAYLOAD_KINDS`).
    """

    material_id: str
    structure: Structure | tuple[str, Any]
    properties: dict[str, float] = field(default_factory=dict)  # keys from PROPERTY_COLUMNS
    source: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.properties) - set(PROPERTY_COLUMNS)
        if unknown:
            raise ValueError(f"unknown property names {sorted(unknown)}")

    def payload(self) -> tuple[str, Any]:
        if isinstance(self.structure, Structure):
            return ("pymatgen_dict", self.structure.as_dict())
        return self.structure


def _from_dict_fast(d: dict[str, Any]) -> Structure:
    """Structure.from_dict for ordered structures, without per-site properties (fast path)."""
    sites = d["sites"]
    if any(len(s["species"]) != 1 or float(s["species"][0].get("occu", 1)) != 1.0 for s in sites):
        return Structure.from_dict(d)  # disordered: let pymatgen represent it faithfully
    return Structure(
        d["lattice"]["matrix"],
        [s["species"][0]["element"] for s in sites],
        [s["abc"] for s in sites],
    )


def parse_structure(kind: str, data: Any) -> Structure:
    """Parse a structure payload (see :data:`PAYLOAD_KINDS`)."""
    if kind == "pymatgen_dict":
        return _from_dict_fast(data)
    if kind == "python_repr_dict":
        return _from_dict_fast(ast.literal_eval(data))
    if kind == "json":
        return _from_dict_fast(json.loads(data))
    if kind == "poscar":
        return Poscar.from_str(data).structure
    if kind == "cif":
        with warnings.catch_warnings():  # CifParser warns per odd tag; failures still raise
            warnings.simplefilter("ignore")
            structures = CifParser.from_str(data).parse_structures(primitive=False)
        if len(structures) != 1:
            raise ValueError(f"the CIF holds {len(structures)} structures, expected 1")
        return structures[0]
    raise ValueError(f"unknown structure payload kind {kind!r}")


def structure_class(composition: Composition) -> str:
    """binary AB / perovskite ABX3 / Heusler X2YZ / half-Heusler XYZ / other (by formula)."""
    return _CLASS_BY_ANONYMOUS.get(composition.anonymized_formula, "other")


def assign_split(material_ids: Sequence[str], seed: int, fractions: dict[str, float]) -> np.ndarray:
    """Split by a seeded hash of each material id.

    A material keeps its split when the data set grows or is reordered, and the same
    seed gives the same split on every machine.
    """
    total = sum(fractions[s] for s in SPLITS)
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise UserError(
            f"data.split fractions sum to {total:g}, not 1; change data.split in config/config.yaml."
        )
    edges = np.cumsum([fractions[s] for s in SPLITS])
    u = np.array(
        [
            int.from_bytes(hashlib.sha256(f"{seed}:{mid}".encode()).digest()[:8], "big") / 2**64
            for mid in material_ids
        ]
    )
    index = np.searchsorted(edges, u, side="right").clip(max=len(SPLITS) - 1)
    return np.asarray(SPLITS, dtype=object)[index]


def _describe(args: tuple[str, dict[str, Any], float]) -> dict[str, Any] | str:
    """Row fields derived from one structure (runs in a worker process).

    Returns the fields, or a string saying why the structure was skipped.
    """
    _, (kind, data), symprec = args
    try:
        structure = parse_structure(kind, data)
        if not structure.is_ordered:
            return "disordered structure (partial occupancies)"
        composition = structure.composition
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
        spacegroup = analyzer.get_space_group_number()
        crystal_system = analyzer.get_crystal_system()
    except Exception as exc:  # any failure skips this one structure, with its reason
        return f"{type(exc).__name__}: {exc}"
    return {
        "formula": composition.reduced_formula,
        "formula_anonymous": composition.anonymized_formula,
        "structure_class": structure_class(composition),
        "crystal_system": crystal_system,
        "spacegroup_number": spacegroup,
        "nsites": len(structure),
        "structure_json": json.dumps(structure.as_dict(), separators=(",", ":")),
    }


def build_table(
    records: Iterable[Record],
    *,
    seed: int,
    split: dict[str, float],
    symprec: float = 0.1,
    workers: int = 1,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Records -> the structures table (schema ``structures``) and skip counts by reason.

    Duplicated material ids are an error of the source, not something to guess about.
    """
    records = list(records)
    ids = [r.material_id for r in records]
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids).value_counts()
        raise UserError(
            f"material ids appear more than once in the input ({', '.join(dup[dup > 1].index[:5])}); "
            "give every material a unique id."
        )
    jobs = [(r.material_id, r.payload(), symprec) for r in records]
    if workers > 1 and len(jobs) > 200:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            described = list(
                progress(
                    pool.map(_describe, jobs, chunksize=64),
                    total=len(jobs),
                    desc="symmetry",
                    unit="structure",
                )
            )
    else:
        described = [_describe(j) for j in progress(jobs, desc="symmetry", unit="structure")]

    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for record, info in zip(records, described, strict=True):
        if isinstance(info, str):
            skipped[info] = skipped.get(info, 0) + 1
            log.warning("skipping %s: %s", record.material_id, info)
            continue
        row: dict[str, Any] = {"material_id": record.material_id, **info}
        for name in PROPERTY_COLUMNS:
            row[name] = float(record.properties.get(name, math.nan))
        row["source"] = record.source
        rows.append(row)
    if not rows:
        raise UserError(
            "no usable structure is left after reading the data source; check data.source and its input."
        )
    frame = pd.DataFrame(rows)
    frame["split"] = assign_split(frame["material_id"].tolist(), seed, split)
    frame = frame.sort_values("material_id", kind="stable").reset_index(drop=True)
    return frame, skipped


def structure_from_json(text: str) -> Structure:
    """Inverse of the ``structure_json`` column."""
    return Structure.from_dict(json.loads(text))
