"""The download-structures stage: records, splits, the snapshot and local sources, base compounds."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from matdisc.data.bases import check_bases, select_bases
from matdisc.data.local import load_local
from matdisc.data.records import Record, assign_split, build_table, structure_class
from matdisc.data.snapshot import fetch_sdist, read_dataset
from matdisc.errors import UserError
from matdisc.io.schemas import PROPERTY_COLUMNS

SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}


def rocksalt(a: float = 5.64, species: tuple[str, str] = ("Na", "Cl")) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def perovskite() -> Structure:
    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])  # fmt: skip


def silicon() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


def test_structure_classes() -> None:
    assert structure_class(rocksalt().composition) == "binary_AB"
    assert structure_class(perovskite().composition) == "perovskite_ABX3"
    heusler = Structure.from_spacegroup(
        "Fm-3m",
        Lattice.cubic(6.0),
        ["Co", "Mn", "Si"],
        [[0.25, 0.25, 0.25], [0, 0, 0], [0.5, 0.5, 0.5]],
    )
    assert structure_class(heusler.composition) == "heusler_X2YZ"
    assert structure_class(silicon().composition) == "other"


def test_split_is_seeded_stable_and_proportional() -> None:
    ids = [f"mp-{i}" for i in range(20000)]
    split = assign_split(ids, 42, SPLIT)
    assert np.array_equal(split, assign_split(ids, 42, SPLIT))
    # A material keeps its split when the data set grows or is reordered.
    assert np.array_equal(assign_split(ids[::-1][:5000], 42, SPLIT), split[::-1][:5000])
    assert not np.array_equal(split, assign_split(ids, 43, SPLIT))
    fractions = pd.Series(split).value_counts(normalize=True)
    assert abs(fractions["train"] - 0.8) < 0.01 and abs(fractions["test"] - 0.1) < 0.01
    with pytest.raises(UserError, match="sum to"):
        assign_split(ids, 1, {"train": 0.8, "val": 0.3, "test": 0.1})


def test_build_table_describes_and_skips_with_reason(caplog: pytest.LogCaptureFixture) -> None:
    disordered = rocksalt()
    disordered.replace_species({"Cl": {"Cl": 0.5, "Br": 0.5}})
    records = [
        Record(
            material_id="mp-1",
            structure=rocksalt(),
            properties={"e_form_ev_per_atom": -2.1},
            source="t",
        ),
        Record(material_id="mp-2", structure=perovskite(), source="t"),
        Record(material_id="mp-3", structure=silicon(), source="t"),
        Record(material_id="mp-4", structure=disordered, source="t"),
        Record(
            material_id="mp-5", structure=("cif", "data_broken\n_cell_length_a 5\n"), source="t"
        ),
    ]
    with caplog.at_level(logging.WARNING):
        frame, skipped = build_table(records, seed=1, split=SPLIT)
    assert list(frame["material_id"]) == ["mp-1", "mp-2", "mp-3"]
    assert sum(skipped.values()) == 2 and any("disordered" in r for r in skipped)
    assert "mp-4" in caplog.text and "mp-5" in caplog.text
    nacl = frame.iloc[0]
    assert (nacl["formula"], nacl["crystal_system"], nacl["spacegroup_number"]) == (
        "NaCl",
        "cubic",
        225,
    )
    assert nacl["e_form_ev_per_atom"] == -2.1 and np.isnan(nacl["band_gap_ev"])
    assert frame.iloc[1]["structure_class"] == "perovskite_ABX3"
    assert (
        Structure.from_str(frame.iloc[2]["structure_json"], fmt="json").composition.reduced_formula
        == "Si"
    )


def test_duplicate_ids_are_an_error() -> None:
    records = [
        Record(material_id="x", structure=silicon()),
        Record(material_id="x", structure=silicon()),
    ]
    with pytest.raises(UserError, match="more than once"):
        build_table(records, seed=1, split=SPLIT)


def _tar_with(files: dict[str, str]) -> tarfile.TarFile:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return tarfile.open(fileobj=buffer, mode="r:gz")


def test_read_dataset_repairs_the_extra_leading_column() -> None:
    # As in dielectric_constant.csv: a '# ref' line, then rows with one more column than the header.
    text = "# ref: x\nidx,band_gap,n,material_id\n0,0,1.5,2.0,mp-1\n1,1,0.0,1.2,mp-2\n"
    archive = _tar_with({"pkg/matminer/datasets/dielectric_constant.csv": text})
    frame = read_dataset(archive, "pkg", "dielectric_constant")
    assert list(frame["material_id"]) == ["mp-1", "mp-2"]
    assert list(frame["band_gap"]) == ["1.5", "0.0"] and list(frame["n"]) == ["2.0", "1.2"]


def test_snapshot_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="sha256"):
        fetch_sdist("matminer", "0.4.0", "0" * 64, tmp_path)
    assert not (tmp_path / "matminer-0.4.0.tar.gz").exists()  # never left to be used


def test_local_cif_folder_skips_a_corrupt_cif(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "cifs"
    folder.mkdir()
    rocksalt().to(filename=str(folder / "nacl.cif"))
    perovskite().to(filename=str(folder / "srtio3.cif"))
    (folder / "broken.cif").write_text("data_x\nthis is not a CIF at all\n")
    with caplog.at_level(logging.WARNING):
        frame, skipped = build_table(load_local({"path": str(folder)}), seed=1, split=SPLIT)
    assert sorted(frame["material_id"]) == ["nacl", "srtio3"]
    assert sum(skipped.values()) == 1 and "broken" in caplog.text
    assert set(frame["source"]) == {"local:cifs"}


def test_local_all_corrupt_fails(tmp_path: Path) -> None:
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "a.cif").write_text("garbage")
    with pytest.raises(UserError, match="no usable structure"):
        build_table(load_local({"path": str(folder)}), seed=1, split=SPLIT)


def test_local_table_with_properties(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "material_id": ["a", "b"],
            "structure_json": [rocksalt().to_json(), silicon().to_json()],
            "band_gap_ev": [5.0, np.nan],
        }
    )
    table.to_csv(tmp_path / "t.csv", index=False)
    frame, _ = build_table(load_local({"path": str(tmp_path / "t.csv")}), seed=1, split=SPLIT)
    assert frame.set_index("material_id")["band_gap_ev"].to_dict()["a"] == 5.0
    assert np.isnan(frame.set_index("material_id").loc["b", "band_gap_ev"])


@pytest.mark.parametrize(
    ("value", "shown"), [("-1.2 eV", "'-1.2 eV'"), ("inf", "'inf'"), (float("-inf"), "'-inf'")]
)
def test_local_table_with_a_value_that_is_not_a_number(tmp_path: Path, value, shown) -> None:
    table = pd.DataFrame(
        {
            "material_id": ["a", "b"],
            "structure_json": [rocksalt().to_json(), silicon().to_json()],
            "e_form_ev_per_atom": [-2.0, value],
        }
    )
    table.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UserError, match=rf"column e_form_ev_per_atom holds {shown} in row 2"):
        load_local({"path": str(tmp_path / "t.csv")})


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"path": None}, "not set"), ({"path": "/nonexistent/x"}, "does not exist")],
)
def test_local_bad_path(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_local(settings)


def _table(structures: dict[str, Structure], ef: dict[str, float]) -> pd.DataFrame:
    records = [
        Record(
            material_id=k, structure=s, properties={"e_form_ev_per_atom": ef[k]} if k in ef else {}
        )
        for k, s in structures.items()
    ]
    return build_table(records, seed=1, split=SPLIT)[0]


def test_select_bases_picks_lowest_energy_cubic_polymorph() -> None:
    table = _table(
        {"m1": rocksalt(5.64), "m2": rocksalt(5.50), "m3": perovskite()},
        {"m1": -2.0, "m2": -2.2},
    )
    table["split"] = "train"
    chosen = select_bases(["NaCl", "SrTiO3"], table, max_sites=40).set_index("base")
    assert chosen.loc["NaCl", "material_id"] == "m2"
    assert chosen.loc["SrTiO3", "material_id"] == "m3"


def test_select_bases_prefers_a_training_split_polymorph() -> None:
    table = _table({"m1": rocksalt(5.64), "m2": rocksalt(5.50)}, {"m1": -2.0, "m2": -2.2})
    table["split"] = ["train" if m == "m1" else "val" for m in table["material_id"]]
    chosen = select_bases(["NaCl"], table, max_sites=40)
    assert chosen["material_id"].tolist() == ["m1"] and chosen["split"].tolist() == ["train"]


def test_base_outside_the_training_split_is_recorded_and_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = _table({"m1": rocksalt(), "m2": perovskite()}, {"m1": -2.0, "m2": -3.4})
    table.loc[table["material_id"] == "m1", "split"] = "train"
    table.loc[table["material_id"] == "m2", "split"] = "test"
    with caplog.at_level(logging.WARNING, logger="matdisc.data.bases"):
        chosen = select_bases(["NaCl", "SrTiO3"], table, max_sites=40).set_index("base")
    assert chosen["split"].to_dict() == {"NaCl": "train", "SrTiO3": "test"}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "SrTiO3 (m2) is in the test split" in warned[0]


def test_unknown_base_names_it_and_the_closest_formulas() -> None:
    table = _table({"m1": rocksalt(), "m2": rocksalt(species=("Na", "Br")), "m3": perovskite()}, {})
    with pytest.raises(UserError) as info:
        check_bases(["NaCl", "NaCI"], table)
    message = str(info.value)
    assert "'NaCI'" in message and "NaCl" in message.split("closest")[1]
    assert message.count(".") <= 2 and "\n" not in message  # one sentence


def test_non_cubic_base_is_refused() -> None:
    hexagonal = Structure(
        Lattice.hexagonal(3.2, 5.2), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]]
    )
    table = _table({"m1": hexagonal}, {})
    with pytest.raises(UserError, match="not cubic"):
        select_bases(["ZnO"], table, max_sites=40)


@pytest.mark.slow
def test_snapshot_table_is_real_and_complete(snapshot_table: pd.DataFrame) -> None:
    table = snapshot_table
    assert len(table) >= 6000 and table["material_id"].is_unique
    assert (table["crystal_system"] == "cubic").sum() >= 1200
    counts = table[list(PROPERTY_COLUMNS)].notna().sum()
    assert counts["e_form_ev_per_atom"] >= 3900
    assert counts["k_vrh_gpa"] >= 1100 and counts["poisson_ratio"] >= 1100
    assert counts["band_gap_ev"] >= 1000 and counts["dielectric_total"] >= 1000
    assert counts["energy_ev_per_atom"] == 0  # not in these datasets: never invented
    srtio3 = table[table["material_id"] == "mp-5229"].iloc[0]
    assert srtio3["formula"] == "SrTiO3" and srtio3["spacegroup_number"] == 221
    # Sanity of real values: MP's band gap of the rock-salt Rb2Te entry mp-441 is 1.88 eV.
    assert table.set_index("material_id").loc["mp-441", "band_gap_ev"] == pytest.approx(1.88)
    assert set(table["split"]) == {"train", "val", "test"}
