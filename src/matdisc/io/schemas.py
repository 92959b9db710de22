"""One pyarrow schema per parquet table the pipeline writes.

Writing a table (:func:`matdisc.io.parquet.write_table`) casts the frame to its schema
and fails on a missing or an extra column, so every consumer can rely on these names,
types and units. Units are part of the column names.
"""

from __future__ import annotations

import pyarrow as pa

#: The eight properties of the seed (Court et al. 2020, Table 1), in its order, with units.
PROPERTY_COLUMNS: tuple[str, ...] = (
    "e_form_ev_per_atom",
    "energy_ev_per_atom",
    "band_gap_ev",
    "k_vrh_gpa",
    "g_vrh_gpa",
    "poisson_ratio",
    "refractive_index",
    "dielectric_total",
)

#: Structure classes of the seed's training data, by anonymous formula.
STRUCTURE_CLASSES: tuple[str, ...] = (
    "binary_AB",
    "perovskite_ABX3",
    "heusler_X2YZ",
    "half_heusler_XYZ",
    "other",
)

SPLITS: tuple[str, ...] = ("train", "val", "test")

STRUCTURES = pa.schema(
    [
        pa.field("material_id", pa.string(), nullable=False),
        pa.field("formula", pa.string(), nullable=False),  # reduced formula, e.g. SrTiO3
        pa.field("formula_anonymous", pa.string(), nullable=False),  # e.g. ABC3
        pa.field("structure_class", pa.string(), nullable=False),
        pa.field("crystal_system", pa.string(), nullable=False),
        pa.field("spacegroup_number", pa.int16(), nullable=False),
        pa.field("nsites", pa.int32(), nullable=False),
        pa.field("structure_json", pa.string(), nullable=False),  # pymatgen Structure.as_dict()
        *(pa.field(name, pa.float64()) for name in PROPERTY_COLUMNS),
        pa.field("source", pa.string(), nullable=False),  # provenance of row and labels
        pa.field("split", pa.string(), nullable=False),
    ]
)

BASE_COMPOUNDS = pa.schema(
    [
        pa.field("base", pa.string(), nullable=False),  # the name used in config and paths
        pa.field("material_id", pa.string(), nullable=False),
        pa.field("formula", pa.string(), nullable=False),
        pa.field("formula_anonymous", pa.string(), nullable=False),
        pa.field("structure_class", pa.string(), nullable=False),
        pa.field("spacegroup_number", pa.int16(), nullable=False),
        pa.field("nsites", pa.int32(), nullable=False),
        pa.field("e_form_ev_per_atom", pa.float64()),
        pa.field("structure_json", pa.string(), nullable=False),
    ]
)

#: name -> schema; the name is what :func:`write_table` and :func:`read_table` take.
SCHEMAS: dict[str, pa.Schema] = {
    "structures": STRUCTURES,
    "base_compounds": BASE_COMPOUNDS,
}
