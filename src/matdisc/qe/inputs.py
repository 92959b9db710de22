"""pw.x inputs and Slurm scripts for every candidate of a base, and their manifest.

What is read (documented minimum; other columns are ignored):

- candidates table (``results/candidates/{base}.parquet``): ``candidate_id`` (str, unique),
  ``formula`` (str), ``structure_json`` (pymatgen ``Structure.as_dict()`` as JSON).
- screening table (``results/screening/{base}.parquet``): ``candidate_id`` and the eight
  columns of :data:`matdisc.io.schemas.PROPERTY_COLUMNS` (CGCNN predictions).

A candidate the filter flagged as not for DFT (column ``dft_eligible`` false: it holds an
element of ``filter.exclude_elements``, actinides by default), whose structure cannot be
read or that has an element the pseudopotential family lacks gets a manifest row that says
why and no input; the others are written. Writing needs none of the family's files: the
manifest records whether they are present in the local pseudopotential folder and, where
the family publishes md5 sums, whether they match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from tqdm import tqdm

from matdisc.errors import UserError
from matdisc.io import atomic_write_text, read_table
from matdisc.io.schemas import PROPERTY_COLUMNS, QE_MANIFEST
from matdisc.qe.jobscript import job_script
from matdisc.qe.pseudo import PseudoFamily, check_files
from matdisc.qe.pwinput import PwInput, build_input
from matdisc.qe.settings import QEInputSettings

log = logging.getLogger(__name__)

QE_MANIFEST_NAMES: list[str] = QE_MANIFEST.names
CANDIDATE_COLUMNS: tuple[str, ...] = ("candidate_id", "formula", "structure_json")
SCREENING_COLUMNS: tuple[str, ...] = ("candidate_id", *PROPERTY_COLUMNS)
INPUT_NAME = "pw.in"
JOB_NAME = "job.sbatch"
MANIFEST_NAME = "manifest.parquet"
#: Sub-folder of the hull phases' inputs.
HULL_DIR = "hull"

#: A species whose CHGNet moment reaches this (μB) starts magnetic in pw.x (besides the
#: open-shell elements).
MAGNETIC_MOMENT_BOHR = 0.5

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def folder_name(candidate_id: str) -> str:
    """A file-system-safe folder name for a candidate: the id itself when it is safe,
    else its safe characters plus a short hash of the id (so distinct ids stay distinct)."""
    if _SAFE.match(candidate_id):
        return candidate_id
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", candidate_id).strip("._")[:80] or "candidate"
    digest = hashlib.sha256(candidate_id.encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}"


def read_candidates(path: Path | str) -> pd.DataFrame:
    """The candidates table, checked for the columns this stage reads."""
    frame = read_table(path)
    missing = [c for c in CANDIDATE_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(
            f"the candidates table {path} lacks the columns {missing} that QE input "
            f"generation reads; re-run the filter stage that writes it."
        )
    return frame


def read_screening(path: Path | str) -> pd.DataFrame:
    """The screening table, checked for ``candidate_id`` and the eight property columns."""
    frame = read_table(path)
    missing = [c for c in SCREENING_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(
            f"the screening table {path} lacks the columns {missing}; re-run the screen stage."
        )
    return frame[list(SCREENING_COLUMNS)]


def _structure(raw: object) -> Structure:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("structure_json is empty")
    return Structure.from_dict(json.loads(raw))


def generate_inputs(
    candidates: pd.DataFrame,
    screening: pd.DataFrame,
    *,
    base: str,
    out_dir: Path,
    settings: QEInputSettings,
    family: PseudoFamily,
    local_dir: Path,
    relaxed: dict[str, tuple[str, list[float]]] | None = None,
    e_above_hull: dict[str, float] | None = None,
    references: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Write ``{folder}/pw.in`` and ``{folder}/job.sbatch`` under ``out_dir`` for every
    candidate; return the manifest rows (schema ``qe_manifest``, paths relative to
    ``out_dir``). ``local_dir``: the folder where this machine's pw.x would find the
    family's files (checked, never required). ``relaxed``: candidate id → the judge's
    CHGNet-relaxed structure (JSON) and its moments (μB per site); with ``qe.start_from:
    relaxed`` a candidate that has one starts from it. ``e_above_hull``: candidate id → the
    judge's energy above the hull; with it the rows follow the judge's order (energy above
    the hull, then |ΔEf| to the base). ``references``: the judge's reference
    phases; with ``qe.hull_phases`` the ones on the hull of each written candidate's system
    get inputs too (rows of kind ``hull_phase``)."""
    relaxed = relaxed if settings.start_from == "relaxed" else {}
    e_above_hull = e_above_hull or {}
    if e_above_hull:  # the judge's order: energy above the hull, then |ΔEf| to the base
        gap = candidates.get("delta_e_form_ev_per_atom", pd.Series(0.0, index=candidates.index))
        hull = candidates["candidate_id"].map(e_above_hull).astype(float).fillna(np.inf)
        order = np.lexsort((gap.abs().fillna(np.inf).to_numpy(), hull.to_numpy()))
        candidates = candidates.iloc[order]
    predicted = screening.drop_duplicates("candidate_id").set_index("candidate_id")
    unscreened = sorted(set(candidates["candidate_id"]) - set(predicted.index))
    if unscreened:
        log.warning(
            "%d candidates of %s have no screening row (predicted properties left empty): %s",
            len(unscreened), base, ", ".join(map(str, unscreened[:10])),
        )  # fmt: skip
    rows = []
    folders: set[str] = set()
    failures: Counter[str] = Counter()
    for record in tqdm(
        candidates.to_dict("records"), desc=f"QE inputs {base}", unit="candidate", leave=False
    ):
        cid = str(record["candidate_id"])
        row: dict[str, object] = {
            "base": base,
            "candidate_id": cid,
            "kind": "candidate",
            "generator": record.get("generator"),
            "formula": str(record["formula"]),
            "nsites": None,
            "input_path": None,
            "job_script_path": None,
            "kpoints_a": None,
            "kpoints_b": None,
            "kpoints_c": None,
            "ecutwfc_ry": np.nan,
            "ecutrho_ry": np.nan,
            "nspin": None,
            "spacegroup_number": None,
            "start_structure": None,
            "e_above_hull_ev_per_atom": e_above_hull.get(cid, np.nan),
            "pseudo_family": family.name,
            "pseudopotentials": None,
            "pseudo_dir": str(local_dir),
            "pseudo_files_present": None,
            "pseudo_md5_ok": None,
            "structure_json": str(record["structure_json"] or ""),
            "error": None,
        }
        for name in PROPERTY_COLUMNS:
            row[f"pred_{name}"] = (
                float(predicted.at[cid, name]) if cid in predicted.index else np.nan
            )
        rows.append(row)
        folder = folder_name(cid)
        if folder in folders:
            row["error"] = f"duplicate candidate_id {cid!r}; only its first row gets an input"
            failures["duplicate candidate_id"] += 1
            log.error("candidate %s of %s: %s", cid, base, row["error"])
            continue
        folders.add(folder)
        try:
            structure = _structure(record["structure_json"])
        except Exception as exc:  # malformed JSON or a dict pymatgen rejects
            row["error"] = (
                f"pymatgen cannot read its structure_json ({type(exc).__name__}: {exc}); "
                f"the filter stage must write Structure.as_dict() JSON"
            )
            failures["unreadable structure"] += 1
            log.error("candidate %s of %s: %s", cid, base, row["error"])
            continue
        row["nsites"] = len(structure)
        if not bool(record.get("dft_eligible", True)):
            held = str(record.get("excluded_elements") or "an excluded element")
            row["error"] = (
                f"excluded from DFT: holds {held} (filter.exclude_elements; remove the element "
                f"from that list to get an input)"
            )
            failures["excluded element"] += 1
            log.info("candidate %s of %s (%s): %s", cid, base, structure.formula, row["error"])
            continue
        moments = None
        if cid in (relaxed or {}):
            raw, magmoms = relaxed[cid]
            structure = _structure(raw)
            moments = frozenset(
                site.specie.symbol
                for site, m in zip(structure, magmoms, strict=True)
                if abs(m) >= MAGNETIC_MOMENT_BOHR
            )
        try:
            pw = build_input(structure, settings, family, moments=moments)
        except UserError as exc:  # StructureError, PseudoError, impossible cut-offs
            row["error"] = str(exc)
            failures[type(exc).__name__] += 1
            log.error("candidate %s of %s (%s): %s", cid, base, structure.formula, exc)
            continue
        row.update(
            _write(
                pw,
                out_dir,
                folder,
                job_name=f"{base}-{cid}",
                settings=settings,
                family=family,
                local_dir=local_dir,
            ),
            start_structure="relaxed" if moments is not None else "generated",
        )
    if settings.hull_phases and references is not None:
        rows += _hull_rows(
            [r for r in rows if r["input_path"] is not None], references, base=base,
            out_dir=out_dir, settings=settings, family=family, local_dir=local_dir,
        )  # fmt: skip
    written = [r for r in rows if r["input_path"] is not None]
    log.info(
        "%s: wrote %d pw.x inputs for %d candidates (%s); their files are present in %s for %d",
        base, len(written), len(rows), family.label, local_dir,
        sum(bool(r["pseudo_files_present"]) for r in written),
    )  # fmt: skip
    if any(r["pseudo_md5_ok"] is False for r in written):
        log.warning("%s: some pseudopotential files in %s have the wrong md5", base, local_dir)
    if failures:
        log.warning(
            "%s: %d candidates have no input (%s); the manifest's error column says why",
            base, sum(failures.values()), ", ".join(f"{k}: {v}" for k, v in failures.items()),
        )  # fmt: skip
    return manifest_frame(rows)


def _write(
    pw: PwInput,
    out_dir: Path,
    folder: str,
    *,
    job_name: str,
    settings: QEInputSettings,
    family: PseudoFamily,
    local_dir: Path,
) -> dict[str, object]:
    """Write ``{folder}/pw.in`` and ``{folder}/job.sbatch``; the manifest columns they fill."""
    atomic_write_text(out_dir / folder / INPUT_NAME, pw.text)
    script = job_script(
        job_name=job_name,
        slurm=settings.slurm,
        pseudo_dir=settings.pseudo_dir,
        files=pw.files.values(),
        family_label=family.label,
    )
    atomic_write_text(out_dir / folder / JOB_NAME, script)
    (out_dir / folder / JOB_NAME).chmod(0o755)
    present = check_files(pw.files.values(), local_dir)
    return {
        "structure_json": json.dumps(pw.structure.as_dict()),
        "nsites": len(pw.structure),
        "spacegroup_number": pw.spacegroup_number,
        "pseudo_files_present": present.present,
        "pseudo_md5_ok": present.md5_ok,
        "input_path": f"{folder}/{INPUT_NAME}",
        "job_script_path": f"{folder}/{JOB_NAME}",
        "kpoints_a": pw.kpoints[0],
        "kpoints_b": pw.kpoints[1],
        "kpoints_c": pw.kpoints[2],
        "ecutwfc_ry": pw.ecutwfc_ry,
        "ecutrho_ry": pw.ecutrho_ry,
        "nspin": pw.nspin,
        "pseudopotentials": json.dumps(pw.pseudopotentials),
    }


def _hull_rows(
    written: list[dict[str, object]],
    references: pd.DataFrame,
    *,
    base: str,
    out_dir: Path,
    settings: QEInputSettings,
    family: PseudoFamily,
    local_dir: Path,
) -> list[dict[str, object]]:
    """Inputs (under ``hull/``) and manifest rows of the hull phases of the written
    candidates' chemical systems, once per phase (:mod:`matdisc.qe.hull`)."""
    from matdisc.qe.hull import hull_phases

    phases = hull_phases(references, [str(r["formula"]) for r in written])
    rows = []
    for rid, formula, raw in zip(
        phases["reference_id"], phases["formula"], phases["structure_json"], strict=True
    ):
        row: dict[str, object] = dict.fromkeys(QE_MANIFEST_NAMES)
        row.update(base=base, candidate_id=f"hull:{rid}", kind="hull_phase", formula=formula,
                   pseudo_family=family.name, pseudo_dir=str(local_dir), structure_json=raw)  # fmt: skip
        try:
            pw = build_input(_structure(raw), settings, family)
        except UserError as exc:
            row["error"] = str(exc)
            log.error("hull phase %s (%s) of %s: %s", rid, formula, base, exc)
        else:
            folder = f"{HULL_DIR}/{folder_name(str(rid))}"
            row.update(_write(pw, out_dir, folder, job_name=f"hull-{rid}", settings=settings,
                              family=family, local_dir=local_dir), start_structure="relaxed")  # fmt: skip
        rows.append(row)
    log.info("%s: inputs for %d hull phases of %d candidates", base, len(rows), len(written))
    return rows


def manifest_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """Rows as a frame with nullable integer columns (schema ``qe_manifest``)."""
    frame = pd.DataFrame(rows, columns=QE_MANIFEST_NAMES)
    for name in ("pseudo_files_present", "pseudo_md5_ok"):
        frame[name] = pd.array(frame[name].tolist(), dtype="boolean")
    for name in ("nsites", "kpoints_a", "kpoints_b", "kpoints_c", "nspin", "spacegroup_number"):
        frame[name] = pd.array(frame[name].tolist(), dtype="Int64")
    return frame
