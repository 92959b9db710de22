"""DFT stability of the candidates: the competing phases on the same footing.

The phases that compete with a candidate are those on the judge's CHGNet hull of its
chemical system (``results/stability/references.parquet``): the elements and the stable
compounds its decomposition can reach. They get inputs with the candidate's settings
(``qe.hull_phases``), once per phase; after pw.x has relaxed them all, each candidate gets a
DFT formation energy and a DFT energy above the hull of those phases.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Structure

from matdisc.stability.references import chemical_system

log = logging.getLogger(__name__)


def _elements(formula: str) -> frozenset[str]:
    return frozenset(chemical_system(formula))


def hull_phases(references: pd.DataFrame, systems: Iterable[str]) -> pd.DataFrame:
    """The reference rows on the CHGNet hull of any of the chemical systems of the formulas
    ``systems`` (schema ``references``), each once."""
    entries = [
        (_elements(f), PDEntry(Composition(f), e * Composition(f).num_atoms, attribute=rid))
        for rid, f, e in zip(
            references["reference_id"], references["formula"], references["energy_ev_per_atom"],
            strict=True,
        )
        if np.isfinite(e)
    ]  # fmt: skip
    chosen: set[str] = set()
    for system in {_elements(f) for f in systems}:
        inside = [entry for elements, entry in entries if elements <= system]
        try:
            diagram = PhaseDiagram(inside)
        except ValueError as exc:  # an element without a phase: no hull to compete with
            log.warning("no hull phases for %s: %s", "-".join(sorted(system)), exc)
            continue
        chosen |= {entry.attribute for entry in diagram.stable_entries}
    return references[references["reference_id"].isin(chosen)].reset_index(drop=True)


def dft_stability(relaxed: pd.DataFrame) -> pd.DataFrame:
    """``relaxed`` (schema ``qe_relaxed``) with each candidate's DFT formation energy and
    energy above the hull of the converged hull phases of its chemical system."""
    out = relaxed.copy()
    phases = out[(out["kind"] == "hull_phase") & (out["status"] == "converged")]
    entries = []
    for formula, raw, energy in zip(
        phases["formula"], phases["relaxed_structure_json"], phases["final_energy_ev_per_atom"],
        strict=True,
    ):  # fmt: skip
        composition = Structure.from_dict(json.loads(raw)).composition
        entries.append((_elements(formula), PDEntry(composition, energy * composition.num_atoms)))
    e_form, e_hull, reasons = [], [], []
    for kind, formula, status, energy in zip(
        out["kind"], out["formula"], out["status"], out["final_energy_ev_per_atom"], strict=True
    ):
        value, distance, reason = np.nan, np.nan, None
        system = _elements(str(formula))
        elemental = {next(iter(e)) for e, _ in entries if len(e) == 1 and e <= system}
        missing = sorted(system - elemental)
        if kind != "candidate":
            pass
        elif status != "converged":
            reason = f"the candidate's run is {status}"
        elif missing:
            reason = f"no converged DFT run of the element(s) {', '.join(missing)} (qe.hull_phases)"
        else:
            composition = Composition(str(formula))
            entry = PDEntry(composition, float(energy) * composition.num_atoms)
            diagram = PhaseDiagram([entry for e, entry in entries if e <= system])
            _, distance = diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)
            value = diagram.get_form_energy_per_atom(entry)
        e_form.append(float(value))
        e_hull.append(float(distance))
        reasons.append(reason)
    out["dft_e_form_ev_per_atom"] = e_form
    out["dft_e_above_hull_ev_per_atom"] = e_hull
    out["dft_hull_reason"] = pd.Series(reasons, index=out.index, dtype=object)
    return out
