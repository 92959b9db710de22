"""Is the cubic candidate its composition's lowest-energy polymorph? CHGNet answers.

For one candidate composition, the EBM's K samples and the candidate's own cubic structure
are relaxed with the judge's CHGNet settings (:class:`matdisc.stability.potential.Potential`,
the ``stability`` section: fmax, step limit, seeded rattle). The relaxed samples are grouped
into distinct polymorphs by StructureMatcher (the seed's tolerances), lowest energy first,
and the relaxed cubic structure is compared with the lowest of them: its energy above the
lowest polymorph found (0 when it is the lowest) says whether the VAE's cubic structure
survives against the structures the EBM proposes for the same composition.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from pymatgen.core import Structure

from matdisc.stability.references import RelaxSettings

log = logging.getLogger(__name__)

#: Energies closer than this (eV/atom) count as the same minimum.
SAME_ENERGY_EV_PER_ATOM = 0.001


def _spacegroup(structure: Structure, symprec: float) -> int | None:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
    except Exception as exc:  # spglib raises assorted errors on odd cells
        log.warning("no space group for a relaxed structure: %s", exc)
        return None


def polymorph_ids(structures: Sequence[Structure], energies: np.ndarray, matcher: Any) -> list[int]:
    """Group ``structures`` into polymorphs: id 0 is the group of the lowest energy, 1 the
    next distinct structure up, and so on. A structure joins the first (lowest) group whose
    representative it matches."""
    ids = [-1] * len(structures)
    representatives: list[Structure] = []
    for i in np.argsort(energies, kind="stable"):
        for group, rep in enumerate(representatives):
            if matcher.fit(structures[i], rep):
                ids[i] = group
                break
        else:
            ids[i] = len(representatives)
            representatives.append(structures[i])
    return ids


def judge_candidate(
    candidate: Structure,
    samples: Sequence[Structure],
    potential: Any,
    settings: RelaxSettings,
    matcher: Any,
    *,
    symprec: float,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Relax the candidate and its samples; return one dict per sample and one for the
    candidate (columns of the ``csp_predictions`` table)."""

    def relax(structure: Structure) -> Any:
        return potential.relax(
            structure,
            fmax=settings.fmax,
            steps=settings.steps,
            rattle_angstrom=settings.rattle_angstrom,
            seed=settings.seed,
        )

    cubic = relax(candidate)
    relaxed = [relax(s) for s in samples]
    energies = np.array([r.energy_ev_per_atom for r in relaxed], dtype=np.float64)
    ids = polymorph_ids([r.structure for r in relaxed], energies, matcher)
    per_sample = [
        {
            "relaxed_structure_json": r.structure.to_json(),
            "chgnet_energy_ev_per_atom": r.energy_ev_per_atom,
            "relaxed_spacegroup_number": _spacegroup(r.structure, symprec),
            "relax_converged": r.converged,
            "polymorph": ids[j],
            "matches_relaxed_candidate": bool(matcher.fit(r.structure, cubic.structure)),
        }
        for j, r in enumerate(relaxed)
    ]
    above = max(0.0, cubic.energy_ev_per_atom - float(energies.min())) if len(energies) else 0.0
    is_lowest = above <= SAME_ENERGY_EV_PER_ATOM or any(
        s["matches_relaxed_candidate"] and s["polymorph"] == 0 for s in per_sample
    )
    per_candidate = {
        "candidate_chgnet_energy_ev_per_atom": cubic.energy_ev_per_atom,
        "candidate_relaxed_spacegroup_number": _spacegroup(cubic.structure, symprec),
        "candidate_above_lowest_ev_per_atom": 0.0 if is_lowest else above,
        "candidate_is_lowest": bool(is_lowest),
        "n_polymorphs": len(set(ids)),
    }
    return per_sample, per_candidate
