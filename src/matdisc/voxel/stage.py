"""The ``voxelize-structures`` stage: cubic structures of the downloaded table -> voxel
store (zarr).

1. Rows with ``crystal_system == "cubic"`` are taken to their conventional cubic cell
   (:mod:`matdisc.voxel.cell`) in parallel; cells with more than ``voxel.max_sites``
   sites, elements without a radius, disordered or unreadable structures are skipped,
   counted by reason and logged.
2. Formation-energy decile edges come from the train split of the kept entries only;
   every entry gets its decile (-1 when its formation energy is unknown).
3. The grids are computed in parallel batches (dask; :func:`matdisc.parallel.dask_compute`)
   and each batch writes its own chunks of the store, so memory stays at a few batches.
   The store is written to a temporary directory next to the output and renamed onto it
   when complete.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matdisc.errors import UserError
from matdisc.stage import StageCall

log = logging.getLogger(__name__)

N_DECILES = 10


def voxelize_structures(call: StageCall) -> None:
    settings = call.section("voxel")
    address = call.section("dask").get("scheduler_address")
    source = call.input("structures")
    target = call.output("voxels")
    build_store(source, target, settings, threads=call.threads, address=address)


def build_store(
    source: Path | str,
    target: Path | str,
    settings: dict[str, Any],
    *,
    threads: int = 1,
    address: str | None = None,
) -> dict[str, Any]:
    """Voxelize the cubic rows of a structures table into a store at ``target``.

    settings: the validated ``voxel`` config section. Returns a summary (entries, skip
    counts, decile edges) that is also stored in the group's attributes.
    """
    import dask

    from matdisc.io import read_table
    from matdisc.parallel import dask_compute
    from matdisc.voxel.radii import DEFAULT_TABLE, table_sha256
    from matdisc.voxel.store import CHUNK_ENTRIES, create_store

    table = read_table(source, "structures")
    cubic = (table["crystal_system"] == "cubic").to_numpy()
    skipped: collections.Counter[str] = collections.Counter()
    if (~cubic).sum():
        skipped["not_cubic_crystal_system"] = int((~cubic).sum())
    rows = table[cubic].reset_index(drop=True)
    log.info("%d of %d structures are cubic; standardising their cells", len(rows), len(table))

    # Grid batches cover whole chunks of the store, so parallel writers never share one.
    batch = -(-int(settings["batch_size"]) // CHUNK_ENTRIES) * CHUNK_ENTRIES
    cell_options = {
        "max_sites": int(settings["max_sites"]),
        "tolerance": float(settings["lattice_tolerance"]),
        "symprec": float(settings["symprec"]),
        "check_symmetry": bool(settings["check_symmetry"]),
        "setting": str(settings["setting"]),
    }
    texts = rows["structure_json"].tolist()
    tasks = [
        dask.delayed(_standardise_batch)(texts[i : i + batch], cell_options)
        for i in range(0, len(texts), batch)
    ]
    cells = [c for part in dask_compute(tasks, threads, address, desc="cells") for c in part]

    keep = np.array([isinstance(c, dict) for c in cells], dtype=bool)
    examples: dict[str, list[str]] = collections.defaultdict(list)
    for row_id, result in zip(rows["material_id"], cells, strict=True):
        if not isinstance(result, dict):
            reason, message = result
            skipped[reason] += 1
            if len(examples[reason]) < 3:
                examples[reason].append(f"{row_id}: {message}")
    for reason, count in sorted(skipped.items()):
        log.info("skipped %d structures: %s %s", count, reason, "; ".join(examples.get(reason, [])))
    kept = rows[keep].reset_index(drop=True)
    kept_cells = [c for c in cells if isinstance(c, dict)]
    if not kept_cells:
        raise UserError(
            f"none of the {len(rows)} cubic structures in {source} can be voxelized "
            f"(skipped: {dict(skipped)}); check voxel.max_sites or the data source."
        )

    e_form = kept["e_form_ev_per_atom"].to_numpy(dtype=np.float64)
    split = kept["split"].to_numpy().astype(str)
    edges = decile_edges(e_form[split == "train"])
    deciles = assign_deciles(e_form, edges)
    n = len(kept)
    log.info(
        "voxelizing %d structures (%s) at %d^3; decile edges %s eV/atom (train split)",
        n,
        dict(collections.Counter(split.tolist())),
        settings["grid_size"],
        np.round(edges, 3).tolist(),
    )
    entries = {
        "material_id": kept["material_id"].to_numpy().astype(str),
        "formula": kept["formula"].to_numpy().astype(str),
        "split": split,
        "structure_class": kept["structure_class"].to_numpy().astype(str),
        "structure_json": np.array([c["json"] for c in kept_cells], dtype=str),
        "e_form_ev_per_atom": e_form,
        "decile": deciles.astype(np.int64),
        "nsites": np.array([len(c["numbers"]) for c in kept_cells], dtype=np.int32),
        "spacegroup_number": kept["spacegroup_number"].to_numpy().astype(np.int16),
        "lattice": np.stack([c["lattice"] for c in kept_cells]).astype(np.float32),
    }
    grid_options = {
        "grid_size": int(settings["grid_size"]),
        "padding": float(settings["padding"]),
        "label_fraction": float(settings["label_fraction"]),
        "min_label_radius_voxels": float(settings["min_label_radius_voxels"]),
    }
    attrs = {
        **grid_options,
        "max_sites": int(settings["max_sites"]),
        "radius_table": DEFAULT_TABLE.name,
        "radius_table_sha256": table_sha256(DEFAULT_TABLE),
        "decile_edges": [float(x) for x in edges],
        "setting": str(settings["setting"]),
        "skipped": dict(skipped),
        "source": str(source),
        "units": {"density": "e/Å^3", "lattice": "Å", "decile_edges": "eV/atom"},
        "axes": "grid axes 0, 1, 2 = x, y, z = a, b, c; padding images drawn",
    }

    target = Path(target)
    remove_stale_partials(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        create_store(tmp, entries, grid_options["grid_size"], attrs)
        tasks = [
            dask.delayed(_grid_batch)(
                str(tmp),
                start,
                [c["lattice"] for c in kept_cells[start : start + batch]],
                [c["frac"] for c in kept_cells[start : start + batch]],
                [c["numbers"] for c in kept_cells[start : start + batch]],
                grid_options,
            )
            for start in range(0, n, batch)
        ]
        present = [
            zs for part in dask_compute(tasks, threads, address, desc="voxelize") for zs in part
        ]
        elements = sorted(
            {z for zs, s in zip(present, split, strict=True) if s == "train" for z in zs}
        )
        import zarr

        group = zarr.open_group(str(tmp), mode="r+")
        group.attrs["elements_train"] = elements
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("wrote %s: %d entries, %d elements in the train split", target, n, len(elements))
    return {"entries": n, "skipped": dict(skipped), "decile_edges": edges.tolist()}


def decile_edges(values: np.ndarray) -> np.ndarray:
    """The 9 inner decile edges of the finite ``values`` (NaN when there are none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        log.warning("no formation energy in the train split: every decile is -1")
        return np.full(N_DECILES - 1, np.nan)
    if finite.size < N_DECILES:
        log.warning(
            "only %d formation energies in the train split: deciles are coarse", finite.size
        )
    return np.quantile(finite, np.arange(1, N_DECILES) / N_DECILES)


def assign_deciles(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Decile 0..9 of each value (edges: 9 inner edges), -1 where a value is not finite."""
    out = np.full(len(values), -1, dtype=np.int64)
    ok = np.isfinite(values)
    if np.all(np.isfinite(edges)):
        out[ok] = np.searchsorted(edges, values[ok], side="right")
    return out


def _standardise_batch(
    texts: Sequence[str], options: dict[str, Any]
) -> list[dict[str, Any] | tuple[str, str]]:
    """Conventional cells of a batch of structure JSON strings, or (reason, message)."""
    from matdisc.voxel.cell import arrays_from_dict, conventional_cubic
    from matdisc.voxel.core import check_cell
    from matdisc.voxel.errors import VoxelizeError
    from matdisc.voxel.setting import canonical_setting

    out: list[dict[str, Any] | tuple[str, str]] = []
    for text in texts:
        try:
            try:
                data = json.loads(text)
            except (TypeError, ValueError) as exc:
                raise VoxelizeError("unreadable", f"structure JSON does not parse ({exc})") from exc
            matrix, frac, numbers = arrays_from_dict(data)
            cell = conventional_cubic(
                matrix,
                frac,
                numbers,
                tolerance=options["tolerance"],
                symprec=options["symprec"],
                check_symmetry=options["check_symmetry"],
            )
            check_cell(cell, max_sites=options["max_sites"])
            if options["setting"] == "canonical":
                cell = canonical_setting(cell)
        except VoxelizeError as exc:
            out.append((exc.reason, str(exc)))
            continue
        out.append(
            {
                "lattice": cell.lattice,
                "frac": cell.frac,
                "numbers": cell.numbers,
                "json": json.dumps(cell.as_dict()),
            }
        )
    return out


def remove_stale_partials(target: Path) -> list[Path]:
    """Remove the half-written stores a killed voxelization left beside ``target``
    (``.{name}.tmp-{pid}`` of a process that no longer runs); return what was removed."""
    removed = []
    for partial in target.parent.glob(f".{target.name}.tmp-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial)
            log.warning("removed %s, left by a voxelization that was killed", partial)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _grid_batch(
    path: str,
    start: int,
    lattices: Sequence[np.ndarray],
    fracs: Sequence[np.ndarray],
    numbers: Sequence[np.ndarray],
    options: dict[str, Any],
) -> list[list[int]]:
    """Compute and write the grids of entries ``start ..``; their atomic numbers present."""
    from matdisc.voxel.core import density_and_species
    from matdisc.voxel.radii import radius_lookup
    from matdisc.voxel.store import write_grids

    table = radius_lookup()
    d = options["grid_size"]
    density = np.empty((len(fracs), d, d, d), dtype=np.float32)
    species = np.empty((len(fracs), d, d, d), dtype=np.uint8)
    present: list[list[int]] = []
    for i, (lattice, frac, z) in enumerate(zip(lattices, fracs, numbers, strict=True)):
        density[i], species[i] = density_and_species(lattice, frac, z, table[z], **options)
        counts = np.bincount(species[i].ravel(), minlength=256)
        present.append([int(x) for x in np.flatnonzero(counts[1:]) + 1])
    write_grids(path, start, density, species)
    return present
