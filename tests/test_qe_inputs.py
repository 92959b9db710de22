"""QE input generation: settings, UPF headers, pseudopotential families, pw.in text, stages.

These tests need no pw.x: the SSSP families are tables shipped with the package, and the
folder family uses header-only UPF files in tests/data/qe/pseudo (a synthetic folder with
decoys: other functionals, a fully relativistic file, a file whose name says Fe but whose
header says Co, a file that is not UPF). The tests that run pw.x are in test_qe_pwx.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from ase.io import read as ase_read
from pymatgen.core import Composition, DummySpecies, Lattice, Structure

from matdisc.config import load_config
from matdisc.errors import UserError
from matdisc.io import read_table, write_table
from matdisc.io.parquet import read_metadata
from matdisc.io.schemas import PROPERTY_COLUMNS
from matdisc.qe.inputs import folder_name
from matdisc.qe.jobscript import job_script
from matdisc.qe.pseudo import (
    FAMILY_NAMES,
    FolderFamily,
    MapFamily,
    PseudoError,
    PseudoFile,
    TableFamily,
    check_files,
)
from matdisc.qe.pwinput import StructureError, build_input, kpoint_grid
from matdisc.qe.run import CONVERGED, FAILED, NOT_CONVERGED, check_output
from matdisc.qe.settings import QEInputSettings, SlurmSettings
from matdisc.qe.stage import collect_qe_manifest, run_qe_relax, write_qe_inputs
from matdisc.qe.structure import open_shell_elements
from matdisc.qe.upf import classify_functional, read_upf_header
from matdisc.stage import StageCall

DATA = Path(__file__).parent / "data" / "qe"
PSEUDO = DATA / "pseudo"
REPO = Path(__file__).resolve().parents[1]


#: The folder family on the test UPF files, cells written as given.
FOLDER = {"pseudo_family": "folder", "pseudo_dir": str(PSEUDO), "cell": "as_generated"}


def settings(**overrides) -> QEInputSettings:
    return QEInputSettings.from_config({**FOLDER, **overrides})


def library(s: QEInputSettings | None = None) -> FolderFamily:
    s = s or settings()
    return FolderFamily(
        pseudo_dir=s.pseudo_dir, functional=s.functional, preference=s.pseudo_preference
    )


def sssp() -> TableFamily:
    return TableFamily("sssp-efficiency")


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
    # a published family by default, and no folder that exists only on one machine
    assert (s.pseudo_family, s.pseudo_dir, s.cell) == ("sssp-efficiency", None, "primitive")


def test_config_overrides_win_and_missing_keys_take_the_schema_default():
    s = QEInputSettings.from_config({"degauss_ry": 0.02, "slurm": {"ntasks": 4}, "run": True})
    assert s.degauss_ry == 0.02
    assert s.nstep == QEInputSettings.from_config({}).nstep == 100
    assert s.slurm.ntasks == 4 and s.slurm.time == "24:00:00"
    with pytest.raises(UserError, match="nstep"):  # null no longer means "the default"
        QEInputSettings.from_config({"nstep": None})


def test_schema_input_keys_are_exactly_the_settings_fields():
    """Every input key of the config schema is a generator setting and vice versa."""
    config = load_config(REPO / "config" / "config.yaml")
    defaults = QEInputSettings.from_config({})
    run_keys = {"run", "pw_command", "mpi_command", "timeout_min", "keep_scratch", "bond_tolerance"}
    input_keys = set(config["qe"]) - run_keys
    assert input_keys == set(defaults.__dataclass_fields__)
    assert set(config["qe"]["slurm"]) == set(SlurmSettings.__dataclass_fields__)
    # the stage gets the validated section: the same settings as the schema's defaults
    # plus the repository config's choices
    assert QEInputSettings.from_config(config["qe"]) == QEInputSettings.from_config(
        yaml.safe_load((REPO / "config" / "config.yaml").read_text()).get("qe", {})
    )


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
        ("cell", qs.CELL_CHOICES),
    ]:
        assert [v for v in props[key]["enum"] if v is not None] == list(allowed), key
    names = next(b for b in props["pseudo_family"]["anyOf"] if b.get("type") == "string")["enum"]
    assert names == list(FAMILY_NAMES)
    assert props["pseudo_preference"]["items"]["enum"] == list(qs.PSEUDO_KINDS)


def test_config_rejects_unknown_qe_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("qe:\n  degaus_ry: 0.01\n")
    with pytest.raises(UserError, match="degaus_ry"):
        load_config(path)


def test_bad_setting_is_a_user_error():
    with pytest.raises(UserError, match="cell_dofree"):
        settings(cell_dofree="everything")
    with pytest.raises(UserError, match="not_a_key"):
        QEInputSettings.from_config({"not_a_key": 1})


def test_misspelt_family_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match=r"qe.pseudo_family .*'sssp-efficency' is not one of"):
        settings(pseudo_family="sssp-efficency")
    # a settings object made by hand is checked too
    with pytest.raises(UserError, match=r"qe.pseudo_family 'sssp-efficency' is not known"):
        QEInputSettings.from_mapping(
            {**settings().__dict__, "slurm": settings().slurm.__dict__,
             "pseudo_family": "sssp-efficency", "pseudo_dir": None}
        )  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text("qe:\n  pseudo_family: sssp-efficency\n")
    with pytest.raises(UserError, match=r"qe.pseudo_family .*'sssp-efficency' is not one of"):
        load_config(path)


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
    assert lib.file("O").filename == "O.pbe-nc-test.UPF"  # NC before US; PBESOL never
    assert lib.file("Si").filename == "Si.pbe-nc-test.UPF"  # scalar before fully relativistic
    lib_us = library(settings(pseudo_preference=["US", "NC"]))
    assert lib_us.file("O").filename == "O.pbe-us-test.UPF"
    lib_sol = library(settings(functional="PBESOL"))
    assert lib_sol.file("O").filename == "O.pbesol-test.UPF"


def test_element_comes_from_the_header_not_the_file_name():
    lib = library()
    assert lib.file("Co").filename == "Fe.misnamed-test.UPF"
    with pytest.raises(PseudoError) as info:
        lib.file("Fe")
    message = str(info.value)
    assert "element Fe" in message and str(PSEUDO.resolve()) in message


def test_missing_element_error_lists_unusable_files():
    with pytest.raises(PseudoError, match=r"element Al.*Al\.pz-test\.UPF \(LDA NC\)"):
        library().file("Al")


def test_missing_pseudo_folder_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"pseudopotential folder .*does-not-exist does not exist"):
        library(settings(pseudo_dir=str(tmp_path / "does-not-exist")))
    with pytest.raises(UserError, match=r"folder searches qe.pseudo_dir, which is not set"):
        FolderFamily(pseudo_dir=None, functional="PBE", preference=["NC"])


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"Fe": "Fe.misnamed-test.UPF"}, "is a Co pseudopotential"),
        ({"O": "O.pbesol-test.UPF"}, "PBESOL pseudopotential, but qe.functional is PBE"),
        ({"O": "README.txt"}, "not a UPF file"),
    ],
)
def test_explicit_map_checks_the_files_it_finds(mapping, match):
    with pytest.raises(UserError, match=match):
        MapFamily(mapping, pseudo_dir=PSEUDO, functional="PBE")


def test_explicit_map_reads_present_files_and_takes_absent_ones_by_name():
    family = MapFamily(
        {"O": "O.pbe-us-test.UPF", "Ni": "Ni.elsewhere.UPF"}, pseudo_dir=PSEUDO, functional="PBE"
    )
    assert family.file("O").filename == "O.pbe-us-test.UPF" and family.file("O").kind == "US"
    assert family.file("Ni") == PseudoFile("Ni", "Ni.elsewhere.UPF")
    with pytest.raises(PseudoError, match=r"element Si is not in the qe\.pseudo_family map"):
        family.file("Si")


def test_sssp_tables_ship_with_the_package():
    efficiency, precision = sssp(), TableFamily("sssp-precision")
    ca = efficiency.file("Ca")
    assert ca == PseudoFile(
        "Ca", "Ca_pbe_v1.uspp.F.UPF", 30.0, 240.0, "403a4c14b9e4d4dfdc3024c9a3812218"
    )
    assert precision.file("Ag").ecutwfc_ry == 55.0 and efficiency.file("Ag").ecutwfc_ry == 50.0
    assert efficiency.file("Lr").filename  # 103 elements, H to Lr
    with pytest.raises(PseudoError, match=r"element Rf is not in the SSSP 1\.3\.0 PBE efficiency"):
        efficiency.file("Rf")
    with pytest.raises(UserError, match=r"PBE family but qe\.functional is PBESOL"):
        from matdisc.qe.stage import _family

        _family(QEInputSettings.from_config({"functional": "PBESOL"}))


def test_sssp_cutoffs_are_the_largest_over_the_elements():
    family = sssp()
    # Ca 30/240, Ti 35/280, O 50/400 (SSSP 1.3.0 efficiency)
    choice = family.choose_all(
        ["Ca", "Ti", "O"], ecutwfc_ry=None, ecutrho_ry=None, fallback_wfc_ry=45, dual_nc=4,
        dual_us_paw=8,
    )  # fmt: skip
    assert (choice.ecutwfc_ry, choice.ecutrho_ry) == (50.0, 400.0)
    # Ag (SG15, 50/200) with Si (30/240): each cut-off is its own maximum
    agsi = family.choose_all(
        ["Ag", "Si"], ecutwfc_ry=None, ecutrho_ry=None, fallback_wfc_ry=45, dual_nc=4,
        dual_us_paw=8,
    )  # fmt: skip
    assert (agsi.ecutwfc_ry, agsi.ecutrho_ry) == (50.0, 240.0)


def test_file_check_reports_presence_and_md5(tmp_path):
    content = b'<UPF version="2.0.1">\n'
    good = PseudoFile("X", "X.upf", md5=hashlib.md5(content).hexdigest())
    bad = PseudoFile("Y", "Y.upf", md5="0" * 32)
    (tmp_path / "X.upf").write_bytes(content)
    (tmp_path / "Y.upf").write_bytes(content)
    assert check_files([good], tmp_path).md5_ok is True
    both = check_files([good, bad], tmp_path)
    assert both.present and both.md5_ok is False and both.mismatched == ("Y.upf",)
    absent = check_files([good, PseudoFile("Z", "Z.upf", md5="1" * 32)], tmp_path)
    assert not absent.present and absent.md5_ok is None and absent.missing == ("Z.upf",)
    assert check_files([PseudoFile("X", "X.upf")], tmp_path).md5_ok is None  # no md5 known


def test_cutoffs_from_headers_and_overrides():
    lib = library()
    # NC only, no suggestion: fallback 45, dual 4
    si = lib.choose_all(
        ["Si"], ecutwfc_ry=None, ecutrho_ry=None, fallback_wfc_ry=45, dual_nc=4, dual_us_paw=8
    )
    assert (si.ecutwfc_ry, si.ecutrho_ry) == (45.0, 180.0)
    # NC O suggests 60/240, PAW Ni 45/360 -> wfc 60, rho max(240, 360, 4 * 60)
    nio = lib.choose_all(
        ["Ni", "O"], ecutwfc_ry=None, ecutrho_ry=None, fallback_wfc_ry=45, dual_nc=4, dual_us_paw=8
    )
    assert (nio.ecutwfc_ry, nio.ecutrho_ry) == (60.0, 360.0)
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
    """The full text of one generated input (rock-salt NiO from a folder: magnetic, NC + PAW,
    the conventional cell as given)."""
    s = settings()
    text = build_input(rocksalt_nio(), s, library(s)).text
    assert text == (DATA / "NiO_rocksalt.pw.in").read_text()
    assert "pseudo_dir" not in text  # pw.x reads $ESPRESSO_PSEUDO


def noisy_perovskite() -> Structure:
    """Cubic CaTiO3 as a decoded crystal comes out: sites off by a few hundredths of an Å,
    cell lengths unequal in the third decimal (a P1 cell as given)."""
    sites = [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]
    shifts = np.array(
        [[0.004, -0.003, 0.002], [-0.002, 0.005, 0.001], [0.003, 0.0, -0.004],
         [-0.005, 0.002, 0.003], [0.001, -0.004, -0.002]]
    )  # fmt: skip
    return Structure(
        Lattice.orthorhombic(3.912, 3.897, 3.905), ["Ca", "Ti", "O", "O", "O"], sites + shifts
    )


def test_golden_ternary_with_sssp():
    """The default settings on a noisy perovskite: SSSP efficiency files, the cut-offs of its
    hardest element (O: 50/400 Ry), the symmetrised Pm-3m cell, no spin (Ti⁴⁺ is d⁰)."""
    s = QEInputSettings.from_config({})
    pw = build_input(noisy_perovskite(), s, sssp())
    assert pw.spacegroup_number == 221 and noisy_perovskite().get_space_group_info()[1] == 1
    assert pw.text == (DATA / "CaTiO3_sssp.pw.in").read_text()


def test_primitive_cell_of_an_fcc_crystal_has_a_quarter_of_the_atoms():
    s = QEInputSettings.from_config({})
    primitive = build_input(rocksalt_nio(), s, sssp())
    conventional = build_input(
        rocksalt_nio(), QEInputSettings.from_config({"cell": "conventional"}), sssp()
    )
    assert (len(primitive.structure), len(conventional.structure)) == (2, 8)
    assert primitive.spacegroup_number == conventional.spacegroup_number == 225
    assert primitive.structure.volume == pytest.approx(rocksalt_nio().volume / 4)


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
    s = settings()  # cells as given
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


def test_open_shells_follow_the_oxidation_state():
    assert open_shell_elements(Composition("NiO")) == {"Ni"}  # Ni2+ d8
    assert open_shell_elements(Composition("CaZrO3")) == set()  # Zr4+ d0
    assert open_shell_elements(Composition("CuCl")) == set()  # Cu+ d10
    assert open_shell_elements(Composition("GdF3")) == {"Gd"}  # Gd3+ f7
    assert open_shell_elements(Composition("YbF2")) == set()  # Yb2+ f14
    assert open_shell_elements(Composition("LaMnO3")) == {"Mn"}  # La3+ f0, Mn3+ d4
    # no charge-balanced guess: neutral atoms (Gd 4f7; Mg and O closed)
    assert open_shell_elements(Composition("GdMgO3")) == {"Gd"}
    assert open_shell_elements(Composition("HfNi2Sn")) == {"Hf", "Ni"}  # intermetallic
    assert open_shell_elements(Composition("NdNi2Pd")) == {"Nd", "Ni"}  # Pd 4d10 is closed


def test_spin_modes():
    nio, si = rocksalt_nio(), diamond_si()
    lib = library()
    gdmgo3 = Structure(
        Lattice.cubic(3.9), ["Gd", "Mg", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]],
    )  # fmt: skip
    gd = build_input(gdmgo3, QEInputSettings.from_config({}), sssp())
    assert gd.nspin == 2 and "starting_magnetization(1) = 0.5" in gd.text
    assert "starting_magnetization(2)" not in gd.text
    assert build_input(noisy_perovskite(), QEInputSettings.from_config({}), sssp()).nspin == 1
    listed = build_input(nio, settings(magnetic_elements=["O"]), lib)
    assert "starting_magnetization(2) = 0.5" in listed.text
    assert "starting_magnetization(1)" not in listed.text
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
        slurm=replace(
            settings().slurm, ntasks=8, time="02:00:00", mem_per_cpu_mb=1000, partition="cpu"
        ),
        pseudo_dir=None,
        files=[sssp().file("Na"), sssp().file("Cl")],
        family_label=sssp().label,
    )
    assert "#SBATCH --ntasks=8" in text and "#SBATCH --partition=cpu" in text
    assert "#SBATCH --job-name=qe-NaCl-7_x" in text and "--account" not in text
    assert 'export ESPRESSO_PSEUDO="${ESPRESSO_PSEUDO:-$HOME/espresso/pseudo}"' in text
    path = tmp_path / "job.sbatch"
    path.write_text(text)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_job_script_checks_the_family_files_before_pw_runs(tmp_path):
    """The script stops with a sentence for a missing file and for a wrong md5, before it
    would start pw.x (no pw.x is needed here: it is never reached)."""
    content = b"<UPF/>\n"
    folder = tmp_path / "pseudo"
    folder.mkdir()
    (folder / "X.upf").write_bytes(content)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "pw.in").write_text("&CONTROL\n/\n")

    def run(files):
        slurm = replace(
            settings().slurm, ntasks=1, time="1:00", mem_per_cpu_mb=100, launcher="true"
        )
        text = job_script(
            job_name="t", slurm=slurm, pseudo_dir=folder, files=files, family_label="test family"
        )
        (run_dir / "job.sbatch").write_text(text)
        return subprocess.run(
            ["bash", "job.sbatch"], cwd=run_dir, capture_output=True, text=True, check=False
        )

    missing = run([PseudoFile("Y", "Y.upf")])
    assert missing.returncode == 1
    assert f"{folder}/Y.upf is missing: unpack the test family files" in missing.stderr
    wrong = run([PseudoFile("X", "X.upf", md5="0" * 32)])
    assert wrong.returncode == 1 and "does not have the md5 " + "0" * 32 in wrong.stderr
    right = run([PseudoFile("X", "X.upf", md5=hashlib.md5(content).hexdigest())])
    # the files pass; the launcher ('true' here, so no pw.x runs) leaves no JOB DONE
    assert "X.upf" not in right.stderr and "pw.x stopped before JOB DONE" in right.stderr


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


def inputs_call(cand: Path, screen: Path, out: Path, qe: dict | None = None) -> StageCall:
    """The write_qe_inputs stage call of base NiO (default: the test folder family)."""
    return StageCall(
        settings={"qe": FOLDER if qe is None else qe},
        inputs={"candidates": cand, "screening": screen},
        outputs={"inputs": out},
        wildcards={"base": "NiO"},
    )


def test_write_qe_inputs_keeps_going_past_bad_candidates(tmp_path, caplog):
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
    write_qe_inputs(call)
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
    assert (ok["kpoints_a"], ok["ecutwfc_ry"], ok["ecutrho_ry"], ok["nspin"]) == (8, 60.0, 360.0, 2)
    assert ok["pseudo_family"] == "folder" and ok["pseudo_files_present"]
    assert pd.isna(ok["pseudo_md5_ok"]) and ok["spacegroup_number"] == 225
    assert json.loads(ok["pseudopotentials"]) == {
        "Ni": "Ni.pbe-spn-test.UPF",
        "O": "O.pbe-nc-test.UPF",
    }
    assert ok["pred_e_form_ev_per_atom"] == 0.5 and manifest.at["SiC-3", "pred_band_gap_ev"] == 3.5
    assert read_metadata(out / "manifest.parquet")["qe_input_settings"]["vdw_corr"] == "grimme-d2"
    assert "2 candidates have no input" in caplog.text

    # the collected manifest points at the files from the workflow root
    collected = tmp_path / "qe" / "manifest.parquet"
    collect_qe_manifest(
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
        write_qe_inputs(call)
    manifest = read_table(out / "manifest.parquet", "qe_manifest").set_index("candidate_id")
    assert (out / "NiO-1" / "pw.in").is_file() and not (out / "NiO-2").exists()
    assert pd.isna(manifest.at["NiO-1", "error"])
    assert manifest.at["NiO-2", "error"].startswith("excluded from DFT: holds U")
    assert pd.isna(manifest.at["NiO-2", "input_path"]) and manifest.at["NiO-2", "nsites"] == 8
    assert "1 candidates have no input (excluded element: 1)" in caplog.text


def test_sssp_inputs_need_no_files_and_the_run_names_the_missing_ones(tmp_path):
    """The default family writes every input with the pseudopotential folder absent and
    records that the files are not here; run_qe_relax then stops before pw.x, in one
    sentence naming the files and the family."""
    cand, screen = write_candidate_tables(
        tmp_path, {"NiO-1": rocksalt_nio(), "CaTiO3-2": noisy_perovskite()}
    )
    out = tmp_path / "qe" / "NiO"
    nowhere = tmp_path / "nowhere"
    write_qe_inputs(inputs_call(cand, screen, out, qe={"pseudo_dir": str(nowhere)}))
    manifest = read_table(out / "manifest.parquet", "qe_manifest").set_index("candidate_id")
    assert manifest["error"].isna().all()
    assert not manifest["pseudo_files_present"].any() and manifest["pseudo_md5_ok"].isna().all()
    assert set(manifest["pseudo_family"]) == {"sssp-efficiency"}
    assert json.loads(manifest.at["CaTiO3-2", "pseudopotentials"])["O"] == (
        "O.pbe-n-kjpaw_psl.0.1.UPF"
    )
    assert list(manifest["nsites"]) == [2, 5]  # primitive cells
    script = (out / "NiO-1" / "job.sbatch").read_text()
    assert f"export ESPRESSO_PSEUDO={nowhere}" in script
    assert "check_pseudo ni_pbe_v1.4.uspp.F.UPF" in script

    collected = tmp_path / "qe" / "manifest.parquet"
    collect_qe_manifest(
        StageCall(settings={"qe": {}}, inputs={"NiO": out}, outputs={"manifest": collected})
    )
    with pytest.raises(UserError) as info:
        run_qe_relax(
            StageCall(
                settings={"qe": {"run": True, "pseudo_dir": str(nowhere), "pw_command": "bash"}},
                inputs={"manifest": collected},
                outputs={"relaxed": tmp_path / "relaxed.parquet"},
            )
        )
    message = str(info.value)
    assert message.startswith("pw.x needs the SSSP 1.3.0 PBE efficiency files ")
    assert "O.pbe-n-kjpaw_psl.0.1.UPF" in message and f"not in {nowhere}" in message
    assert not (tmp_path / "relaxed.parquet").exists()

    # present files with the wrong content: the md5 sentence
    nowhere.mkdir()
    for name in {n for raw in manifest["pseudopotentials"] for n in json.loads(raw).values()}:
        (nowhere / name).write_text("not the SSSP file\n")
    with pytest.raises(UserError, match=r"do not have the md5 that the SSSP 1.3.0 PBE efficiency"):
        run_qe_relax(
            StageCall(
                settings={"qe": {"run": True, "pseudo_dir": str(nowhere), "pw_command": "bash"}},
                inputs={"manifest": collected},
                outputs={"relaxed": tmp_path / "relaxed.parquet"},
            )
        )


def test_element_outside_the_family_gets_a_manifest_row(tmp_path):
    rf = Structure(Lattice.cubic(4.0), ["Rf", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cand, screen = write_candidate_tables(tmp_path, {"RfO-1": rf, "NiO-2": rocksalt_nio()})
    out = tmp_path / "qe" / "NiO"
    write_qe_inputs(inputs_call(cand, screen, out, qe={}))
    manifest = read_table(out / "manifest.parquet", "qe_manifest").set_index("candidate_id")
    assert manifest.at["RfO-1", "error"].startswith(
        "element Rf is not in the SSSP 1.3.0 PBE efficiency family"
    )
    assert pd.notna(manifest.at["NiO-2", "input_path"])


def test_missing_pseudo_folder_stops_before_writing(tmp_path):
    cand, screen = write_candidate_tables(tmp_path, {"NiO-1": rocksalt_nio()})
    out = tmp_path / "qe" / "NiO"
    call = StageCall(
        settings={"qe": {**FOLDER, "pseudo_dir": str(tmp_path / "nowhere")}},
        inputs={"candidates": cand, "screening": screen},
        outputs={"inputs": out},
        wildcards={"base": "NiO"},
    )
    with pytest.raises(UserError, match=r"nowhere does not exist; set qe\.pseudo_dir"):
        write_qe_inputs(call)
    assert not out.exists()


def test_candidates_table_without_structures_is_a_user_error(tmp_path):
    cand, screen = write_candidate_tables(tmp_path, {"a": diamond_si()})
    pd.DataFrame({"candidate_id": ["a"], "formula": ["Si"]}).to_parquet(cand)
    call = StageCall(
        settings={"qe": FOLDER},
        inputs={"candidates": cand, "screening": screen},
        outputs={"inputs": tmp_path / "out"},
        wildcards={"base": "Si"},
    )
    with pytest.raises(UserError, match=r"lacks the columns \['structure_json'\]"):
        write_qe_inputs(call)


def test_manifest_schema_rejects_a_missing_column(tmp_path):
    frame = pd.DataFrame({"base": ["x"]})
    with pytest.raises(ValueError, match="missing columns"):
        write_table(frame, tmp_path / "m.parquet", "qe_manifest")


def test_empty_candidates_table_gives_an_empty_manifest(tmp_path):
    cand, screen = write_candidate_tables(tmp_path, {})
    out = tmp_path / "qe" / "NiO"
    write_qe_inputs(
        StageCall(
            settings={"qe": FOLDER},
            inputs={"candidates": cand, "screening": screen},
            outputs={"inputs": out},
            wildcards={"base": "NiO"},
        )
    )
    assert len(read_table(out / "manifest.parquet", "qe_manifest")) == 0
    assert [p.name for p in out.iterdir()] == ["manifest.parquet"]


def stability_table(rows: list[dict]) -> pd.DataFrame:
    """A judge table (schema ``stability``) with only the columns the QE stage reads set."""
    from matdisc.io.schemas import STABILITY

    defaults = {
        "base": "NiO", "generator": "vae", "sample_index": 0, "n_draws": 1, "formula": "NiO",
        "nsites": 8, "composition_known": False,
        "spacegroup_number": 225, "valid_strict": True, "valid_cdvae": True, "relaxed": True,
        "n_reference_phases": 3, "thin_hull": False, "stable": True, "novel": True,
        "structure_json": "{}",
    }  # fmt: skip
    frame = pd.DataFrame([{**defaults, **row} for row in rows]).reindex(columns=STABILITY.names)
    frame["structure_id"] = [f"NiO-s{i}" for i in range(len(frame))]
    return frame


def test_inputs_start_from_the_judges_relaxed_structure(tmp_path):
    """With the judge's table, a candidate starts from its CHGNet-relaxed structure; the
    elements CHGNet gives a moment start magnetic besides the open-shell ones (Ni²⁺)."""
    cand, screen = write_candidate_tables(
        tmp_path, {"NiO-1": rocksalt_nio(), "NiO-2": rocksalt_nio(), "NiO-3": rocksalt_nio()}
    )
    relaxed = rocksalt_nio()
    relaxed.scale_lattice(relaxed.volume * 1.1**3)
    table = stability_table(
        [
            {"candidate_id": "NiO-1", "relaxed_structure_json": json.dumps(relaxed.as_dict()),
             "magmoms_json": json.dumps([1.7] * 4 + [0.0] * 4)},
            {"candidate_id": "NiO-2", "relaxed_structure_json": json.dumps(relaxed.as_dict()),
             "magmoms_json": json.dumps([0.01] * 4 + [0.8] * 4)},
        ]
    )  # fmt: skip
    write_table(table, tmp_path / "stability.parquet", "stability")
    out = tmp_path / "qe" / "NiO"
    call = inputs_call(cand, screen, out, qe={"cell": "as_generated"})
    call.inputs["stability"] = tmp_path / "stability.parquet"
    write_qe_inputs(call)
    manifest = read_table(out / "manifest.parquet", "qe_manifest").set_index("candidate_id")
    assert manifest["start_structure"].tolist() == ["relaxed", "relaxed", "generated"]
    assert manifest["nspin"].tolist() == [2, 2, 2]  # Ni²⁺ is open-shell in all three
    assert "starting_magnetization(2)" not in (out / "NiO-1" / "pw.in").read_text()
    assert "starting_magnetization(2)" in (out / "NiO-2" / "pw.in").read_text()  # O, by CHGNet
    start = Structure.from_dict(json.loads(manifest.at["NiO-1", "structure_json"]))
    assert start.lattice.a == pytest.approx(4.17 * 1.1)
    # start_from: generated ignores the judge's structures
    call = inputs_call(cand, screen, tmp_path / "g", qe={"start_from": "generated"})
    call.inputs["stability"] = tmp_path / "stability.parquet"
    write_qe_inputs(call)
    again = read_table(tmp_path / "g" / "manifest.parquet", "qe_manifest")
    assert set(again["start_structure"]) == {"generated"}


def test_hull_phases_are_the_stable_references_of_each_system():
    from qe_cases import references_table, zincblende

    from matdisc.qe.hull import hull_phases

    refs = references_table(
        {
            "si": (zincblende(5.47, "Si", "Si"), -5.4),
            "c": (zincblende(3.57, "C", "C"), -9.1),
            "sic": (zincblende(4.36, "Si", "C"), -7.5),  # below the Si-C tie line: stable
            "sic-hi": (zincblende(4.50, "Si", "C"), -7.0),  # above it
            "ni": (Structure(Lattice.cubic(3.5), ["Ni"], [[0, 0, 0]]), -5.5),
        }
    )
    assert sorted(hull_phases(refs, ["SiC"])["reference_id"]) == ["c", "si", "sic"]
    assert sorted(hull_phases(refs, ["Si", "NiSi"])["reference_id"]) == ["ni", "si"]
    assert hull_phases(refs, ["NaCl"]).empty  # no phase of Na or Cl: nothing to compete


def test_dft_stability_from_relaxed_candidates_and_phases():
    from matdisc.qe.hull import dft_stability
    from matdisc.qe.relax import relaxed_frame

    def row(cid, kind, formula, energy, status="converged", n=2):
        element = formula if kind == "hull_phase" else "Si"
        structure = Structure(Lattice.cubic(5.0), [element] * n, [[0, 0, 0], [0.5, 0.5, 0.5]])
        if kind == "candidate":
            structure = Structure(Lattice.cubic(4.4), ["Si", "C"], [[0, 0, 0], [0.25] * 3])
        return {"base": "SiC", "candidate_id": cid, "kind": kind, "formula": formula,
                "status": status, "final_energy_ev_per_atom": energy,
                "relaxed_structure_json": json.dumps(structure.as_dict())}  # fmt: skip

    frame = relaxed_frame(
        [
            row("SiC-1", "candidate", "SiC", -7.5),
            row("SiC-2", "candidate", "SiC", -7.0, status="failed"),
            row("GeC-3", "candidate", "GeC", -6.0),
            row("hull:si", "hull_phase", "Si", -5.4),
            row("hull:c", "hull_phase", "C", -9.2),
        ]
    )
    out = dft_stability(frame).set_index("candidate_id")
    assert out.at["SiC-1", "dft_e_form_ev_per_atom"] == pytest.approx(-0.2)
    assert out.at["SiC-1", "dft_e_above_hull_ev_per_atom"] == pytest.approx(-0.2)
    assert out.at["SiC-2", "dft_hull_reason"] == "the candidate's run is failed"
    assert "Ge" in out.at["GeC-3", "dft_hull_reason"]
    assert np.isnan(out.at["GeC-3", "dft_e_above_hull_ev_per_atom"])


def test_hull_phases_get_inputs_once_without_any_file(tmp_path):
    from qe_cases import references_table

    cand, screen = write_candidate_tables(
        tmp_path, {"NiO-1": rocksalt_nio(), "NiO-2": rocksalt_nio()}
    )
    ni = Structure(
        Lattice.cubic(3.52), ["Ni"] * 4, [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    )
    o2 = Structure(Lattice.cubic(10.0), ["O", "O"], [[0.5, 0.5, 0.44], [0.5, 0.5, 0.56]])
    refs = references_table(
        {"mp-23": (ni, -5.5), "ase:O": (o2, -4.9), "mp-19009": (rocksalt_nio(), -6.0)}
    )
    write_table(refs, tmp_path / "references.parquet", "references")
    out = tmp_path / "qe" / "NiO"
    call = inputs_call(cand, screen, out, qe={})
    call.inputs["references"] = tmp_path / "references.parquet"
    write_qe_inputs(call)
    manifest = read_table(out / "manifest.parquet", "qe_manifest").set_index("candidate_id")
    assert manifest["kind"].tolist() == ["candidate"] * 2 + ["hull_phase"] * 3
    assert (out / "hull" / "mp-23" / "pw.in").is_file()
    assert manifest.at["hull:ase:O", "input_path"].startswith("hull/")
    assert manifest.loc[manifest["kind"] == "hull_phase", "error"].isna().all()
    # without the option, no phase
    call = inputs_call(cand, screen, tmp_path / "none", qe={"hull_phases": False})
    call.inputs["references"] = tmp_path / "references.parquet"
    write_qe_inputs(call)
    assert set(read_table(tmp_path / "none" / "manifest.parquet", "qe_manifest")["kind"]) == {
        "candidate"
    }


def test_manifest_follows_the_judges_order(tmp_path):
    """Candidates the judge relaxed come first, lowest above the hull first; the others
    keep the filter's order after them."""
    cand, screen = write_candidate_tables(
        tmp_path, {"NiO-1": rocksalt_nio(), "NiO-2": rocksalt_nio(), "NiO-3": rocksalt_nio()}
    )
    raw = json.dumps(rocksalt_nio().as_dict())
    table = stability_table(
        [
            {"candidate_id": "NiO-1", "relaxed_structure_json": raw,
             "magmoms_json": json.dumps([0.0] * 8), "e_above_hull_ev_per_atom": 0.2},
            {"candidate_id": "NiO-2", "relaxed_structure_json": raw,
             "magmoms_json": json.dumps([0.0] * 8), "e_above_hull_ev_per_atom": -0.1},
        ]
    )  # fmt: skip
    write_table(table, tmp_path / "stability.parquet", "stability")
    out = tmp_path / "qe" / "NiO"
    call = inputs_call(cand, screen, out, qe={})
    call.inputs["stability"] = tmp_path / "stability.parquet"
    write_qe_inputs(call)
    manifest = read_table(out / "manifest.parquet", "qe_manifest")
    assert manifest["candidate_id"].tolist() == ["NiO-2", "NiO-1", "NiO-3"]
    assert manifest["e_above_hull_ev_per_atom"].tolist()[:2] == [-0.1, 0.2]
    assert np.isnan(manifest["e_above_hull_ev_per_atom"].iloc[2])
