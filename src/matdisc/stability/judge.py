"""Judging one base's pool: group the draws into structures, score them with CHGNet, relax
the most promising, place them against the hull, and check them against the known data.

The judge sees every draw that passed the distance, stoichiometry and validity stages,
whatever its CGCNN Ef (CGCNN is trained on real, mostly stable compounds and cannot tell a
stable crystal from an unphysical one). Draws of one composition and space group are one
structure: a few of its draws get a CHGNet single point and the lowest is kept. The
``max_relax`` structures lowest above the hull by single point, and every candidate the
seed's filter selected, are relaxed; a structure is stable when its relaxed energy lies
at most ``threshold`` above the hull.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matdisc.filters.funnel import item_id
from matdisc.progress import progress
from matdisc.stability.hull import Hulls
from matdisc.stability.potential import Potential
from matdisc.stability.references import RelaxSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class JudgeSettings:
    """The ``stability`` config section: stability threshold (eV/atom), structures relaxed
    per base besides the seed's candidates, draws scored per structure, symmetry
    tolerance (Å), CHGNet batch size, and the relaxation."""

    threshold_ev_per_atom: float
    max_relax: int
    draws_per_structure: int
    symprec_angstrom: float
    batch_size: int
    relax: RelaxSettings

    @classmethod
    def from_section(cls, section: dict[str, Any], seed: int) -> JudgeSettings:
        return cls(
            threshold_ev_per_atom=float(section["threshold_ev_per_atom"]),
            max_relax=int(section["max_relax"]),
            draws_per_structure=int(section["draws_per_structure"]),
            symprec_angstrom=float(section["symprec_angstrom"]),
            batch_size=int(section["batch_size"]),
            relax=RelaxSettings.from_section(section, seed),
        )


def spacegroup(structure: Structure, symprec: float) -> int:
    """International number at ``symprec`` (Å); 1 where spglib finds nothing."""
    try:
        return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
    except Exception:  # spglib gives up on degenerate cells
        return 1


def group_draws(pool: pd.DataFrame, settings: JudgeSettings, seed: int) -> pd.DataFrame:
    """The pool with ``spacegroup_number`` and ``group`` (one per generator, formula and
    space group)
    and ``scored`` (the draws of each group that get a single point: its seed candidate if
    any, then seeded random ones up to ``draws_per_structure``)."""
    frame = pool.reset_index(drop=True).copy()
    structures = [Structure.from_dict(json.loads(s)) for s in frame["structure_json"]]
    frame["spacegroup_number"] = [spacegroup(s, settings.symprec_angstrom) for s in structures]
    keys = ["generator", "formula", "spacegroup_number"]
    frame["group"] = frame.groupby(keys, sort=True).ngroup()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    frame["_order"] = np.argsort(order)
    frame["_candidate"] = frame["candidate_id"].notna()
    ranked = frame.sort_values(["group", "_candidate", "_order"], ascending=[True, False, True])
    chosen = ranked.groupby("group").head(settings.draws_per_structure).index
    frame["scored"] = False
    frame.loc[chosen, "scored"] = True
    return frame.drop(columns=["_order", "_candidate"])


def _nan_last(value: float) -> float:
    return value if np.isfinite(value) else np.inf


def rmsd_angstrom(generated: Structure, relaxed: Structure) -> float:
    """StructureMatcher's RMS displacement generated → relaxed, in Å (NaN without a match)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    result = StructureMatcher(primitive_cell=False).get_rms_dist(generated, relaxed)
    if result is None:
        return float("nan")
    return float(result[0]) * (relaxed.volume / len(relaxed)) ** (1 / 3)


def judge_pool(
    pool: pd.DataFrame,
    *,
    base: str,
    potential: Potential,
    hulls: Hulls,
    known: dict[str, list[tuple[str, Structure]]],
    settings: JudgeSettings,
    seed: int,
    cif_dir: Path,
    mp_hulls: Hulls | None = None,
) -> pd.DataFrame:
    """One row per structure of ``pool`` (schema ``stability``). known: reduced formula →
    (material id, structure) of the run's data, for novelty. mp_hulls: the Materials
    Project's own phases, for ``e_above_hull_mp`` of the relaxed structures."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.cif import CifWriter

    from matdisc.io.schemas import STABILITY

    cif_dir.mkdir(parents=True, exist_ok=True)
    if pool.empty:
        return pd.DataFrame(columns=STABILITY.names)
    frame = group_draws(pool, settings, seed)
    scored = frame[frame["scored"]]
    structures = [Structure.from_dict(json.loads(s)) for s in scored["structure_json"]]
    energies = potential.energies(structures, batch_size=settings.batch_size)
    frame.loc[scored.index, "single_point_ev_per_atom"] = energies
    counts = frame.groupby("group").size()
    best = (
        frame[frame["scored"]]
        .sort_values(["group", "single_point_ev_per_atom", "sample_index"])
        .groupby("group")
        .head(1)
    )
    # a group with a seed candidate keeps that draw (the candidate is what DFT would get)
    candidates = frame[frame["candidate_id"].notna()].groupby("group").head(1)
    best = pd.concat([candidates, best[~best["group"].isin(candidates["group"])]])
    best = best.sort_values("group").reset_index(drop=True)
    log.info(
        "%s: %d draws in the pool, %d distinct structures, %d single points",
        base, len(frame), len(best), len(scored),
    )  # fmt: skip

    rows = []
    for record in best.to_dict("records"):
        hull = hulls.judge(record["formula"], record["single_point_ev_per_atom"])
        rows.append(
            {
                "base": base,
                "generator": record["generator"],
                "structure_id": item_id(base, record["generator"], record["sample_index"]),
                "sample_index": int(record["sample_index"]),
                "n_draws": int(counts[record["group"]]),
                "formula": record["formula"],
                "nsites": int(record["nsites"]),
                "spacegroup_number": int(record["spacegroup_number"]),
                "valid_strict": bool(record["valid_strict"]),
                "valid_cdvae": bool(record["valid_cdvae"]),
                "candidate_id": record["candidate_id"]
                if isinstance(record["candidate_id"], str)
                else None,
                "single_point_ev_per_atom": float(record["single_point_ev_per_atom"]),
                "e_above_hull_single_ev_per_atom": hull.e_above_hull,
                "relaxed": False,
                "energy_ev_per_atom": np.nan,
                "structure_json": record["structure_json"],
            }
        )
    # relax the max_relax lowest above the hull by single point of each generator, and
    # every seed candidate
    chosen: set[int] = set()
    for generator in sorted({row["generator"] for row in rows}):
        order = sorted(
            (i for i, row in enumerate(rows) if row["generator"] == generator),
            key=lambda i: (
                _nan_last(rows[i]["e_above_hull_single_ev_per_atom"]),
                rows[i]["sample_index"],
            ),
        )
        chosen |= set(order[: settings.max_relax])
    chosen |= {i for i, row in enumerate(rows) if row["candidate_id"] is not None}
    for i in progress(sorted(chosen), desc=f"CHGNet relax {base}", unit="structure"):
        row = rows[i]
        generated = Structure.from_dict(json.loads(row["structure_json"]))
        relaxed = potential.relax(
            generated, fmax=settings.relax.fmax, steps=settings.relax.steps,
            rattle_angstrom=settings.relax.rattle_angstrom, seed=settings.relax.seed,
        )  # fmt: skip
        cif = cif_dir / f"{row['structure_id']}.cif"
        CifWriter(relaxed.structure, symprec=settings.symprec_angstrom).write_file(cif)
        row.update(
            relaxed=True,
            energy_ev_per_atom=relaxed.energy_ev_per_atom,
            relax_steps=relaxed.steps,
            relax_converged=relaxed.converged,
            relax_seconds=relaxed.seconds,
            rmsd_angstrom=rmsd_angstrom(generated, relaxed.structure),
            volume_change_pct=100.0 * (relaxed.structure.volume / generated.volume - 1.0),
            spacegroup_relaxed=spacegroup(relaxed.structure, settings.symprec_angstrom),
            magmoms_json=json.dumps([round(m, 3) for m in relaxed.magmoms]),
            cif_path=str(cif),
            relaxed_structure_json=json.dumps(relaxed.structure.as_dict()),
        )
    for row in rows:
        energy = row["energy_ev_per_atom"] if row["relaxed"] else row["single_point_ev_per_atom"]
        hull = hulls.judge(row["formula"], energy)
        row.update(
            n_reference_phases=hull.n_reference_phases,
            empty_subsystems=",".join(hull.empty_subsystems),
            thin_hull=hull.thin,
            hull_reason=hull.reason,
        )
        if row["relaxed"]:
            row["e_above_hull_ev_per_atom"] = hull.e_above_hull
            row["decomposition_json"] = json.dumps(hull.decomposition)
            if mp_hulls is not None:
                mp_hull = mp_hulls.judge(row["formula"], energy)
                row.update(
                    e_above_hull_mp_ev_per_atom=mp_hull.e_above_hull,
                    n_mp_phases=mp_hull.n_reference_phases,
                    mp_hull_reason=mp_hull.reason,
                )
    table = pd.DataFrame(rows).reindex(columns=STABILITY.names)
    e_hull = pd.to_numeric(table["e_above_hull_ev_per_atom"], errors="coerce")
    table["stable"] = (e_hull <= settings.threshold_ev_per_atom).to_numpy()
    matcher = StructureMatcher()
    novel, matched = [], []
    for formula, raw, relaxed_raw in zip(
        table["formula"], table["structure_json"], table["relaxed_structure_json"], strict=True
    ):
        structure = Structure.from_dict(
            json.loads(relaxed_raw if isinstance(relaxed_raw, str) else raw)
        )
        hit = next(
            (mid for mid, other in known.get(formula, []) if matcher.fit(structure, other)), None
        )
        novel.append(hit is None)
        matched.append(hit)
    table["novel"] = novel
    table["matched_material_id"] = matched
    table["composition_known"] = [formula in known for formula in table["formula"]]
    order = table[table["relaxed"]].sort_values(
        ["e_above_hull_ev_per_atom", "n_draws", "sample_index"], ascending=[True, False, True]
    )
    table["rank"] = pd.Series(np.arange(1, len(order) + 1), index=order.index)
    return table
