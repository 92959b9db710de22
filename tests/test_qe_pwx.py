"""The QE stage against the real pw.x (Debian quantum-espresso 6.7 + quantum-espresso-data).

Marked ``external``: skipped with a reason when pw.x or Debian's pseudopotentials are
missing, except under CI=true, where a missing program is a failure. The vc-relax runs
use low cut-offs and coarse k grids so that each takes seconds, with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.io import read as ase_read
from pymatgen.core import Structure
from qe_cases import CHEAP, DEBIAN_PSEUDO, references_table, write_qe_folder, zincblende

from matdisc.io import read_table
from matdisc.qe.run import CONVERGED, FAILED, NO_INPUT, NOT_CONVERGED, pw_command, run_pw
from matdisc.qe.stage import collect_qe_manifest, run_qe_relax
from matdisc.stage import StageCall

pytestmark = pytest.mark.external


@pytest.fixture(scope="module", autouse=True)
def pwx():
    """pw.x and the Debian pseudopotentials, or a skip (a failure under CI=true)."""
    missing = []
    if shutil.which("pw.x") is None:
        missing.append("pw.x (apt-get install quantum-espresso)")
    if not (DEBIAN_PSEUDO / "Si.pbe-rrkj.UPF").is_file():
        missing.append(f"{DEBIAN_PSEUDO} (apt-get install quantum-espresso-data)")
    if missing:
        message = "needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must provide it: {message}")
        pytest.skip(message)


def make_inputs(
    tmp_path: Path,
    structures: dict[str, Structure],
    qe: dict,
    base: str = "Si",
    references: pd.DataFrame | None = None,
) -> Path:
    """write_qe_folder → collect_qe_manifest; the manifest path."""
    folder = write_qe_folder(tmp_path, structures, qe, base, references)
    manifest = tmp_path / "qe" / "manifest.parquet"
    collect_qe_manifest(
        StageCall(settings={"qe": qe}, inputs={base: folder}, outputs={"manifest": manifest})
    )
    return manifest


def run_relax(tmp_path: Path, manifest: Path, qe: dict, threads: int = 1) -> pd.DataFrame:
    out = tmp_path / "qe" / "relaxed.parquet"
    run_qe_relax(
        StageCall(
            settings={"qe": {"run": True, **qe}},
            inputs={"manifest": manifest},
            outputs={"relaxed": out},
            threads=threads,
        )
    )
    return read_table(out, "qe_relaxed").set_index("candidate_id")


@pytest.mark.slow
def test_vc_relax_of_strained_silicon_converges(tmp_path):
    """Diamond Si in its cubic 8-atom cell, generated 6% too large, relaxes back.

    Norm-conserving PBE Si from Debian's folder; ecutwfc 12 Ry, shifted 2x2x2 k grid.
    """
    generated = zincblende(5.75, "Si", "Si")
    manifest_path = make_inputs(tmp_path, {"Si-1": generated}, CHEAP)
    manifest = read_table(manifest_path, "qe_manifest").set_index("candidate_id")
    row = manifest.loc["Si-1"]
    assert json.loads(row["pseudopotentials"]) == {"Si": "Si.pbe-rrkj.UPF"}
    assert (row["kpoints_a"], row["kpoints_b"], row["kpoints_c"]) == (2, 2, 2)
    assert (row["ecutwfc_ry"], row["ecutrho_ry"]) == (12.0, 48.0)  # norm-conserving: dual 4

    # the generated input round-trips through ASE
    atoms = ase_read(row["input_path"], format="espresso-in")
    np.testing.assert_allclose(atoms.cell[:], generated.lattice.matrix, atol=1e-9)
    assert atoms.get_chemical_symbols() == ["Si"] * 8
    np.testing.assert_allclose(atoms.get_scaled_positions(), generated.frac_coords, atol=1e-9)

    result = run_relax(tmp_path, manifest_path, CHEAP).loc["Si-1"]
    assert result["status"] == CONVERGED, result["error"]
    assert pd.isna(result["error"])
    # PBE+D2 puts Si near 5.42 Å; at 12 Ry the Pulay stress shrinks it a little.
    assert 5.30 < result["a_relaxed_angstrom"] < 5.50
    assert result["a_generated_angstrom"] == pytest.approx(5.75)
    assert 4.0 < result["cell_change_pct"] < 8.0
    assert result["volume_change_pct"] < -12.0
    assert result["angle_change_deg"] < 0.01
    # atoms sit on symmetry sites, so every bond scales with the cell
    assert result["bond_change_pct"] == pytest.approx(result["cell_change_pct"], abs=0.05)
    assert result["n_bonds"] == 16  # 4 bonds per atom, 8 atoms, each bond once
    assert result["n_bfgs_steps"] >= 1 and result["n_scf_cycles"] >= 2
    assert -200 < result["final_energy_ev_per_atom"] < -50
    assert result["wall_time_s"] > 0 and result["mpi_ranks"] == 1
    assert result["pred_e_form_ev_per_atom"] == -0.25

    # D2 and the Gaussian smearing act in the calculation, not only in the input
    output = Path(result["output_path"]).read_text()
    assert "Dispersion Correction" in output and "Parameters for Dispersion (Grimme-D2)" in output
    assert "Gaussian smearing" in output
    assert "JOB DONE" in output
    assert not (Path(result["output_path"]).parent / "scratch").exists()  # wavefunctions removed

    # a second run reads the finished run instead of repeating it
    written = Path(result["output_path"]).stat().st_mtime_ns
    again = run_relax(tmp_path, manifest_path, CHEAP).loc["Si-1"]
    assert Path(result["output_path"]).stat().st_mtime_ns == written
    assert again["status"] == CONVERGED
    assert again["final_energy_ev"] == result["final_energy_ev"]
    assert 0 < again["wall_time_s"] <= result["wall_time_s"] + 1  # pw.x's own timing


def test_failures_are_recorded_with_their_reason(tmp_path):
    """A candidate without input, and a pw.x that stops on an error, both get a row."""
    structures = {
        "Si-ok": zincblende(5.45, "Si", "Si"),
        "SiAl-nopseudo": zincblende(5.45, "Si", "Al"),  # Debian ships only an LDA Al
    }
    manifest_path = make_inputs(tmp_path, structures, CHEAP)
    # break the input of Si-ok the way a user could: a pseudopotential file that is not there
    pw_in = tmp_path / "qe" / "Si" / "Si-ok" / "pw.in"
    pw_in.write_text(pw_in.read_text().replace("Si.pbe-rrkj.UPF", "Si.missing.UPF"))
    results = run_relax(tmp_path, manifest_path, CHEAP, threads=2)
    assert results.at["SiAl-nopseudo", "status"] == NO_INPUT
    assert "element Al" in results.at["SiAl-nopseudo", "error"]
    assert results.at["Si-ok", "status"] == FAILED
    assert "Si.missing.UPF" in results.at["Si-ok", "error"]
    assert "Error in routine" in results.at["Si-ok", "error"]
    assert results.at["Si-ok", "mpi_ranks"] == (2 if shutil.which("mpirun") else 1)


@pytest.mark.slow
def test_step_limit_is_not_converged(tmp_path):
    """pw.x stops at nstep with a non-zero status; the row says not converged and why."""
    qe = {**CHEAP, "nstep": 1}
    manifest_path = make_inputs(tmp_path, {"Si-strained": zincblende(5.75, "Si", "Si")}, qe)
    result = run_relax(tmp_path, manifest_path, qe).loc["Si-strained"]
    assert result["status"] == NOT_CONVERGED
    assert "step limit" in result["error"]
    assert np.isfinite(result["final_energy_ev"])  # the last structure is still reported


def cheap_input(tmp_path: Path) -> str:
    make_inputs(tmp_path, {"Si-1": zincblende(5.45, "Si", "Si")}, CHEAP)
    return (tmp_path / "qe" / "Si" / "Si-1" / "pw.in").read_text()


def test_time_limit_stops_the_run_and_says_so(tmp_path):
    result = run_pw(
        cheap_input(tmp_path),
        tmp_path / "run",
        command=["pw.x"],
        pseudo_dir=DEBIAN_PSEUDO,
        timeout_s=0.5,
    )
    assert result.check.status == FAILED
    assert "time limit of 0.5 s" in result.check.reason
    assert result.wall_time_s < 15


def test_launcher_error_is_reported_from_stderr(tmp_path):
    if shutil.which("mpirun") is None:
        pytest.skip("needs mpirun (Debian: openmpi-bin, a dependency of quantum-espresso)")
    too_many = (os.cpu_count() or 1) + 1  # more ranks than Open MPI has slots
    command, ranks = pw_command(pw="pw.x", ranks=too_many, mpi="mpirun -np {ranks}")
    assert ranks == too_many and command[:3] == ["mpirun", "-np", str(too_many)]
    result = run_pw(
        cheap_input(tmp_path), tmp_path / "run", command=command, pseudo_dir=DEBIAN_PSEUDO,
        timeout_s=120,
    )  # fmt: skip
    assert result.check.status == FAILED
    assert "JOB DONE" in result.check.reason and "not enough slots" in result.check.reason


@pytest.mark.slow
def test_candidate_and_its_hull_phases_give_a_dft_energy_above_hull(tmp_path):
    """Zinc-blende SiC and the phases on the judge's hull of Si-C (diamond Si and C; a
    CHGNet-unstable SiC polymorph is left out): pw.x relaxes all three, and the candidate
    gets a DFT formation energy and energy above the hull of those phases."""
    qe = {**CHEAP, "ecutwfc_ry": 25.0, "hull_phases": True}
    references = references_table(
        {
            "mp-149": (zincblende(5.47, "Si", "Si"), -5.42),
            "mp-66": (zincblende(3.57, "C", "C"), -9.09),
            "mp-unstable": (zincblende(4.50, "Si", "C"), -6.0),  # above the CHGNet hull
        }
    )
    manifest_path = make_inputs(
        tmp_path, {"SiC-1": zincblende(4.38, "Si", "C")}, qe, references=references
    )
    manifest = read_table(manifest_path, "qe_manifest").set_index("candidate_id")
    assert manifest["kind"].to_dict() == {
        "SiC-1": "candidate", "hull:mp-149": "hull_phase", "hull:mp-66": "hull_phase",
    }  # fmt: skip
    result = run_relax(tmp_path, manifest_path, qe)
    assert (result["status"] == CONVERGED).all(), result[["status", "error"]]
    sic = result.loc["SiC-1"]
    e_si = result.at["hull:mp-149", "final_energy_ev_per_atom"]
    e_c = result.at["hull:mp-66", "final_energy_ev_per_atom"]
    expected = sic["final_energy_ev_per_atom"] - (e_si + e_c) / 2
    assert sic["dft_e_form_ev_per_atom"] == pytest.approx(expected, abs=1e-9)
    # on a hull of the two elements alone, the distance to the hull is the formation energy
    assert sic["dft_e_above_hull_ev_per_atom"] == pytest.approx(expected, abs=1e-9)
    assert pd.isna(sic["dft_hull_reason"])
