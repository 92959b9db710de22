"""Ion-exchange substitution baseline (matdisc.sample.substitution) on a perovskite and a
full Heusler: the ionic predictor, the Mendeleev-number fallback and the frame's layout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pymatgen.core import Element, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matdisc.errors import UserError
from matdisc.filters.distance import min_distance
from matdisc.io.schemas import SAMPLES
from matdisc.sample.substitution import SUBSTITUTION_COLUMNS, substitution_samples


def cubic(group: str, a: float, species: list[str], coords: list[list[float]]) -> Structure:
    return Structure.from_spacegroup(group, [[a, 0, 0], [0, a, 0], [0, 0, a]], species, coords)


@pytest.fixture(scope="module")
def perovskite() -> Structure:
    return cubic("Pm-3m", 3.84, ["Ca", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])


@pytest.fixture(scope="module")
def heusler() -> Structure:
    return cubic(
        "Fm-3m",
        5.95,
        ["Cu", "Mn", "Al"],
        [[0.25, 0.25, 0.25], [0, 0, 0], [0.5, 0.5, 0.5]],
    )


@pytest.fixture(scope="module")
def perovskite_draws(perovskite: Structure) -> tuple[pd.DataFrame, str]:
    return substitution_samples("CaTiO3", perovskite, n_max=1000, threshold=0.001)


@pytest.fixture(scope="module")
def heusler_draws(heusler: Structure) -> tuple[pd.DataFrame, str]:
    return substitution_samples(
        "Cu2MnAl", heusler, n_max=40, threshold=0.001, exclude=["U", "Fe", "Ag"]
    )


def structures(frame: pd.DataFrame) -> list[Structure]:
    return [Structure.from_dict(json.loads(s)) for s in frame["structure_json"]]


def check_layout(frame: pd.DataFrame, base: str) -> None:
    assert tuple(frame.columns) == SUBSTITUTION_COLUMNS
    assert list(frame.columns[: len(SAMPLES.names)]) == SAMPLES.names
    # concatenable with the VAE's samples table: its columns fit the schema
    pa.Table.from_pandas(frame[SAMPLES.names], schema=SAMPLES, preserve_index=False)
    assert (frame["base"] == base).all()
    assert (frame["mode"] == "substitution").all()
    assert frame["sample_index"].tolist() == list(range(len(frame)))
    assert frame["sample_index"].dtype == np.int32
    assert frame["decile"].dtype == np.int8 and (frame["decile"] == -1).all()
    assert frame["t"].isna().all() and frame["z_distance"].isna().all()
    assert frame["reason"].isna().all()
    assert frame["formula"].is_unique


def check_geometry(frame: pd.DataFrame, base: Structure, group: int) -> None:
    anonymous = base.composition.anonymized_formula
    assert (frame["formula_anonymous"] == anonymous).all()
    assert (frame["n_sites"] == len(base)).all()
    assert not (frame["formula"] == base.composition.reduced_formula).any()
    for column, length in zip(
        ("lattice_a_angstrom", "lattice_b_angstrom", "lattice_c_angstrom"),
        base.lattice.abc,
        strict=True,
    ):
        assert np.allclose(frame[column], length)
    assert np.allclose(frame["min_distance_angstrom"], min_distance(base))
    for structure, formula in zip(structures(frame), frame["formula"], strict=True):
        assert structure.composition.reduced_formula == formula
        assert all(type(sp).__name__ == "Element" for sp in structure.composition)
        assert np.allclose(structure.lattice.matrix, base.lattice.matrix)
        assert SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number() == group


def test_perovskite_uses_the_ionic_predictor(
    perovskite: Structure, perovskite_draws: tuple[pd.DataFrame, str]
) -> None:
    frame, method = perovskite_draws
    assert method == "predictor"
    assert len(frame) >= 5
    check_layout(frame, "CaTiO3")
    check_geometry(frame, perovskite, 221)
    assert "SrTiO3" in set(frame["formula"])
    for text in frame["structure_json"]:
        assert "oxidation_state" not in text
    probability = frame["probability"].to_numpy()
    assert np.all(probability > 0) and np.all(probability <= 1)
    assert np.all(np.diff(probability) <= 0)
    for substitutions in frame["substitutions_json"]:
        mapping = json.loads(substitutions)
        assert mapping and set(mapping) <= {"Ca", "Ti", "O"}


def test_perovskite_n_max_and_exclude(
    perovskite: Structure, perovskite_draws: tuple[pd.DataFrame, str]
) -> None:
    full, _ = perovskite_draws
    frame, method = substitution_samples(
        "CaTiO3", perovskite, n_max=3, threshold=0.001, exclude=["Sr", "U"]
    )
    assert method == "predictor"
    assert len(frame) == 3
    expected = full[~full["formula"].str.contains("Sr")]["formula"].head(3)
    assert frame["formula"].tolist() == expected.tolist()


def test_heusler_falls_back_to_mendeleev_similarity(
    heusler: Structure, heusler_draws: tuple[pd.DataFrame, str]
) -> None:
    frame, method = heusler_draws
    assert method == "similarity"
    assert len(frame) == 40  # n_max
    check_layout(frame, "Cu2MnAl")
    check_geometry(frame, heusler, 225)
    assert frame["probability"].isna().all()
    for structure in structures(frame):
        symbols = {el.symbol for el in structure.composition}
        assert not symbols & {"U", "Fe", "Ag"}
    shifts = []
    for substitutions in frame["substitutions_json"]:
        mapping = json.loads(substitutions)
        assert mapping and set(mapping) <= {"Cu", "Mn", "Al"}
        shifts.append(sum(abs(_mendeleev(new) - _mendeleev(old)) for old, new in mapping.items()))
        assert all(abs(_mendeleev(new) - _mendeleev(old)) <= 4 for old, new in mapping.items())
    assert shifts == sorted(shifts)


def _mendeleev(symbol: str) -> int:
    return int(Element(symbol).mendeleev_no)


def test_no_neighbour_is_a_user_error() -> None:
    copper = cubic("Fm-3m", 3.61, ["Cu"], [[0, 0, 0]])
    with pytest.raises(UserError, match="Cu"):
        substitution_samples("Cu", copper, n_max=10, threshold=0.001, max_shift=0)
