"""Run pw.x on every input of a manifest and compare relaxed with generated structures.

Each run happens in its own folder ``{runs_dir}/{base}/{candidate folder}`` (pw.in,
pw.out, pw.err), so a finished run is read instead of repeated when the rule runs again.
Every manifest row gives one result row: converged, not converged, failed or without
input, with the reason — nothing is dropped.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from tqdm import tqdm

from matdisc.io.schemas import QE_RELAXED
from matdisc.qe.compare import compare_structures
from matdisc.qe.run import CONVERGED, FAILED, NO_INPUT, run_pw

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RelaxOptions:
    """How pw.x is run. command: the full command without ``-in`` (e.g. mpirun … pw.x);
    pseudo_dir: given to pw.x as ESPRESSO_PSEUDO; timeout_s: per run, None = none;
    bond_tolerance: first-shell tolerance of |Δ bonds|."""

    command: list[str]
    ranks: int
    pseudo_dir: Path
    timeout_s: float | None = None
    keep_scratch: bool = False
    bond_tolerance: float = 0.15


def _empty_row(record: dict) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(QE_RELAXED.names)
    row.update(
        base=record["base"],
        candidate_id=record["candidate_id"],
        kind=record["kind"],
        formula=record["formula"],
        nsites=record["nsites"],
        pred_e_form_ev_per_atom=record.get("pred_e_form_ev_per_atom", np.nan),
    )
    return row


def relax_one(record: dict, *, input_path: Path, workdir: Path, options: RelaxOptions) -> dict:
    """Run one manifest row's input and return its result row (schema ``qe_relaxed``)."""
    row = _empty_row(record)
    row["mpi_ranks"] = options.ranks
    result = run_pw(
        input_path.read_text(encoding="utf-8"),
        workdir,
        command=options.command,
        pseudo_dir=options.pseudo_dir,
        timeout_s=options.timeout_s,
        keep_scratch=options.keep_scratch,
    )
    check = result.check
    row.update(
        status=check.status,
        error=check.reason,
        output_path=str(result.output_path),
        wall_time_s=result.wall_time_s,
        n_scf_cycles=check.n_scf_cycles,
        n_bfgs_steps=check.n_bfgs_steps,
    )
    if result.atoms is None or result.energy_ev is None:
        return row
    nat = len(result.atoms)
    row["final_energy_ev"] = result.energy_ev
    row["final_energy_ev_per_atom"] = result.energy_ev / nat
    try:
        generated = Structure.from_dict(json.loads(record["structure_json"]))
        relaxed = AseAtomsAdaptor.get_structure(result.atoms)
        metrics = compare_structures(generated, relaxed, tolerance=options.bond_tolerance)
    except Exception as exc:  # a mismatch between input and output is a failure, not a crash
        row["status"] = FAILED
        row["error"] = f"cannot compare the relaxed with the generated structure: {exc}"
        return row
    row.update(
        bond_change_pct=metrics.bond_change_pct,
        max_bond_change_pct=metrics.max_bond_change_pct,
        n_bonds=metrics.n_bonds,
        cell_change_pct=metrics.cell_change_pct,
        angle_change_deg=metrics.angle_change_deg,
        volume_change_pct=metrics.volume_change_pct,
        relaxed_structure_json=json.dumps(relaxed.as_dict()),
    )
    for axis, gen, rel in zip("abc", generated.lattice.abc, relaxed.lattice.abc, strict=True):
        row[f"{axis}_generated_angstrom"] = float(gen)
        row[f"{axis}_relaxed_angstrom"] = float(rel)
    return row


def relax_manifest(
    manifest: pd.DataFrame, *, runs_dir: Path, options: RelaxOptions
) -> pd.DataFrame:
    """One result row per manifest row (schema ``qe_relaxed``); runs are sequential, each
    on ``options.ranks`` MPI ranks."""
    from matdisc.qe.inputs import folder_name

    rows = []
    for record in tqdm(manifest.to_dict("records"), desc="pw.x vc-relax", unit="run"):
        if record["input_path"] is None or pd.isna(record["input_path"]):
            row = _empty_row(record)
            row.update(status=NO_INPUT, error=f"no input was written: {record['error']}")
            rows.append(row)
            continue
        # a hull phase is one run whichever bases' manifests list it (same input: reused)
        owner = "hull" if record["kind"] == "hull_phase" else str(record["base"])
        workdir = runs_dir / owner / folder_name(str(record["candidate_id"]))
        row = relax_one(
            record, input_path=Path(record["input_path"]), workdir=workdir, options=options
        )
        level = logging.INFO if row["status"] == CONVERGED else logging.WARNING
        log.log(
            level,
            "%s/%s: %s%s (%.1f s)",
            record["base"], record["candidate_id"], row["status"],
            f": {row['error']}" if row["error"] else "", row["wall_time_s"] or 0.0,
        )  # fmt: skip
        rows.append(row)
    counts = Counter(r["status"] for r in rows)
    log.info("pw.x results: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
    return relaxed_frame(rows)


def relaxed_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """Rows as a frame with nullable integer columns (schema ``qe_relaxed``)."""
    frame = pd.DataFrame(rows, columns=QE_RELAXED.names)
    for name in ("dft_e_form_ev_per_atom", "dft_e_above_hull_ev_per_atom"):
        frame[name] = frame[name].astype(float)
    for name in ("nsites", "mpi_ranks", "n_scf_cycles", "n_bfgs_steps", "n_bonds"):
        frame[name] = pd.array(
            [None if v is None or pd.isna(v) else int(v) for v in frame[name].tolist()],
            dtype="Int64",
        )
    return frame
