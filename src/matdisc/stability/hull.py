"""Energy above the convex hull, on CHGNet's energy scale, with the hull's coverage.

A hull built from few phases flatters every candidate (the snapshot's whole K–F system is
KF alone), so each result also says how many reference phases the hull had and which
sub-systems (binaries, ternaries …) had none.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from matdisc.stability.references import chemical_system

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HullResult:
    """e_above_hull (eV/atom, NaN with ``reason`` when no hull can be built), the
    decomposition (formula → fraction), the number of reference phases and the empty
    sub-systems (e.g. ``Gd-Pd``)."""

    e_above_hull: float
    decomposition: dict[str, float]
    n_reference_phases: int
    empty_subsystems: tuple[str, ...]
    reason: str | None

    @property
    def thin(self) -> bool:
        """A binary sub-system (for a binary, its own system) has no phase: the hull there
        is the straight line between two phases, and flatters whatever lies below it."""
        return any(sub.count("-") == 1 for sub in self.empty_subsystems)


class Hulls:
    """Phase diagrams of the reference phases, one per chemical system, built on demand."""

    def __init__(self, references: pd.DataFrame, missing: dict[str, str]) -> None:
        """references: rows with ``formula`` and ``energy_ev_per_atom`` (schema
        ``references``). missing: element → why it has no reference."""
        self._entries = [
            (
                frozenset(chemical_system(f)),
                PDEntry(Composition(f), e * Composition(f).num_atoms, name=f),
            )
            for f, e in zip(references["formula"], references["energy_ev_per_atom"], strict=True)
            if np.isfinite(e)
        ]
        self._missing = dict(missing)
        self._diagrams: dict[frozenset[str], PhaseDiagram | str] = {}

    def entries(self, system: Iterable[str]) -> list[PDEntry]:
        system = frozenset(system)
        return [entry for elements, entry in self._entries if elements <= system]

    def _diagram(self, system: frozenset[str]) -> PhaseDiagram | str:
        if system not in self._diagrams:
            lacking = sorted(e for e in system if e in self._missing)
            if lacking:
                self._diagrams[system] = "; ".join(self._missing[e] for e in lacking)
            else:
                try:
                    self._diagrams[system] = PhaseDiagram(self.entries(system))
                except ValueError as exc:  # a terminal element without any phase
                    self._diagrams[system] = str(exc)
        return self._diagrams[system]

    def judge(self, formula: str, energy_ev_per_atom: float) -> HullResult:
        """Where a phase of ``formula`` at ``energy_ev_per_atom`` lies against the hull."""
        system = frozenset(chemical_system(formula))
        entries = self.entries(system)
        covered = {chemical_system(e.composition.reduced_formula) for e in entries}
        empty = tuple(
            "-".join(sub)
            for size in range(2, len(system) + 1)
            for sub in itertools.combinations(sorted(system), size)
            if sub not in covered
        )
        diagram = self._diagram(system)
        if isinstance(diagram, str) or not np.isfinite(energy_ev_per_atom):
            reason = diagram if isinstance(diagram, str) else "no energy"
            return HullResult(np.nan, {}, len(entries), empty, reason)
        composition = Composition(formula)
        entry = PDEntry(composition, energy_ev_per_atom * composition.num_atoms)
        decomposition, e_hull = diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)
        fractions = {
            d.composition.reduced_formula: round(float(f), 4) for d, f in decomposition.items()
        }
        return HullResult(float(e_hull), fractions, len(entries), empty, None)
