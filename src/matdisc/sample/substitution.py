"""Ion-exchange baseline: new crystals by element substitution into a known structure.

A cheap baseline beside the VAE: every draw keeps the base compound's structure (its
cell, positions and symmetry, neither relaxed nor rescaled) and swaps its elements.
Two methods, the first that applies is used:

* ``"predictor"`` (ionic bases): the data-mined ionic substitution model of Hautier et
  al., *Inorg. Chem.* 50, 656 (2011), as shipped with pymatgen
  (``SubstitutionPredictor``). The base's oxidation states are guessed from its
  composition (``Structure.add_oxidation_state_by_guess``, common ICSD states); the
  predictor lists species sets whose product of conditional substitution probabilities
  P(new | old) exceeds ``threshold``, and, as in Hautier's method (pymatgen's
  ``Substitutor``), only charge-balanced substitutions are kept. Bond-valence states
  (``BVAnalyzer``) are not used as a fallback: they invent ions for intermetallics
  (Zr+ Co2+ Bi3- for ZrCoBi).
* ``"similarity"`` (intermetallics, where no oxidation states can be guessed, e.g.
  HfNi2Sn, ZrCoBi): each element is replaced by elements close to it on Pettifor's
  Mendeleev-number scale (``Element.mendeleev_no``; D. G. Pettifor, *Solid State
  Commun.* 51, 31 (1984)). That scale orders the elements in one chemical-similarity
  sequence built so that structure maps of binary compounds separate their structure
  types; neighbours on it tend to adopt the same structures, so it is a one-dimensional
  stand-in for the missing ionic substitution statistics. Draws are ranked by the total
  |change of Mendeleev number| (smallest first, ties by formula); ``probability`` is NaN.

Both methods keep the prototype's stoichiometry class: two different elements of the base
never become one element. Draws holding an ``exclude``-d element, or whose reduced formula
is the base's, are dropped, and draws are deduplicated by reduced formula (the most
probable / the closest kept). Everything is deterministic.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Element, Species, Structure

from matdisc.errors import UserError
from matdisc.filters.distance import min_distance
from matdisc.io.schemas import READ_COLUMNS, SUBSTITUTIONS

log = logging.getLogger(__name__)

#: Columns of the frame returned by :func:`substitution_samples` (schema ``substitutions``):
#: the 15 of ``matdisc.io.schemas.SAMPLES`` in order, then the substitution's own two.
SUBSTITUTION_COLUMNS: tuple[str, ...] = tuple(SUBSTITUTIONS.names)

MODE = "substitution"

#: Elements never substituted in: noble gases, Tc and Pm (radioactive, no stable
#: isotope) and everything beyond Bi (Z > 83).
_MAX_Z = 83
_SKIPPED = frozenset({"He", "Ne", "Ar", "Kr", "Xe", "Rn", "Tc", "Pm"})
_CHARGE_TOL = 1e-9


@functools.lru_cache(maxsize=4)
def _predictor(threshold: float) -> Any:
    """pymatgen's SubstitutionPredictor (loading its lambda table takes ~1 s)."""
    from pymatgen.analysis.structure_prediction.substitution_probability import (
        SubstitutionPredictor,
    )

    return SubstitutionPredictor(threshold=threshold)


def _plain(structure: Structure) -> Structure:
    """A copy of ``structure`` with elements only (no oxidation states)."""
    plain = structure.copy()
    plain.remove_oxidation_states()
    return plain


def _oxidation_decorated(structure: Structure) -> Structure | None:
    """``structure`` with guessed oxidation states, or None when none (or only zeros) fit."""
    decorated = _plain(structure)
    try:
        decorated.add_oxidation_state_by_guess()
    except (ValueError, KeyError) as err:  # pragma: no cover - pymatgen-version specific
        log.info("no oxidation states for %s: %s", structure.composition.reduced_formula, err)
        return None
    species = decorated.composition.elements
    if any(not isinstance(sp, Species) or sp.oxi_state in (None, 0) for sp in species):
        return None
    return decorated


def _candidate(
    base: Structure,
    mapping: dict[Any, str],
    exclude: frozenset[str],
    base_formula: str,
) -> tuple[Structure, dict[str, str]] | None:
    """The base with its species replaced by the elements ``mapping`` names, or None when the
    draw is the base itself, holds an excluded element or merges two base elements.

    base: the (possibly oxidation-decorated) base; mapping: {base species: new element}.
    """
    by_element: dict[str, set[str]] = {}
    for old, new in mapping.items():
        by_element.setdefault(old.symbol, set()).add(new)
    new_elements = [new for news in by_element.values() for new in news]
    if len(set(new_elements)) != len(new_elements):  # two base elements merged
        return None
    if exclude.intersection(new_elements):
        return None
    structure = base.copy()
    structure.replace_species({old: Element(new) for old, new in mapping.items()})
    structure.remove_oxidation_states()
    if structure.composition.reduced_formula == base_formula:
        return None
    # {old element: new element}; a mixed-valence element mapped two ways is keyed by ion
    substitutions = {}
    for old, new in mapping.items():
        key = old.symbol if len(by_element[old.symbol]) == 1 else str(old)
        if new != old.symbol or key != old.symbol:
            substitutions[key] = new
    return structure, dict(sorted(substitutions.items()))


def _predictor_draws(
    structure: Structure, *, threshold: float, exclude: frozenset[str]
) -> list[tuple[float, str, Structure, dict[str, str]]] | None:
    """(probability, formula, structure, substitutions) of the ionic-substitution draws,
    or None when the predictor does not apply to the base."""
    decorated = _oxidation_decorated(structure)
    if decorated is None:
        return None
    species = sorted(decorated.composition.elements, key=str)
    predictor = _predictor(threshold)
    start = time.perf_counter()
    try:
        predictions = predictor.list_prediction(species)
    except ValueError as err:  # a species outside the probability model
        log.info("substitution predictor not applicable: %s", err)
        return None
    log.info(
        "substitution predictor: %d predictions for %s in %.2f s (threshold %g)",
        len(predictions),
        " ".join(map(str, species)),
        time.perf_counter() - start,
        threshold,
    )
    counts = decorated.composition
    base_formula = structure.composition.reduced_formula
    draws: dict[str, tuple[float, str, Structure, dict[str, str]]] = {}
    for prediction in predictions:
        # to_this_composition=True (the default): {new species: base species}, with
        # probability prod_i P(new_i | base_i), the direction of Hautier's Substitutor.
        inverse = {old: new for new, old in prediction["substitutions"].items()}
        if set(inverse) != set(species):  # pragma: no cover - defensive
            raise RuntimeError(f"unexpected prediction {prediction}")
        charge = sum(inverse[old].oxi_state * counts[old] for old in species)
        if abs(charge) > _CHARGE_TOL:
            continue
        made = _candidate(
            decorated, {old: new.symbol for old, new in inverse.items()}, exclude, base_formula
        )
        if made is None:
            continue
        probability = float(prediction["probability"])
        formula = made[0].composition.reduced_formula
        if formula not in draws or probability > draws[formula][0]:
            draws[formula] = (probability, formula, *made)
    return sorted(draws.values(), key=lambda d: (-d[0], d[1]))


def _neighbours(symbol: str, max_shift: int) -> list[tuple[int, str]]:
    """(|Δ Mendeleev number|, element) of the allowed elements within ``max_shift`` of
    ``symbol`` on Pettifor's scale, the element itself excluded."""
    number = Element(symbol).mendeleev_no
    out = []
    for element in Element:
        if element.Z > _MAX_Z or element.symbol in _SKIPPED or element.symbol == symbol:
            continue
        shift = abs(int(element.mendeleev_no) - int(number))
        if shift <= max_shift:
            out.append((shift, element.symbol))
    return sorted(out)


def _similarity_draws(
    structure: Structure, *, max_shift: int, exclude: frozenset[str]
) -> list[tuple[float, str, Structure, dict[str, str]]]:
    """(shift, formula, structure, substitutions) of the Mendeleev-neighbour draws, closest
    first."""
    plain = _plain(structure)
    elements = sorted(plain.composition.elements, key=lambda e: e.symbol)
    base_formula = plain.composition.reduced_formula
    options = [[(0, el.symbol), *_neighbours(el.symbol, max_shift)] for el in elements]
    log.info(
        "similarity substitution: Mendeleev neighbours within %d: %s",
        max_shift,
        ", ".join(f"{el.symbol} {len(o) - 1}" for el, o in zip(elements, options, strict=True)),
    )
    draws: dict[str, tuple[float, str, Structure, dict[str, str]]] = {}
    for choice in itertools.product(*options):
        shift = sum(s for s, _ in choice)
        if shift == 0:  # the base itself
            continue
        mapping = {el: new for el, (_, new) in zip(elements, choice, strict=True)}
        made = _candidate(plain, mapping, exclude, base_formula)
        if made is None:
            continue
        formula = made[0].composition.reduced_formula
        if formula not in draws or shift < draws[formula][0]:
            draws[formula] = (float(shift), formula, *made)
    return sorted(draws.values(), key=lambda d: (d[0], d[1]))


def _frame(
    base: str, draws: list[tuple[float, str, Structure, dict[str, str]]], probability: bool
) -> pd.DataFrame:
    rows = []
    for _, formula, structure, substitutions in draws:
        a, b, c = structure.lattice.abc
        rows.append(
            {
                "reason": None,
                "n_sites": len(structure),
                "lattice_a_angstrom": float(a),
                "lattice_b_angstrom": float(b),
                "lattice_c_angstrom": float(c),
                "min_distance_angstrom": float(min_distance(structure)),
                "formula": formula,
                "formula_anonymous": structure.composition.anonymized_formula,
                "structure_json": json.dumps(structure.as_dict()),
                "substitutions_json": json.dumps(substitutions),
            }
        )
    n = len(rows)
    frame = pd.DataFrame(
        {
            "base": pd.Series([base] * n, dtype=object),
            "sample_index": np.arange(n, dtype=np.int32),
            "mode": pd.Series([MODE] * n, dtype=object),
            "decile": np.full(n, -1, dtype=np.int8),
            "t": np.full(n, np.nan),
            "z_distance": np.full(n, np.nan),
        }
    )
    columns: dict[str, Any] = {
        "reason": pd.Series([None] * n, dtype=object),
        "n_sites": np.array([r["n_sites"] for r in rows], dtype=np.int32),
    }
    for name in (
        "lattice_a_angstrom",
        "lattice_b_angstrom",
        "lattice_c_angstrom",
        "min_distance_angstrom",
    ):
        columns[name] = np.array([r[name] for r in rows], dtype=np.float64)
    for name in ("formula", "formula_anonymous", "structure_json"):
        columns[name] = pd.Series([r[name] for r in rows], dtype=object)
    for name in READ_COLUMNS:  # no UNet read
        columns[name] = pd.Series([None] * n, dtype=object)
    columns["probability"] = np.array(
        [d[0] if probability else math.nan for d in draws], dtype=np.float64
    )
    columns["substitutions_json"] = pd.Series([r["substitutions_json"] for r in rows], dtype=object)
    for name, values in columns.items():
        frame[name] = values
    return frame[list(SUBSTITUTION_COLUMNS)]


def substitution_samples(
    base: str,
    structure: Structure,
    *,
    n_max: int,
    threshold: float,
    exclude: Iterable[str] = (),
    max_shift: int = 4,
) -> tuple[pd.DataFrame, str]:
    """Substituted crystals of one base: (frame with :data:`SUBSTITUTION_COLUMNS`, method).

    base: the base's name (the ``base`` column); structure: its pymatgen Structure (no
    oxidation states needed). n_max: most draws kept (the most probable / closest);
    threshold: the ionic predictor's probability threshold; exclude: element symbols no
    draw may hold; max_shift: largest |Δ Mendeleev number| of one element's substitute in
    the similarity method. method is ``"predictor"`` or ``"similarity"`` (module docstring).
    """
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    excluded = frozenset(str(e) for e in exclude)
    formula = structure.composition.reduced_formula
    draws = _predictor_draws(structure, threshold=threshold, exclude=excluded)
    method = "predictor"
    if not draws:
        if draws is not None:
            log.info("substitution predictor kept nothing for %s; using similarity", base)
        method = "similarity"
        draws = _similarity_draws(structure, max_shift=max_shift, exclude=excluded)
    if not draws:
        raise UserError(
            f"base {base} ({formula}) has no ionic substitution above threshold {threshold} "
            f"and no element with an allowed Mendeleev-number neighbour within {max_shift}, "
            f"so no substitution baseline can be made for it."
        )
    found = len(draws)
    draws = draws[:n_max]
    log.info(
        "substitution baseline for %s (%s): %d distinct structures, %d kept, method %s",
        base,
        formula,
        found,
        len(draws),
        method,
    )
    return _frame(base, draws, probability=method == "predictor"), method
