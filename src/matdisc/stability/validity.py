"""Composition validity: charge neutrality with common oxidation states (SMACT).

Two rules, both computed for every composition, one of them gating the filter
(``filter.composition_validity``):

- ``cdvae``: CDVAE's criterion, SMACT's ``smact_validity`` (charge neutrality and the
  Pauling electronegativity test; compositions of metals only pass) with the oxidation
  states CDVAE used (SMACT's 2014 set, ``smact14``), so the rate compares with published
  validity rates. It is lenient: any listed oxidation state counts, and GdMgO3, CsGdO3
  and CsNdF3 pass.
- ``strict``: the same test with pymatgen's common oxidation states (``pymatgen_sp``):
  NaCl, CaTiO3, KMgF3 and LaMnO3 pass; GdMgO3, CsGdO3 and SmMgO3 fail. It wrongly rejects
  compounds whose anion is not in its common state, such as the peroxide CaO2 (O⁻).
- ``none``: every composition passes (the seed had no such stage).
"""

from __future__ import annotations

import warnings
from functools import cache

from pymatgen.core import Composition

RULES: tuple[str, ...] = ("strict", "cdvae", "none")
#: SMACT oxidation-state set per rule.
OXIDATION_SETS: dict[str, str] = {"strict": "pymatgen_sp", "cdvae": "smact14"}


@cache
def _smact_valid(formula: str, oxidation_set: str) -> bool:
    from smact.screening import smact_validity

    with warnings.catch_warnings():  # SMACT warns about elements it has no data for
        warnings.simplefilter("ignore")
        return bool(
            smact_validity(
                Composition(formula), include_alloys=True, oxidation_states_set=oxidation_set
            )
        )


def is_valid(formula: str, rule: str) -> bool:
    """Does the composition ``formula`` pass ``rule`` (strict, cdvae or none)?"""
    if rule == "none":
        return True
    if rule not in OXIDATION_SETS:
        raise ValueError(f"unknown composition validity rule {rule!r}; use one of {RULES}")
    return _smact_valid(Composition(formula).reduced_formula, OXIDATION_SETS[rule])


def is_strict_valid(formula: str) -> bool:
    """:func:`is_valid` under the ``strict`` rule (the species read-back's rule)."""
    return is_valid(formula, "strict")
