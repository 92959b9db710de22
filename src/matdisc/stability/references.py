"""Reference phases of the convex hull: the run's own data, relaxed by CHGNet once.

For a chemical system (a set of elements) the reference phases are the materials of
``structures.parquet`` whose elements all belong to it. Where the data holds no phase of
an element, ASE's reference crystal of the element is used (``ase.data.reference_states``
through ``ase.build.bulk``), or for the diatomic gases (H2, N2, O2, F2) the molecule in a
10 Å box; where neither exists (α-Mn, Cl2 and the other elements whose ASE reference needs
an atomic basis) the element has no reference and the hulls that need it are NaN, with
the reason.

Every reference is relaxed once per model and relaxation settings and kept in a cache
(parquet, keyed by ``reference_id`` + ``model`` + ``settings``), so a second base in the
same chemical system, or a second run, reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Lattice, Structure

from matdisc.io import read_table, write_table
from matdisc.progress import progress
from matdisc.stability.potential import Potential

log = logging.getLogger(__name__)

#: Seconds between saves of the reference cache while phases are being relaxed.
CACHE_SAVE_SECONDS = 60.0

#: Elements whose standard state is a diatomic gas: a molecule in a box (bond length, Å).
DIATOMIC_BOX_ANGSTROM = 10.0


@dataclass(frozen=True, kw_only=True)
class RelaxSettings:
    """One relaxation: force threshold (eV/Å), step limit, rattle (Å) and its seed."""

    fmax: float
    steps: int
    rattle_angstrom: float
    seed: int

    @classmethod
    def from_section(cls, section: dict[str, Any], seed: int) -> RelaxSettings:
        return cls(
            fmax=float(section["fmax_ev_per_angstrom"]),
            steps=int(section["max_steps"]),
            rattle_angstrom=float(section["rattle_angstrom"]),
            seed=int(seed),
        )

    def key(self, model: str) -> str:
        """A short digest of the model and these settings (the cache key)."""
        from matdisc.stability.potential import CELL_FILTERS

        text = json.dumps({"model": model, "filters": CELL_FILTERS, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def chemical_system(formula: str) -> tuple[str, ...]:
    """Sorted element symbols of ``formula``."""
    return tuple(sorted(el.symbol for el in Composition(formula).elements))


def elemental_reference(symbol: str) -> tuple[Structure | None, str | None]:
    """ASE's reference crystal (or diatomic molecule in a box) of an element, or why none."""
    from ase.build import bulk
    from ase.data import chemical_symbols, reference_states
    from pymatgen.io.ase import AseAtomsAdaptor

    state = reference_states[chemical_symbols.index(symbol)]
    if state is None:
        return None, f"ASE has no reference state for {symbol}"
    if state.get("symmetry") == "diatom":
        box = Lattice.cubic(DIATOMIC_BOX_ANGSTROM)
        half = state["d"] / DIATOMIC_BOX_ANGSTROM / 2
        return Structure(
            box, [symbol, symbol], [[0.5 - half, 0.5, 0.5], [0.5 + half, 0.5, 0.5]]
        ), None
    try:
        return AseAtomsAdaptor.get_structure(bulk(symbol)), None
    except Exception as exc:  # ASE needs an atomic basis it does not ship (α-Mn, Cl2 …)
        return None, f"ASE cannot build the reference crystal of {symbol} ({exc})"


def reference_phases(structures: pd.DataFrame, systems: Iterable[tuple[str, ...]]) -> pd.DataFrame:
    """The reference phases of all ``systems``: data rows (``reference_id`` = material id)
    whose elements lie in one of the systems, plus ASE elemental references
    (``reference_id`` = ``ase:<symbol>``) for elements the data lacks. Columns:
    ``reference_id``, ``formula``, ``source`` (data / ase / none), ``structure_json``,
    ``reason`` (why an element has no reference)."""
    systems = [frozenset(s) for s in systems]
    wanted = frozenset().union(*systems) if systems else frozenset()
    element_sets = [
        frozenset(chemical_system(f)) for f in structures["formula"].astype(str).tolist()
    ]
    keep = [any(e <= s for s in systems) for e in element_sets]
    data = structures.loc[keep, ["material_id", "formula", "structure_json"]].rename(
        columns={"material_id": "reference_id"}
    )
    data = data.assign(source="data", reason=None)
    covered = {next(iter(e)) for e, k in zip(element_sets, keep, strict=True) if k and len(e) == 1}
    extra = []
    for symbol in sorted(wanted - covered):
        structure, reason = elemental_reference(symbol)
        extra.append(
            {
                "reference_id": f"ase:{symbol}",
                "formula": symbol,
                "structure_json": None if structure is None else json.dumps(structure.as_dict()),
                "source": "ase" if structure is not None else "none",
                "reason": reason,
            }
        )
    return pd.concat([data, pd.DataFrame(extra, columns=data.columns)], ignore_index=True)


def screen_polymorphs(
    phases: pd.DataFrame, *, potential: Potential, window_ev_per_atom: float | None
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The phases worth relaxing, and why each other one is not. A polymorph whose CHGNet
    single point lies more than ``window_ev_per_atom`` above the lowest single point of
    its composition is left out: the hull takes each composition's lowest energy, so such
    a phase matters only if relaxing it lowered it by more than the window (on the default
    run's 358 data phases the lowest relaxed polymorph of every composition was within
    0.15 eV/atom of its composition's lowest single point). Single points are made only
    for compositions with two or more phases; ``None`` keeps every phase."""
    usable = phases[phases["source"] != "none"]
    if window_ev_per_atom is None or usable.empty:
        return phases, {}
    reduced = usable["formula"].map(lambda f: Composition(f).reduced_formula)
    shared = reduced[reduced.duplicated(keep=False)]
    if shared.empty:
        return phases, {}
    structures = [
        Structure.from_dict(json.loads(usable.at[i, "structure_json"])) for i in shared.index
    ]
    energies = pd.Series(potential.energies(structures), index=shared.index)
    lowest = energies.groupby(shared).transform("min")
    lowest_id = energies.groupby(shared).transform("idxmin")
    above = energies - lowest
    skipped = {
        str(phases.at[i, "reference_id"]): (
            f"{shared[i]} single point {above[i]:.3f} eV/atom above "
            f"{phases.at[lowest_id[i], 'reference_id']} (window {window_ev_per_atom:g})"
        )
        for i in above.index[above > window_ev_per_atom]
    }
    keep = ~phases["reference_id"].astype(str).isin(skipped)
    log.info(
        "reference polymorphs: %d of %d phases not relaxed, their CHGNet single point more "
        "than %g eV/atom above their composition's lowest%s",
        len(skipped), len(usable), window_ev_per_atom,
        "".join(f"\n  {rid}: {why}" for rid, why in skipped.items()),
    )  # fmt: skip
    return phases[keep].reset_index(drop=True), skipped


def relax_references(
    phases: pd.DataFrame,
    *,
    potential: Potential,
    settings: RelaxSettings,
    cache_path: Path,
    workers: int = 1,
) -> pd.DataFrame:
    """CHGNet energies (eV/atom) of ``phases``: from the cache where it holds them for this
    model and these settings, else relaxed now and added to the cache. Returns one row per
    phase (schema ``references``). ``workers`` > 1 (CPU only) relaxes in that many processes
    of one thread each: CHGNet on a small cell is mostly single-threaded Python, so two
    processes relax nearly twice as many phases per second as one process of two threads."""
    key = settings.key(potential.info.checkpoint)
    cache = read_table(cache_path, "references") if cache_path.is_file() else None
    done = cache[cache["settings"] == key].set_index("reference_id") if cache is not None else None
    rows: list[dict[str, Any]] = []
    fresh = 0
    filters: Counter[str] = Counter()
    saved_at = time.monotonic()

    def save() -> None:  # the cache so far: a killed job keeps what it relaxed
        merged = (
            _frame(rows) if cache is None else pd.concat([cache, _frame(rows)], ignore_index=True)
        )
        merged = merged.drop_duplicates(["reference_id", "settings"], keep="last")
        write_table(merged, cache_path, "references", metadata={"model": asdict(potential.info)})

    todo = phases[phases["source"] != "none"].to_dict("records")
    cached = {
        r["reference_id"] for r in todo if done is not None and r["reference_id"] in done.index
    }
    jobs = [r["structure_json"] for r in todo if r["reference_id"] not in cached]
    with _relaxer(potential, settings, workers if potential.device == "cpu" else 1) as relax:
        relaxed = relax(jobs)
        for record in progress(todo, desc="reference phases", unit="phase"):
            rid = record["reference_id"]
            if rid in cached:
                assert done is not None
                rows.append(done.loc[rid].to_dict() | {"reference_id": rid})
                continue
            result = next(relaxed)
            filters[result.pop("cell_filter")] += 1
            fresh += 1
            rows.append(
                {
                    "reference_id": rid,
                    "formula": record["formula"],
                    "source": record["source"],
                    "model": potential.info.model,
                    "settings": key,
                    **result,
                }
            )
            if time.monotonic() - saved_at > CACHE_SAVE_SECONDS:
                save()
                saved_at = time.monotonic()
    frame = _frame(rows)
    if fresh:
        save()
    log.info(
        "reference phases: %d (%d relaxed now, %d from the cache); %d elements without one; "
        "cell filters of the relaxed: %s",
        len(frame), fresh, len(frame) - fresh, int((phases["source"] == "none").sum()),
        dict(filters) or "none",
    )  # fmt: skip
    return frame


def _relax_row(potential: Potential, settings: RelaxSettings, structure_json: str) -> dict:
    """The cache columns of one relaxed phase."""
    structure = Structure.from_dict(json.loads(structure_json))
    relaxed = potential.relax(
        structure, fmax=settings.fmax, steps=settings.steps,
        rattle_angstrom=settings.rattle_angstrom, seed=settings.seed,
    )  # fmt: skip
    return {
        "cell_filter": relaxed.cell_filter,  # counted by the caller, not cached
        "nsites": len(structure),
        "energy_ev_per_atom": relaxed.energy_ev_per_atom,
        "converged": relaxed.converged,
        "steps": relaxed.steps,
        "seconds": relaxed.seconds,
        "structure_json": json.dumps(relaxed.structure.as_dict()),
    }


_WORKER: tuple[Potential, RelaxSettings] | None = None


def _start_worker(settings: RelaxSettings) -> None:
    global _WORKER
    from matdisc.logs import quiet_library_warnings

    quiet_library_warnings()
    _WORKER = (Potential(device="cpu", threads=1), settings)


def _worker_relax(structure_json: str) -> dict:
    assert _WORKER is not None, "the worker was not started"
    return _relax_row(*_WORKER, structure_json)


@contextlib.contextmanager
def _relaxer(
    potential: Potential, settings: RelaxSettings, workers: int
) -> Iterator[Callable[[list[str]], Iterator[dict]]]:
    """A function from structures (JSON) to their relaxed rows, lazily and in order: in
    this process, or spread over ``workers`` spawned processes."""
    if workers <= 1:
        yield lambda jobs: (_relax_row(potential, settings, j) for j in jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(settings,)
    ) as pool:
        yield lambda jobs: pool.map(_worker_relax, jobs) if jobs else iter(())


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    from matdisc.io.schemas import REFERENCES

    frame = pd.DataFrame(rows, columns=REFERENCES.names)
    frame["converged"] = frame["converged"].astype(bool)
    frame["steps"] = frame["steps"].astype(np.int32)
    frame["nsites"] = frame["nsites"].astype(np.int32)
    return frame
