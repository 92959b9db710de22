"""Stage entry points of the Quantum ESPRESSO step (rules in workflow/rules/qe.smk).

- ``write-qe-inputs`` (rule write_qe_inputs): one base → folder ``results/qe/{base}`` holding
  ``{candidate}/pw.in``, ``{candidate}/job.sbatch`` and ``manifest.parquet``.
- ``collect-qe-manifest`` (rule collect_qe_manifest): the per-base manifests →
  ``results/qe/manifest.parquet``, paths relative to the workflow root.
- ``run-qe-relax`` (rule run_qe_relax, only with ``qe.run: true``): pw.x on every input →
  ``results/qe/relaxed.parquet``; pw.x works in ``results/qe/runs/{base}/{candidate}``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from matdisc.errors import UserError
from matdisc.io import read_table, write_table
from matdisc.qe.hull import dft_stability
from matdisc.qe.inputs import (
    MANIFEST_NAME,
    generate_inputs,
    manifest_frame,
    read_candidates,
    read_screening,
)
from matdisc.qe.pseudo import (
    PseudoFamily,
    PseudoFile,
    local_pseudo_dir,
    make_family,
    require_files,
)
from matdisc.qe.relax import RelaxOptions, relax_manifest
from matdisc.qe.run import pw_command
from matdisc.qe.settings import QEInputSettings
from matdisc.stage import StageCall

log = logging.getLogger(__name__)

#: Defaults of the run keys of the qe section when a caller passes a partial section.
RUN_DEFAULTS: dict[str, Any] = {
    "pw_command": "pw.x",
    "mpi_command": "mpirun -np {ranks}",
    "timeout_min": None,
    "keep_scratch": False,
    "bond_tolerance": 0.15,
}


def _settings_metadata(settings: QEInputSettings) -> dict[str, Any]:
    data = dataclasses.asdict(settings)
    data["pseudo_dir"] = None if settings.pseudo_dir is None else str(settings.pseudo_dir)
    if settings.magnetic_elements is not None:
        data["magnetic_elements"] = sorted(settings.magnetic_elements)
    return data


def _family(settings: QEInputSettings) -> PseudoFamily:
    return make_family(
        settings.pseudo_family,
        pseudo_dir=settings.pseudo_dir,
        functional=settings.functional,
        preference=settings.pseudo_preference,
    )


def _judged(path: Path | None) -> tuple[dict[str, tuple[str, list[float]]], dict[str, float]]:
    """From the judge's table (none without it): candidate id → relaxed structure and CHGNet
    moments, and candidate id → energy above the hull (eV/atom)."""
    if path is None:
        return {}, {}
    table = read_table(path, "stability")
    table = table[table["candidate_id"].notna() & table["relaxed_structure_json"].notna()]
    relaxed = {
        cid: (raw, json.loads(moments))
        for cid, raw, moments in zip(
            table["candidate_id"],
            table["relaxed_structure_json"],
            table["magmoms_json"],
            strict=True,
        )
    }
    e_hull = dict(zip(table["candidate_id"], table["e_above_hull_ev_per_atom"], strict=True))
    return relaxed, e_hull


def write_qe_inputs(call: StageCall) -> None:
    """pw.x inputs, batch scripts and the manifest of one base compound."""
    settings = QEInputSettings.from_config(call.section("qe"))
    base = call.wildcard("base")
    candidates = read_candidates(call.input("candidates"))
    screening = read_screening(call.input("screening"))
    # A wrong family (a folder that does not exist, a map to a file of another element)
    # stops here, before anything is written.
    family = _family(settings)
    relaxed, e_above_hull = _judged(call.inputs.get("stability"))
    target = call.output("inputs")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build the folder beside the target and move it into place when complete, so an
    # interrupted run never leaves a half-written input folder behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        manifest = generate_inputs(
            candidates,
            screening,
            base=base,
            out_dir=staging,
            settings=settings,
            family=family,
            local_dir=local_pseudo_dir(settings.pseudo_dir),
            relaxed=relaxed,
            e_above_hull=e_above_hull,
            references=(
                read_table(call.inputs["references"], "references")
                if "references" in call.inputs
                else None
            ),
        )
        write_table(
            manifest,
            staging / MANIFEST_NAME,
            "qe_manifest",
            metadata={"base": base, "qe_input_settings": _settings_metadata(settings)},
        )
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    log.info("QE inputs of %s in %s", base, target)


def collect_qe_manifest(call: StageCall) -> None:
    """Concatenate the per-base manifests; paths become relative to the workflow root."""
    frames = []
    for base, folder in sorted(call.inputs.items()):
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise UserError(
                f"{path} does not exist; run the write_qe_inputs rule for base {base} first."
            )
        frame = read_table(path, "qe_manifest")
        for column in ("input_path", "job_script_path"):
            frame[column] = [
                None if value is None or pd.isna(value) else str(Path(folder) / value)
                for value in frame[column]
            ]
        frames.append(frame)
    manifest = pd.concat(frames, ignore_index=True) if frames else manifest_frame([])
    write_table(
        manifest, call.output("manifest"), "qe_manifest", metadata={"bases": sorted(call.inputs)}
    )
    log.info(
        "QE manifest: %d candidates, %d inputs",
        len(manifest),
        int(manifest["input_path"].notna().sum()),
    )


def run_qe_relax(call: StageCall) -> None:
    """Run pw.x on every input of the manifest; write the Table 3 comparisons."""
    section = {**RUN_DEFAULTS, **{k: v for k, v in call.section("qe").items() if v is not None}}
    manifest = read_table(call.input("manifest"), "qe_manifest")
    output = call.output("relaxed")
    runs_dir = call.outputs.get("runs", output.parent / "runs")
    try:
        command, ranks = pw_command(
            pw=section["pw_command"], ranks=call.threads, mpi=section["mpi_command"]
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(
            f"qe.mpi_command {section['mpi_command']!r} is not a valid template ({exc}); "
            f"write it like 'mpirun -np {{ranks}}'."
        ) from exc
    pw_program = shlex.split(section["pw_command"])[0]
    if shutil.which(pw_program) is None:
        raise UserError(
            f"{pw_program} is not on PATH; install Quantum ESPRESSO (Debian: apt-get install "
            f"quantum-espresso) or set qe.pw_command."
        )
    settings = QEInputSettings.from_config(call.section("qe"))
    pseudo_dir = local_pseudo_dir(settings.pseudo_dir)
    family = _family(settings)
    _require_pseudopotentials(manifest, family, pseudo_dir)
    timeout = section["timeout_min"]
    options = RelaxOptions(
        command=command,
        ranks=ranks,
        timeout_s=None if timeout is None else float(timeout) * 60.0,
        keep_scratch=bool(section["keep_scratch"]),
        bond_tolerance=float(section["bond_tolerance"]),
        pseudo_dir=pseudo_dir,
    )
    log.info(
        "pw.x command: %s (%d inputs)", " ".join(command), int(manifest["input_path"].notna().sum())
    )
    relaxed = dft_stability(relax_manifest(manifest, runs_dir=Path(runs_dir), options=options))
    for row in relaxed[relaxed["kind"] == "candidate"].itertuples():
        log.info(
            "%s/%s %s: DFT Ef %.3f eV/atom, %.3f above the hull of its phases%s",
            row.base, row.candidate_id, row.formula, row.dft_e_form_ev_per_atom,
            row.dft_e_above_hull_ev_per_atom,
            f" ({row.dft_hull_reason})" if isinstance(row.dft_hull_reason, str) else "",
        )  # fmt: skip
    write_table(
        relaxed,
        output,
        "qe_relaxed",
        metadata={"command": command, "pseudo_dir": str(pseudo_dir), "family": family.label},
    )


def _require_pseudopotentials(manifest: pd.DataFrame, family: PseudoFamily, folder: Path) -> None:
    """Stop before any pw.x run when a file an input names is missing here or has the
    wrong md5 (one sentence naming the files and the family)."""
    files = {}
    for raw in manifest["pseudopotentials"].dropna():
        for element, name in json.loads(raw).items():
            chosen = family.file(element)
            files[name] = chosen if chosen.filename == name else PseudoFile(element, name)
    require_files(files.values(), folder, family)
