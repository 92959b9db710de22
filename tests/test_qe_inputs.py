"""QE input generation: settings, UPF headers, pseudopotential choice, pw.in text, stages.

These tests need no pw.x: they use header-only UPF files in tests/data/qe/pseudo (a
synthetic folder with decoys: other functionals, a fully relativistic file, a file whose
name says Fe but whose header says Co, a file that is not UPF). The tests that run pw.x
are in test_qe_pwx.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.io import read as ase_read
from pymatgen.core import DummySpecies, Lattice, Structure

from matdisc.config import load_config
from matdisc.errors import UserError
from matdisc.io import read_table, write_table
from matdisc.io.parquet import read_metadata
from matdisc.io.schemas import PROPERTY_COLUMNS
from matdisc.qe.inputs import folder_name
from matdisc.qe.jobscript import job_script
from matdisc.qe.pseudo import PseudoError, PseudoLibrary, classify_functional, read_upf_header
from matdisc.qe.pwinput import StructureError, build_input, kpoint_grid
from matdisc.qe.run import CONVERGED, FAILED, NOT_CONVERGED, check_output
from matdisc.qe.settings import DEFAULTS_PATH, QEInputSettings, SlurmSettings
from matdisc.qe.stage import collect_manifest, write_inputs
from matdisc.stage import StageCall

DATA = Path(__file__).parent / "data" / "qe"
PSEUDO = DATA / "pseudo"
REPO = Path(__file__).resolve().parents[1]


def settings(**overrides) -> QEInputSettings:
    return QEInputSettings.from_config({"pseudo_dir": str(PSEUDO), **overrides})


def library(s: QEInputSettings | None = None) -> PseudoLibrary:
    s = s or settings()
    return PseudoLibrary(
        pseudo_dir=s.pseudo_dir,
        functional=s.functional,
        preference=s.pseudo_preference,
        explicit=s.pseudopotentials,
    )


def rocksalt_nio() -> Structure:
    """Conventional rock-salt cell, sites listed explicitly (the golden file pins their order)."""
    ni = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    o = [[0.5, 0.5, 0.5], [0, 0, 0.5], [0, 0.5, 0], [0.5, 0, 0]]
    return Structure(Lattice.cubic(4.17), ["Ni"] * 4 + ["O"] * 4, ni + o)


FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
TETRA = [[x + 0.25, y + 0.25, z + 0.25] for x, y, z in FCC]


def diamond_si(a: float = 5.43) -> Structure:
    return Structure(Lattice.cubic(a), ["Si"] * 8, FCC + TETRA)


def zincblende_sic() -> Structure:
    return Structure(Lattice.cubic(4.36), ["Si"] * 4 + ["C"] * 4, FCC + TETRA)


# --- settings ---------------------------------------------------------------------------


def test_defaults_follow_the_seed_methods():
    s = QEInputSettings.from_config({})
    assert (s.functional, s.vdw_corr, s.smearing) == ("PBE", "grimme-d2", "gaussian")
    assert s.etot_conv_thr_ry == 1e-4 and s.forc_conv_thr_ry_per_bohr == 1e-3
    assert s.cell_dofree == "all"


def test_config_overrides_win_and_null_keeps_default():
    s = QEInputSettings.from_config(
        {"degauss_ry": 0.02, "nstep": None, "slurm": {"ntasks": 4, "time": None}, "run": True}
    )
    assert s.degauss_ry == 0.02
    assert s.nstep == QEInputSettings.from_config({}).nstep
    assert s.slurm.ntasks == 4 and s.slurm.time == "24:00:00"


def test_schema_input_keys_are_exactly_the_settings_fields():
    """Every input key of the config schema is a generator setting and vice versa."""
    config = load_config(REPO / "config" / "config.yaml")
    defaults = QEInputSettings.from_config({})
    run_keys = {"run", "pw_command", "mpi_command", "timeout_min", "keep_scratch", "bond_tolerance"}
    input_keys = set(config["qe"]) - run_keys
    assert input_keys == set(defaults.__dataclass_fields__)
    assert set(config["qe"]["slurm"]) == set(SlurmSettings.__dataclass_fields__)
    # and the repository config reproduces the shipped defaults
    assert QEInputSettings.from_config(config["qe"]) == defaults


def test_schema_choices_match_the_generator():
    """The schema's enums offer exactly what the generator accepts."""
    import yaml

    from matdisc.qe import settings as qs

    props = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["properties"]["qe"][
        "properties"
    ]
    for key, allowed in [
        ("cell_dofree", qs.CELL_DOFREE),
        ("smearing", qs.SMEARINGS),
        ("vdw_corr", qs.VDW_CORRECTIONS),
        ("functional", qs.FUNCTIONALS),
        ("spin", qs.SPIN_MODES),
    ]:
        assert [v for v in props[key]["enum"] if v is not None] == list(allowed), key
    assert props["pseudo_preference"]["items"]["enum"] == list(qs.PSEUDO_KINDS)


def test_config_rejects_unknown_qe_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("qe:\n  degaus_ry: 0.01\n")
    with pytest.raises(UserError, match="degaus_ry"):
        load_config(path)


def test_bad_setting_is_a_user_error():
    with pytest.raises(UserError, match="cell_dofree"):
        settings(cell_dofree="everything")
    with pytest.raises(UserError, match="unknown QE input settings"):
        QEInputSettings.from_config({"not_a_key": 1}, defaults_path=DEFAULTS_PATH)


# --- UPF headers and the choice of pseudopotentials --------------------------------------


def test_functional_names():
    assert classify_functional(" SLA  PW   PBX  PBC") == "PBE"
    assert classify_functional("SLA PW PBE PBE") == "PBE"
    assert classify_functional(" SLA  PW   PSX  PSC") == "PBESOL"
    assert classify_functional(" SLA  PZ   NOGX NOGC") == "LDA"


def test_upf_v1_header_takes_cutoffs_from_info_when_header_has_none():
    header = read_upf_header(PSEUDO / "O.pbe-nc-test.UPF")
    assert (header.element, header.kind, header.functional) == ("O", "NC", "PBE")
    assert (header.wfc_cutoff_ry, header.rho_cutoff_ry) == (60.0, 240.0)


def test_upf_v2_header():
    header = read_upf_header(PSEUDO / "Ni.pbe-spn-test.UPF")
    assert (header.element, header.kind, header.functional) == ("Ni", "PAW", "PBE")
    assert (header.wfc_cutoff_ry, header.rho_cutoff_ry) == (45.0, 360.0)
    assert read_upf_header(PSEUDO / "Si.pbe-nc-test.UPF").wfc_cutoff_ry is None
    assert read_upf_header(PSEUDO / "Si.rel-pbe-nc-test.UPF").fully_relativistic
    assert read_upf_header(PSEUDO / "README.txt") is None


def test_search_prefers_kind_then_scalar_relativistic():
    lib = library()
    assert lib.choose("O").name == "O.pbe-nc-test.UPF"  # NC before US; PBESOL never
    assert lib.choose("Si").name == "Si.pbe-nc-test.UPF"  # scalar before fully relativistic
    lib_us = library(settings(pseudo_preference=["US", "NC"]))
    assert lib_us.choose("O").name == "O.pbe-us-test.UPF"
    lib_sol = library(settings(functional="PBESOL"))
    assert lib_sol.choose("O").name == "O.pbesol-test.UPF"


def test_element_comes_from_the_header_not_the_file_name():
    lib = library()
    assert lib.choose("Co").name == "Fe.misnamed-test.UPF"
    with pytest.raises(PseudoError) as info:
        lib.choose("Fe")
    message = str(info.value)
    assert "element Fe" in message and str(PSEUDO.resolve()) in message


def test_missing_element_error_lists_unusable_files():
    with pytest.raises(PseudoError, match=r"element Al.*Al\.pz-test\.UPF \(LDA NC\)"):
        library().choose("Al")


def test_missing_pseudo_folder_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"pseudopotential folder .*does-not-exist does not exist"):
        library(settings(pseudo_dir=str(tmp_path / "does-not-exist")))


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"Fe": "Fe.misnamed-test.UPF"}, "is a Co pseudopotential"),
        ({"O": "O.pbesol-test.UPF"}, "PBESOL pseudopotential, but qe.functional is PBE"),
        ({"O": "O.missing.UPF"}, "not a file"),
        ({"O": "README.txt"}, "not a UPF file"),
    ],
)
def test_explicit_map_is_checked(mapping, match):
    with pytest.raises(UserError, match=match):
        library(settings(pseudopotentials=mapping))


def test_explicit_map_wins_over_search():
    lib = library(settings(pseudopotentials={"O": "O.pbe-us-test.UPF"}))
    assert lib.choose("O").name == "O.pbe-us-test.UPF"


def test_cutoffs_from_headers_and_overrides():
    lib = library()
    # NC only, no suggestion: fallback 45, dual 4
    si = lib.choose_all(
        ["Si"], ecutwfc_ry=None, ecutrho_ry=None, fallback_wfc_ry=45, dual_nc=4, dual_us_paw=8
    )
    assert (si.ecutwfc_ry, si.ecutrho_ry) == (45.0, 180.0)
    # NC O suggests 60/240, PAW Ni 45/360 -> wfc 60, rho max(8*60, 360)
    nio = lib.choose_all(
        ["Ni", "O"], ecutwfc_ry=None, ecutrho_ry=None, fallback_wfc_ry=45, dual_nc=4, dual_us_paw=8
    )
    assert (nio.ecutwfc_ry, nio.ecutrho_ry) == (60.0, 480.0)
    fixed = lib.choose_all(
        ["Si"], ecutwfc_ry=12, ecutrho_ry=None, fallback_wfc_ry=45, dual_nc=4, dual_us_paw=8
    )
    assert (fixed.ecutwfc_ry, fixed.ecutrho_ry) == (12.0, 48.0)
    with pytest.raises(UserError, match="below 4 x ecutwfc"):
        lib.choose_all(
            ["Si"], ecutwfc_ry=30, ecutrho_ry=60, fallback_wfc_ry=45, dual_nc=4, dual_us_paw=8
        )


# --- the pw.in text ----------------------------------------------------------------------


def test_kpoint_grid_from_spacing():
    # cubic a = 5.43 Å: |b| = 2π/a = 1.157 1/Å
    assert kpoint_grid(diamond_si(), 0.2) == (6, 6, 6)
    assert kpoint_grid(diamond_si(), 0.5) == (3, 3, 3)
    assert kpoint_grid(diamond_si(), 10.0) == (1, 1, 1)
    tetragonal = Structure(Lattice.tetragonal(4.0, 8.0), ["Si"], [[0, 0, 0]])
    assert kpoint_grid(tetragonal, 0.3) == (6, 6, 3)


def test_golden_input():
    """The full text of one generated input (rock-salt NiO: magnetic, NC + PAW)."""
    s = settings()
    text = build_input(rocksalt_nio(), s, library(s)).text
    golden = (
        (DATA / "NiO_rocksalt.pw.in").read_text().replace("@PSEUDO_DIR@", str(PSEUDO.resolve()))
    )
    assert text == golden


@pytest.mark.parametrize(
    "structure",
    [
        rocksalt_nio(),
        diamond_si(),
        zincblende_sic(),
        # a non-orthogonal cell with sites given outside [0, 1)
        Structure(
            Lattice.rhombohedral(3.9, 60.0), ["Si", "C"], [[1.2, -0.1, 0.05], [0.25, 0.25, 0.25]]
        ),
        # a site a hair below 1 (as in MP's mp-19071) stays where it is
        Structure(
            Lattice.cubic(4.2), ["Ni", "O"], [[0.99999961, 0.5, 0.5], [0.5, 0.5, 0.9999999999]]
        ),
    ],
    ids=["NiO", "Si", "SiC", "rhombohedral", "near-one"],
)
def test_input_round_trips_through_ase(structure, tmp_path):
    s = settings()
    pw = build_input(structure, s, library(s))
    path = tmp_path / "pw.in"
    path.write_text(pw.text)
    atoms = ase_read(path, format="espresso-in")
    np.testing.assert_allclose(atoms.cell[:], structure.lattice.matrix, atol=1e-9)
    assert atoms.get_chemical_symbols() == [site.specie.symbol for site in structure]
    wrapped = np.mod(structure.frac_coords, 1.0)
    delta = atoms.get_scaled_positions(wrap=False) - wrapped
    np.testing.assert_allclose(delta - np.rint(delta), 0.0, atol=1e-9)
    np.testing.assert_allclose(
        atoms.get_positions(), structure.lattice.get_cartesian_coords(wrapped), atol=1e-8
    )


def test_spin_modes():
    nio, si = rocksalt_nio(), diamond_si()
    lib = library()
    assert build_input(nio, settings(), lib).nspin == 2
    assert "starting_magnetization(1) = 0.5" in build_input(nio, settings(), lib).text
    assert "starting_magnetization(2)" not in build_input(nio, settings(), lib).text
    assert build_input(nio, settings(spin="off"), lib).nspin == 1
    assert build_input(si, settings(), lib).nspin == 1
    on = build_input(si, settings(spin="on", starting_magnetization=0.2), lib)
    assert on.nspin == 2 and "starting_magnetization(1) = 0.2" in on.text


def test_structure_pw_cannot_take_is_rejected():
    lib = library()
    disordered = Structure(Lattice.cubic(4.0), [{"Si": 0.5, "C": 0.5}], [[0, 0, 0]])
    with pytest.raises(StructureError, match="partially occupied"):
        build_input(disordered, settings(), lib)
    dummy = Structure(Lattice.cubic(4.0), [DummySpecies("X"), "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(StructureError, match="not a chemical element"):
        build_input(dummy, settings(), lib)


def test_job_script_is_valid_bash(tmp_path):
    text = job_script(
        job_name="NaCl-7 x",
        slurm=SlurmSettings(ntasks=8, time="02:00:00", mem_per_cpu_mb=1000, partition="cpu"),
    )
    assert "#SBATCH --ntasks=8" in text and "#SBATCH --partition=cpu" in text
    assert "#SBATCH --job-name=qe-NaCl-7_x" in text and "--account" not in text
    path = tmp_path / "job.sbatch"
    path.write_text(text)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_folder_names_are_safe_and_distinct():
    assert folder_name("SrTiO3-0001") == "SrTiO3-0001"
    odd = [folder_name("a/b"), folder_name("a b"), folder_name("../x"), folder_name("a?b")]
    assert len(set(odd)) == 4
    assert all("/" not in name and not name.startswith(".") for name in odd)


# --- reading pw.x output -------------------------------------------------------------------


def test_check_output_reads_the_text_not_the_exit_status():
    done = "     bfgs converged in   4 scf cycles and   3 bfgs steps\n   JOB DONE.\n"
    assert check_output(done, 0).status == CONVERGED
    assert (check_output(done, 0).n_scf_cycles, check_output(done, 0).n_bfgs_steps) == (4, 3)
    error = (
        " %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%\n     Error in routine readpp (1):\n"
        "     file /x/Nope.UPF not found\n %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%\n"
    )
    failed = check_output(error, 0)  # exit status 0, yet an error
    assert failed.status == FAILED and "readpp" in failed.reason and "Nope.UPF" in failed.reason
    assert check_output("     number of scf cycles    =   2\n", 0).status == FAILED
    scf = check_output(
        "     convergence NOT achieved after   2 iterations: stopping\n   JOB DONE.\n", 2
    )
    assert scf.status == NOT_CONVERGED and "NOT achieved" in scf.reason
    steps = check_output(
        "     number of bfgs steps    =   0\n     The maximum number of steps has been reached.\n"
        "   JOB DONE.\n",
        3,
    )
    assert steps.status == NOT_CONVERGED and "nstep" in steps.reason


# --- the stages -----------------------------------------------------------------------------


def write_candidate_tables(tmp_path: Path, structures: dict[str, object], base: str = "NiO"):
    rows = []
    for cid, structure in structures.items():
        raw = structure if isinstance(structure, str) else json.dumps(structure.as_dict())
        formula = "?" if isinstance(structure, str) else structure.composition.reduced_formula
        rows.append({"candidate_id": cid, "base": base, "formula": formula, "structure_json": raw})
    candidates = pd.DataFrame(rows, columns=["candidate_id", "base", "formula", "structure_json"])
    screening = pd.DataFrame(
        {
            "candidate_id": list(structures),
            **{c: np.arange(len(rows), dtype=float) + 0.5 for c in PROPERTY_COLUMNS},
        }
    )
    cand_path, screen_path = tmp_path / "candidates.parquet", tmp_path / "screening.parquet"
    candidates.to_parquet(cand_path)
    screening.to_parquet(screen_path)
    return cand_path, screen_path


def inputs_call(cand: Path, screen: Path, out: Path) -> StageCall:
    """The write_inputs stage call of base NiO with the test pseudopotentials."""
    return StageCall(
        settings={"qe": {"pseudo_dir": str(PSEUDO)}},
        inputs={"candidates": cand, "screening": screen},
        outputs={"inputs": out},
        wildcards={"base": "NiO"},
    )


def test_write_inputs_keeps_going_past_bad_candidates(tmp_path, caplog):
    cand, screen = write_candidate_tables(
        tmp_path,
        {
            "NiO-1": rocksalt_nio(),
            "broken": '{"lattice": "nonsense"}',
            "NiAl-2": Structure(Lattice.cubic(2.9), ["Ni", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
            "SiC-3": zincblende_sic(),
        },
    )
    out = tmp_path / "qe" / "NiO"
    call = inputs_call(cand, screen, out)
    write_inputs(call)
    manifest = read_table(out / "manifest.parquet", "qe_manifest").set_index("candidate_id")
    assert list(manifest.index) == ["NiO-1", "broken", "NiAl-2", "SiC-3"]
    assert (out / "NiO-1" / "pw.in").is_file() and (out / "SiC-3" / "job.sbatch").is_file()
    assert not (out / "broken").exists() and not (out / "NiAl-2").exists()
    assert "pymatgen cannot read" in manifest.at["broken", "error"]
    assert (
        "element Al" in manifest.at["NiAl-2", "error"]
        and str(PSEUDO.resolve()) in manifest.at["NiAl-2", "error"]
    )
    ok = manifest.loc["NiO-1"]
    assert pd.isna(ok["error"]) and ok["input_path"] == "NiO-1/pw.in"
    assert (ok["kpoints_a"], ok["ecutwfc_ry"], ok["ecutrho_ry"], ok["nspin"]) == (8, 60.0, 480.0, 2)
    assert json.loads(ok["pseudopotentials"]) == {
        "Ni": "Ni.pbe-spn-test.UPF",
        "O": "O.pbe-nc-test.UPF",
    }
    assert ok["pred_e_form_ev_per_atom"] == 0.5 and manifest.at["SiC-3", "pred_band_gap_ev"] == 3.5
    assert read_metadata(out / "manifest.parquet")["qe_input_settings"]["vdw_corr"] == "grimme-d2"
    assert "2 candidates have no input" in caplog.text

    # the collected manifest points at the files from the workflow root
    collected = tmp_path / "qe" / "manifest.parquet"
    collect_manifest(
        StageCall(settings={"qe": {}}, inputs={"NiO": out}, outputs={"manifest": collected})
    )
    merged = read_table(collected, "qe_manifest")
    assert len(merged) == 4
    assert Path(merged.set_index("candidate_id").at["NiO-1", "input_path"]).is_file()


def test_candidate_flagged_not_for_dft_gets_a_manifest_row_and_no_input(tmp_path, caplog):
    cand, screen = write_candidate_tables(
        tmp_path, {"NiO-1": rocksalt_nio(), "NiO-2": rocksalt_nio()}
    )
    table = pd.read_parquet(cand)
    table["dft_eligible"] = [True, False]
    table["excluded_elements"] = ["", "U"]  # as the filter flags a uranium compound
    table.to_parquet(cand)
    out = tmp_path / "qe" / "NiO"
    call = inputs_call(cand, screen, out)
    with caplog.at_level("INFO"):
        write_inputs(call)
    manifest = read_table(out / "manifest.parquet", "qe_manifest").set_index("candidate_id")
    assert (out / "NiO-1" / "pw.in").is_file() and not (out / "NiO-2").exists()
    assert pd.isna(manifest.at["NiO-1", "error"])
    assert manifest.at["NiO-2", "error"].startswith("excluded from DFT: holds U")
    assert pd.isna(manifest.at["NiO-2", "input_path"]) and manifest.at["NiO-2", "nsites"] == 8
    assert "1 candidates have no input (excluded element: 1)" in caplog.text


def test_missing_pseudo_folder_stops_before_writing(tmp_path):
    cand, screen = write_candidate_tables(tmp_path, {"NiO-1": rocksalt_nio()})
    out = tmp_path / "qe" / "NiO"
    call = StageCall(
        settings={"qe": {"pseudo_dir": str(tmp_path / "nowhere")}},
        inputs={"candidates": cand, "screening": screen},
        outputs={"inputs": out},
        wildcards={"base": "NiO"},
    )
    with pytest.raises(UserError, match=r"nowhere does not exist; set qe\.pseudo_dir"):
        write_inputs(call)
    assert not out.exists()


def test_candidates_table_without_structures_is_a_user_error(tmp_path):
    cand, screen = write_candidate_tables(tmp_path, {"a": diamond_si()})
    pd.DataFrame({"candidate_id": ["a"], "formula": ["Si"]}).to_parquet(cand)
    call = StageCall(
        settings={"qe": {"pseudo_dir": str(PSEUDO)}},
        inputs={"candidates": cand, "screening": screen},
        outputs={"inputs": tmp_path / "out"},
        wildcards={"base": "Si"},
    )
    with pytest.raises(UserError, match=r"lacks the columns \['structure_json'\]"):
        write_inputs(call)


def test_manifest_schema_rejects_a_missing_column(tmp_path):
    frame = pd.DataFrame({"base": ["x"]})
    with pytest.raises(ValueError, match="missing columns"):
        write_table(frame, tmp_path / "m.parquet", "qe_manifest")


def test_empty_candidates_table_gives_an_empty_manifest(tmp_path):
    cand, screen = write_candidate_tables(tmp_path, {})
    out = tmp_path / "qe" / "NiO"
    write_inputs(
        StageCall(
            settings={"qe": {"pseudo_dir": str(PSEUDO)}},
            inputs={"candidates": cand, "screening": screen},
            outputs={"inputs": out},
            wildcards={"base": "NiO"},
        )
    )
    assert len(read_table(out / "manifest.parquet", "qe_manifest")) == 0
    assert [p.name for p in out.iterdir()] == ["manifest.parquet"]
