"""The voxel store: a zarr (v3) group written by the ``voxelize`` stage.

Layout of ``results/voxels/cubic.zarr`` (N entries, grid side d)::

    density            (N, d, d, d) float32  e/Å³, chunk (8, d, d, d), blosc-lz4
    species            (N, d, d, d) uint8    atomic number, 0 = background, same chunks
    lattice            (N, 3)       float32  a, b, c (Å) of the conventional cell
    material_id, formula, split, structure_class, structure_json   (N,) str
    e_form_ev_per_atom (N,) float64 (NaN = unknown)
    decile             (N,) int64   formation-energy decile 0..9, -1 = unknown
    nsites             (N,) int32   sites of the conventional cell
    spacegroup_number  (N,) int16
    attrs: format, version, grid_size, padding, label_fraction, min_label_radius_voxels,
           max_sites, radius_table (+ sha256), decile_edges (9 inner edges, eV/atom,
           from the train split), elements_train, skipped (reason -> count), units

``structure_json`` is the voxelized conventional cell (pymatgen ``Structure.as_dict()``),
the ground truth the inverse is compared with. The mask is ``species > 0``; the
coordinate grid C is not stored: :func:`matdisc.voxel.coordinate_grid` of ``lattice``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "matdisc-voxels"
VERSION = 1

#: Entries per chunk of the grid arrays: 8 compress twice as well and write 3x faster than
#: single-entry chunks (zarr's per-chunk overhead); reading one entry decodes 8 (~5 ms).
CHUNK_ENTRIES = 8

STRING_FIELDS = ("material_id", "formula", "split", "structure_class", "structure_json")


@dataclass
class VoxelStore:
    """An opened voxel store. Per-entry metadata are numpy arrays in memory; ``density``
    and ``species`` are zarr arrays (read on slicing, e.g. ``store.density[i]``)."""

    path: Path
    material_id: np.ndarray
    formula: np.ndarray
    split: np.ndarray
    structure_class: np.ndarray
    decile: np.ndarray
    decile_edges: np.ndarray
    e_form_ev_per_atom: np.ndarray
    lattice: np.ndarray
    nsites: np.ndarray
    spacegroup_number: np.ndarray
    density: Any
    species: Any
    grid_size: int
    padding: float
    attrs: dict[str, Any] = field(repr=False)
    _structure_json: Any = field(repr=False)

    def __len__(self) -> int:
        return len(self.material_id)

    def elements(self) -> list[int]:
        """Sorted atomic numbers present in the species maps of the train split."""
        return [int(z) for z in self.attrs["elements_train"]]

    def mask(self, index: Any) -> np.ndarray:
        """Binary mask of entry/entries ``index``: species > 0."""
        return np.asarray(self.species[index]) > 0

    def coords(self, index: int) -> np.ndarray:
        """Coordinate grid (3, d, d, d) float32 Å of entry ``index``."""
        from matdisc.voxel.grid import coordinate_grid

        return coordinate_grid(self.lattice[index][None], self.grid_size, self.padding)[0]

    def structure(self, index: int):
        """The voxelized conventional cell of entry ``index`` as a pymatgen ``Structure``."""
        from pymatgen.core import Structure

        return Structure.from_dict(json.loads(str(self._structure_json[index])))

    def structures(self, indices: Any) -> list[Any]:
        """:meth:`structure` of many entries, the stored cells read in one pass (a read per
        entry costs ~5 ms on the zarr array)."""
        from pymatgen.core import Structure

        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not len(indices):
            return []
        lo, hi = int(indices.min()), int(indices.max()) + 1
        block = np.asarray(self._structure_json[lo:hi])
        return [Structure.from_dict(json.loads(str(block[i - lo]))) for i in indices]


def open_store(path: Path | str) -> VoxelStore:
    """Open a store written by the voxelize stage (read-only)."""
    import zarr

    path = Path(path)
    if not path.exists():
        from matdisc.errors import UserError

        raise UserError(
            f"voxel store {path} does not exist; build it with "
            f"snakemake --cores 2 results/voxels/cubic.zarr"
        )
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    if attrs.get("format") != FORMAT:
        raise ValueError(f"{path} is not a matdisc voxel store (format {attrs.get('format')!r})")

    def strings(name: str) -> np.ndarray:
        return np.asarray(group[name][:]).astype(object).astype(str)

    return VoxelStore(
        path=path,
        material_id=strings("material_id"),
        formula=strings("formula"),
        split=strings("split"),
        structure_class=strings("structure_class"),
        decile=np.asarray(group["decile"][:], dtype=np.int64),
        decile_edges=np.asarray(attrs["decile_edges"], dtype=np.float64),
        e_form_ev_per_atom=np.asarray(group["e_form_ev_per_atom"][:], dtype=np.float64),
        lattice=np.asarray(group["lattice"][:], dtype=np.float32),
        nsites=np.asarray(group["nsites"][:], dtype=np.int32),
        spacegroup_number=np.asarray(group["spacegroup_number"][:], dtype=np.int16),
        density=group["density"],
        species=group["species"],
        grid_size=int(attrs["grid_size"]),
        padding=float(attrs["padding"]),
        attrs=attrs,
        _structure_json=group["structure_json"],
    )


def create_store(
    path: Path | str, entries: dict[str, np.ndarray], grid_size: int, attrs: dict[str, Any]
) -> None:
    """Create the group at ``path`` with the per-entry arrays filled and the two grid
    arrays allocated (filled later, chunk by chunk, by :func:`write_grids`)."""
    import zarr
    from zarr.codecs import BloscCodec, BloscShuffle

    n = len(entries["material_id"])
    group = zarr.open_group(str(path), mode="w")
    d = grid_size
    group.create_array(
        "density",
        shape=(n, d, d, d),
        chunks=(CHUNK_ENTRIES, d, d, d),
        dtype="float32",
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle),
        fill_value=0.0,
    )
    group.create_array(
        "species",
        shape=(n, d, d, d),
        chunks=(CHUNK_ENTRIES, d, d, d),
        dtype="uint8",
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle),
        fill_value=0,
    )
    for name, values in entries.items():
        if name in STRING_FIELDS:
            array = group.create_array(name, shape=(n,), dtype=str, chunks=(max(n, 1),))
            array[:] = np.asarray(values, dtype=str)
        else:
            values = np.asarray(values)
            array = group.create_array(
                name, shape=values.shape, dtype=values.dtype, chunks=values.shape or None
            )
            array[...] = values
    group.attrs.update({"format": FORMAT, "version": VERSION, **attrs})


def write_grids(path: Path | str, start: int, density: np.ndarray, species: np.ndarray) -> None:
    """Write entries ``start .. start + len(density)`` of the grid arrays (any process).

    ``start`` must be a multiple of :data:`CHUNK_ENTRIES` (and the batch whole chunks,
    except the last) so that concurrent writers never touch the same chunk.
    """
    if start % CHUNK_ENTRIES:
        raise ValueError(f"grid batches must start on a chunk boundary ({CHUNK_ENTRIES})")
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    stop = start + len(density)
    group["density"][start:stop] = density
    group["species"][start:stop] = species
