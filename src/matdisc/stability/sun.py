"""The S.U.N. rate: stable, unique and novel structures per draw.

- Stable: relaxed energy at most ``threshold`` (0.1 eV/atom, MatterGen's) above the hull of
  the run's reference phases; ``stable_below_hull`` counts those at or below it.
- Unique: stable structures that StructureMatcher does not match to an earlier one (per
  base within the base; overall across all bases, in the configured order).
- Novel: no StructureMatcher match to any structure of the run's data. This is novelty
  against the run's data (the snapshot's 6,317 materials by default), not against all
  known crystals, so the rate is not comparable with MatterGen's 38.6 %.

The rate's denominator is every draw made, failed draws included (as MatterGen counts).
Structures not relaxed are counted as not stable, so where the judge relaxed only some
structures of a pool the count is a lower bound (``lower_bound``). The 95 % interval is
Wilson's, for a binomial proportion.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from pymatgen.core import Structure


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's 95 % score interval of k successes in n trials ((nan, nan) for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def unique_mask(frame: pd.DataFrame) -> np.ndarray:
    """True for each row whose relaxed structure matches no earlier row's (same formula)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    seen: dict[str, list[Structure]] = {}
    keep = []
    for formula, raw in zip(frame["formula"], frame["relaxed_structure_json"], strict=True):
        structure = Structure.from_dict(json.loads(raw))
        earlier = seen.setdefault(formula, [])
        duplicate = any(matcher.fit(structure, other) for other in earlier)
        if not duplicate:
            earlier.append(structure)
        keep.append(not duplicate)
    return np.asarray(keep, dtype=bool)


def _sun_stages(judged: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The rows of ``judged`` that are stable; stable and unique; stable, unique and novel."""
    stable = judged[judged["stable"].astype(bool)]
    unique = stable[unique_mask(stable)] if len(stable) else stable
    return stable, unique, unique[unique["novel"].astype(bool)]


def sun_structures(judged: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``judged`` that are stable, unique and novel."""
    return _sun_stages(judged)[2]


def sun_row(base: str, generator: str, judged: pd.DataFrame, draws: int) -> dict[str, object]:
    """One row of schema ``sun`` from one base's (or all bases') judged structures."""
    stable, unique, novel = _sun_stages(judged)
    low, high = wilson_interval(len(novel), draws)
    e_hull = pd.to_numeric(judged["e_above_hull_ev_per_atom"], errors="coerce")
    return {
        "base": base,
        "generator": generator,
        "draws": draws,
        "valid": int(judged["n_draws"].sum()),
        "judged": len(judged),
        "relaxed": int(judged["relaxed"].astype(bool).sum()),
        "stable": len(stable),
        "stable_below_hull": int((e_hull <= 0).sum()),
        "unique": len(unique),
        "novel": len(novel),
        "sun_rate": len(novel) / draws if draws else float("nan"),
        "sun_rate_low": low,
        "sun_rate_high": high,
        "lower_bound": bool((~judged["relaxed"].astype(bool)).any()),
    }


def sun_table(
    judged: Sequence[pd.DataFrame], draws: Sequence[int], bases: Sequence[str], generator: str
) -> pd.DataFrame:
    """Per-base rows and the overall row (``base = "all"``)."""
    rows = [sun_row(b, generator, t, d) for b, t, d in zip(bases, judged, draws, strict=True)]
    nonempty = [t for t in judged if len(t)]
    everything = pd.concat(nonempty, ignore_index=True) if nonempty else judged[0]
    rows.append(sun_row("all", generator, everything, int(sum(draws))))
    return pd.DataFrame(rows)
