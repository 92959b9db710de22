"""The five-stage candidate filter of seed 000 ("Ab Initio Validation", Table 2).

Stages, applied in order to the samples drawn around one base compound, each counted:

1. ``distance_valid``: the sample has a structure and no two sites, periodic images
   included, are closer than ``min_distance_angstrom`` (0.5 Å).
2. ``same_stoichiometry``: its anonymous formula (pymatgen ``anonymized_formula``, e.g.
   ABC3) equals the base compound's.

   ``composition_valid`` (not in the seed): its composition is charge-neutral by the rule
   of ``composition_validity`` (:mod:`matdisc.stability.validity`; ``none`` passes all).
   The draws that pass it form the judge's pool, whatever their CGCNN Ef.
3. ``not_in_training``: its reduced formula is not a composition of the VAE/UNet
   training set (the voxel store's train split, as the seed's "not exist in the
   VAE-UNet training set"); with ``structure_matcher`` only samples that pymatgen's
   StructureMatcher also matches to a training structure of that formula are removed.
4. ``ef_window``: the CGCNN formation energy is within ``ef_window`` (20%) of the base's
   formation energy: ``|Ef - Ef_base| <= ef_window * |Ef_base|``.
5. ``unique_composition``: one sample per reduced formula, the lowest predicted Ef.

Then, as the seed selects for DFT: ``selected`` keeps the ``top_k`` (10) closest to the
base's Ef, and ``dft_eligible`` counts those without an excluded element (actinides by
default). All selected samples are candidates (with a CIF); the ones holding an excluded
element are flagged (``dft_eligible`` false, ``excluded_elements``) and get no DFT input,
as the seed could not run DFT on its actinide candidates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from matdisc.filters.distance import min_distance
from matdisc.stability.validity import is_valid

log = logging.getLogger(__name__)

#: (name, description) of every counted step, in order. The first six are the seed's
#: Table 2 rows; the last two are its selection for DFT (top-k, then no excluded element).
STAGES: tuple[tuple[str, str], ...] = (
    ("initial", "initial samples"),
    ("distance_valid", "interatomic distance valid"),
    ("same_stoichiometry", "same stoichiometric formula"),
    ("composition_valid", "charge-neutral composition"),
    ("not_in_training", "not in training set"),
    ("ef_window", "Ef within window of base"),
    ("unique_composition", "unique composition"),
    ("selected", "top-k closest to base Ef"),
    ("dft_eligible", "no element excluded for DFT"),
)
STAGE_NAMES: tuple[str, ...] = tuple(name for name, _ in STAGES)

#: Seed 000, Table 2: average samples per base (of 1000) after each step.
PAPER_AVERAGE_N: dict[str, float] = {
    "initial": 1000,
    "distance_valid": 890,
    "same_stoichiometry": 350,
    "not_in_training": 250,
    "ef_window": 60,
    "unique_composition": 20,
}

#: Letter of each generator in candidate and structure ids ({base}-s00012, {base}-x00012).
ID_LETTER = {"vae": "s", "substitution": "x"}


def item_id(base: str, generator: str, sample_index: int) -> str:
    """The id of draw ``sample_index`` of ``generator`` around ``base``."""
    return f"{base}-{ID_LETTER[generator]}{int(sample_index):05d}"


@dataclass(frozen=True, kw_only=True)
class FilterSettings:
    """The ``filter`` config section (see config/schema.yaml)."""

    min_distance_angstrom: float
    ef_window: float
    top_k: int
    exclude_elements: tuple[str, ...]
    structure_matcher: bool
    composition_validity: str

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> FilterSettings:
        return cls(
            min_distance_angstrom=float(section["min_distance_angstrom"]),
            ef_window=float(section["ef_window"]),
            top_k=int(section["top_k"]),
            exclude_elements=tuple(section["exclude_elements"]),
            structure_matcher=bool(section["structure_matcher"]),
            composition_validity=str(section["composition_validity"]),
        )


@dataclass(frozen=True)
class FilterResult:
    """candidates: the selected rows (input columns + ``e_form_ev_per_atom``,
    ``delta_e_form_ev_per_atom``, ``dft_eligible`` and ``excluded_elements``: the
    excluded elements it holds, comma-separated, empty if none), closest to the base
    first. counts: stage -> number of samples left after it (each <= the previous).
    stage_reached: per input row, the last stage it passed. pool: the rows that passed
    ``composition_valid`` (input columns + ``formula``, ``formula_anonymous``,
    ``valid_strict``, ``valid_cdvae``, ``in_training``)."""

    candidates: pd.DataFrame
    counts: dict[str, int]
    stage_reached: pd.Series
    pool: pd.DataFrame


def _structure(raw: Any) -> Any:
    from pymatgen.core import Structure

    if raw is None or (isinstance(raw, float) and np.isnan(raw)) or raw == "":
        return None
    return Structure.from_dict(json.loads(raw) if isinstance(raw, str) else raw)


def min_distances(
    structure_json: Sequence[Any], threads: int = 1, address: str | None = None
) -> np.ndarray:
    """Shortest interatomic distance (Å) of each structure (NaN where there is none),
    in chunks on the dask scheduler of :mod:`matdisc.parallel`."""
    from dask import delayed

    from matdisc.parallel import dask_compute

    def chunk(items: list[Any]) -> list[float]:
        out = []
        for raw in items:
            s = _structure(raw)
            out.append(float("nan") if s is None or len(s) == 0 else min_distance(s))
        return out

    items = list(structure_json)
    size = max(1, min(250, -(-len(items) // max(1, 4 * threads))))
    tasks = [delayed(chunk)(items[i : i + size]) for i in range(0, len(items), size)]
    parts = dask_compute(tasks, threads=threads, address=address)
    return np.asarray([d for part in parts for d in part], dtype=np.float64)


def within_window(ef: np.ndarray, base_ef: float, window: float) -> np.ndarray:
    """``|Ef - Ef_base| <= window * |Ef_base|`` (False for NaN predictions)."""
    ef = np.asarray(ef, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.abs(ef - base_ef) <= window * abs(base_ef)


def excluded_in(formula: str, excluded: Iterable[str]) -> list[str]:
    """The elements of ``formula`` that are in ``excluded`` (in the formula's order)."""
    from pymatgen.core import Composition

    excluded = set(excluded)
    return [el.symbol for el in Composition(formula).elements if el.symbol in excluded]


def _matches_training(structure_json: str, training: Sequence[str], matcher: Any) -> bool:
    s = _structure(structure_json)
    return any(matcher.fit(s, _structure(t)) for t in training)


def run_filter(
    samples: pd.DataFrame,
    *,
    base_formula_anonymous: str,
    base_ef: float,
    training_formulas: set[str],
    predict_ef: Callable[[list[str]], np.ndarray],
    settings: FilterSettings,
    training_structures: dict[str, list[str]] | None = None,
    threads: int = 1,
    address: str | None = None,
) -> FilterResult:
    """Apply the stages to ``samples`` (columns ``sample_index``, ``structure_json``
    (null when the sample has no structure), others carried along).

    base_ef: the base's formation energy (eV/atom) the window and ranking use.
    training_formulas: reduced formulas of the training set. predict_ef: structure JSON
    strings -> CGCNN formation energies (eV/atom), called once on the stage-3 survivors.
    training_structures: formula -> training structures' JSON, needed with
    ``settings.structure_matcher``.
    """
    from pymatgen.core import Composition

    if not np.isfinite(base_ef):
        raise ValueError("the base compound's formation energy is unknown (NaN)")
    frame = samples.reset_index(drop=True).copy()
    n = len(frame)
    reached = pd.Series(["initial"] * n, dtype=object)
    counts: dict[str, int] = {"initial": n}

    # 1. valid interatomic distances, periodic images included
    dist = min_distances(frame["structure_json"].tolist(), threads=threads, address=address)
    frame["min_distance_angstrom"] = dist
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(dist) & (dist >= settings.min_distance_angstrom)
    no_structure = int(frame["structure_json"].isna().sum())
    log.info(
        "distance check: %d of %d pass (>= %.2f Å); %d have no structure, %d too close",
        int(keep.sum()), n, settings.min_distance_angstrom, no_structure,
        n - int(keep.sum()) - no_structure,
    )  # fmt: skip
    reached[keep] = "distance_valid"
    counts["distance_valid"] = int(keep.sum())

    # 2. same stoichiometry (anonymous formula) as the base
    formulas = np.full(n, None, dtype=object)
    anonymous = np.full(n, None, dtype=object)
    for i in np.flatnonzero(keep):
        comp = Composition(_structure(frame.at[i, "structure_json"]).composition)
        formulas[i] = comp.reduced_formula
        anonymous[i] = comp.anonymized_formula
    frame["formula"] = formulas
    frame["formula_anonymous"] = anonymous
    keep &= frame["formula_anonymous"].to_numpy() == base_formula_anonymous
    reached[keep] = "same_stoichiometry"
    counts["same_stoichiometry"] = int(keep.sum())

    # charge-neutral composition (both rules recorded, one applied)
    valid = {rule: np.zeros(n, dtype=bool) for rule in ("strict", "cdvae")}
    for i in np.flatnonzero(keep):
        for rule, flags in valid.items():
            flags[i] = is_valid(formulas[i], rule)
    frame["valid_strict"], frame["valid_cdvae"] = valid["strict"], valid["cdvae"]
    log.info(
        "composition validity of %d draws: strict %d, cdvae %d (applied: %s)",
        int(keep.sum()), int(valid["strict"].sum()), int(valid["cdvae"].sum()),
        settings.composition_validity,
    )  # fmt: skip
    if settings.composition_validity != "none":
        keep &= valid[settings.composition_validity]
    reached[keep] = "composition_valid"
    counts["composition_valid"] = int(keep.sum())
    known = np.array([f in training_formulas for f in frame["formula"]], dtype=bool)
    pool = frame[keep].assign(in_training=known[keep])

    # 3. not in the training set
    if settings.structure_matcher and known[keep].any():
        from pymatgen.analysis.structure_matcher import StructureMatcher

        matcher = StructureMatcher()
        training_structures = training_structures or {}
        for i in np.flatnonzero(keep & known):
            known[i] = _matches_training(
                frame.at[i, "structure_json"], training_structures.get(formulas[i], []), matcher
            )
    keep &= ~known
    reached[keep] = "not_in_training"
    counts["not_in_training"] = int(keep.sum())

    # 4. CGCNN formation energy within the window around the base's
    ef = np.full(n, np.nan)
    rows = np.flatnonzero(keep)
    if len(rows):
        ef[rows] = np.asarray(
            predict_ef(frame.loc[rows, "structure_json"].tolist()), dtype=np.float64
        )
        if np.isnan(ef[rows]).any():
            log.warning("%d samples have no Ef prediction; they fail the Ef window",
                        int(np.isnan(ef[rows]).sum()))  # fmt: skip
    frame["e_form_ev_per_atom"] = ef
    frame["delta_e_form_ev_per_atom"] = ef - base_ef
    keep &= within_window(ef, base_ef, settings.ef_window)
    reached[keep] = "ef_window"
    counts["ef_window"] = int(keep.sum())

    # 5. unique composition: the lowest predicted Ef of each reduced formula
    survivors = frame[keep].sort_values(["e_form_ev_per_atom", "sample_index"])
    unique = survivors.drop_duplicates("formula", keep="first")
    keep = np.zeros(n, dtype=bool)
    keep[unique.index.to_numpy()] = True
    reached[keep] = "unique_composition"
    counts["unique_composition"] = int(keep.sum())

    # then for DFT: the top_k closest to the base's Ef, of which those without an
    # excluded element go on (the others stay candidates, flagged)
    gap = frame.loc[keep, "delta_e_form_ev_per_atom"].abs().rename("_gap")
    chosen = frame[keep].join(gap).sort_values(["_gap", "sample_index"]).head(settings.top_k)
    keep = np.zeros(n, dtype=bool)
    keep[chosen.index.to_numpy()] = True
    reached[keep] = "selected"
    counts["selected"] = int(keep.sum())

    held = [excluded_in(f, settings.exclude_elements) for f in chosen["formula"]]
    chosen["excluded_elements"] = [",".join(h) for h in held]
    chosen["dft_eligible"] = [not h for h in held]
    flagged = [f"{f} ({','.join(h)})" for f, h in zip(chosen["formula"], held, strict=True) if h]
    if flagged:
        log.info("%d selected candidates hold an element excluded for DFT, no DFT input: %s",
                 len(flagged), ", ".join(flagged))  # fmt: skip
    eligible = chosen.index[chosen["dft_eligible"].to_numpy(dtype=bool)].to_numpy()
    reached.loc[eligible] = "dft_eligible"
    counts["dft_eligible"] = len(eligible)

    candidates = chosen.drop(columns="_gap").reset_index(drop=True)
    candidates.insert(0, "rank", np.arange(1, len(candidates) + 1))
    return FilterResult(candidates=candidates, counts=counts, stage_reached=reached, pool=pool)


def funnel_rows(base: str, generator: str, counts: dict[str, int]) -> pd.DataFrame:
    """The funnel of one base and generator: one row per stage with count and cumulative
    percentage."""
    initial = counts["initial"]
    rows = []
    previous = None
    for step, (name, description) in enumerate(STAGES):
        count = counts[name]
        if previous is not None and count > previous:
            raise AssertionError(f"funnel of {base}: {name} ({count}) exceeds the previous stage")
        paper = PAPER_AVERAGE_N.get(name)
        rows.append(
            {
                "base": base,
                "generator": generator,
                "step": step,
                "stage": name,
                "description": description,
                "count": float(count),
                "cumulative_pct": 100.0 * count / initial if initial else float("nan"),
                "paper_average_n": float(paper) if paper is not None else float("nan"),
                "paper_cumulative_pct": paper / 10.0 if paper is not None else float("nan"),
            }
        )
        previous = count
    return pd.DataFrame(rows)


#: The judge's rows (matdisc.stability), after the seed's. They count distinct structures
#: of the pool (the composition_valid draws), not draws, so they need not stay below the
#: seed's selection: relaxed by CHGNet, then stable, unique and novel (S.U.N.).
JUDGE_STAGES: tuple[tuple[str, str], ...] = (
    ("relaxed", "judge: structures relaxed by CHGNet"),
    ("stable", "judge: stable (within threshold of the hull)"),
    ("unique", "judge: stable and unique"),
    ("novel", "judge: stable, unique and novel (S.U.N.)"),
)


def judge_rows(funnels: pd.DataFrame, sun: pd.DataFrame) -> pd.DataFrame:
    """Funnel rows of the judge for every base and generator of ``funnels`` from the S.U.N.
    table."""
    rows = []
    for (base, generator), steps in funnels.groupby(["base", "generator"], sort=False):
        initial = float(steps.loc[steps["stage"] == "initial", "count"].iloc[0])
        counts = sun[(sun["base"] == base) & (sun["generator"] == generator)].iloc[0]
        previous = float(steps.loc[steps["stage"] == "composition_valid", "count"].iloc[0])
        for offset, (name, description) in enumerate(JUDGE_STAGES):
            count = float(counts[name])
            if count > previous:
                raise AssertionError(
                    f"funnel of {base}: {name} ({count:g}) exceeds the stage before"
                )
            rows.append(
                {
                    "base": base,
                    "generator": generator,
                    "step": len(STAGES) + offset,
                    "stage": name,
                    "description": description,
                    "count": count,
                    "cumulative_pct": 100.0 * count / initial if initial else float("nan"),
                    "paper_average_n": float("nan"),
                    "paper_cumulative_pct": float("nan"),
                }
            )
            previous = count
    return pd.DataFrame(rows, columns=funnels.columns)


def average_rows(funnels: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``base = "average"``: mean count per stage over the bases, per generator,
    and the cumulative percentage of those means (the seed's Table 2 form)."""
    per_base = funnels[funnels["base"] != "average"]
    keys = ["generator", "step", "stage", "description"]
    out = per_base.groupby(keys, sort=True)["count"].mean().reset_index()
    initial = out[out["stage"] == "initial"].set_index("generator")["count"]
    out["cumulative_pct"] = 100.0 * out["count"] / out["generator"].map(initial).replace(0, np.nan)
    out.insert(0, "base", "average")
    paper = out["stage"].map(PAPER_AVERAGE_N).astype(float)
    out["paper_average_n"] = paper
    out["paper_cumulative_pct"] = paper / 10.0
    return out[list(funnels.columns)]
