"""Stage entry points: ``filter-candidates`` (one base compound) and ``collect-funnel``.

``filter-candidates`` (rule ``filter_candidates``) reads ``results/samples/{base}.parquet``
(the VAE's draws) and, with ``substitution`` in ``sample.generators``,
``results/substitution/{base}.parquet`` (the ion-exchange baseline's structures). Each
generator's structures go through the same stages separately and the outputs carry a
``generator`` column. It writes the candidates (``results/candidates/{base}.parquet``, schema ``candidates``),
one CIF per candidate (``results/candidates/{base}/{candidate_id}.cif``), the base's
funnel (``results/funnel/{base}.parquet``) and the judge's pool of draws that passed the
composition-validity stage (``results/pool/{base}.parquet``). ``collect-funnel`` joins the funnels of all
bases and appends their average (``base = "average"``): the seed's Table 2.

"Not in the training set" means the VAE/UNet training set, as in the seed: the reduced
formulas of the voxel store's train split (the structures the generator learnt from).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from matdisc.data.bases import base_row
from matdisc.errors import UserError
from matdisc.filters.funnel import (
    FilterSettings,
    average_rows,
    funnel_rows,
    item_id,
    judge_rows,
    run_filter,
)
from matdisc.io import read_table, write_table
from matdisc.io.schemas import READ_COLUMNS, SAMPLES
from matdisc.stage import StageCall

log = logging.getLogger(__name__)

#: The columns of a generator's table the filter reads: the samples table's, less those
#: the filter computes itself.
SAMPLE_INPUT_COLUMNS = tuple(
    name
    for name in SAMPLES.names
    if name not in ("min_distance_angstrom", "formula", "formula_anonymous")
    and name not in READ_COLUMNS
)


def training_set(store: Any, with_structures: bool) -> tuple[set[str], dict[str, list[str]]]:
    """Reduced formulas of the store's train split (and, if asked, their structures)."""
    train = np.flatnonzero(store.split == "train")
    formulas = {str(f) for f in store.formula[train]}
    structures: dict[str, list[str]] = {}
    if with_structures:
        for i in train:
            structures.setdefault(str(store.formula[i]), []).append(
                json.dumps(store.structure(int(i)).as_dict())
            )
    return formulas, structures


def base_formation_energy(section: dict[str, Any], row: pd.Series, predictor: Any) -> float:
    """The Ef (eV/atom) the window and the ranking use: the base's Materials Project value
    (``ef_reference: known``) or the CGCNN prediction for its structure (``predicted``);
    a base without a known value falls back to the prediction."""
    known = float(row["e_form_ev_per_atom"]) if pd.notna(row["e_form_ev_per_atom"]) else np.nan
    if section["ef_reference"] == "known" and np.isfinite(known):
        return known
    predicted = float(predictor([row["structure_json"]])[0])
    if not np.isfinite(predicted):
        raise UserError(
            f"base compound '{row['base']}' has no formation energy (known or predicted) to "
            "centre the Ef window on; choose another base compound."
        )
    if section["ef_reference"] == "known":
        log.info("%s: no known Ef; using the CGCNN prediction %.3f eV/atom", row["base"], predicted)
    return predicted


def write_cifs(candidates: pd.DataFrame, directory: Path, symprec: float) -> None:
    """One CIF per candidate in ``directory`` (replaced as a whole, atomically), written in
    its space group found at ``symprec`` (Å); where spglib finds none, as P1 (counted)."""
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    as_p1 = []
    for cid, raw in zip(candidates["candidate_id"], candidates["structure_json"], strict=True):
        structure = Structure.from_dict(json.loads(raw))
        try:
            writer = CifWriter(structure, symprec=symprec)
        except Exception:  # spglib gives up on a degenerate cell: keep it as it is
            writer = CifWriter(structure)
            as_p1.append(cid)
        writer.write_file(tmp / f"{cid}.cif")
    if as_p1:
        log.warning("%d CIFs written in P1 (no space group at %.2f Å): %s",
                    len(as_p1), symprec, ", ".join(as_p1))  # fmt: skip
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def pool_frame(
    base: str, generator: str, pool: pd.DataFrame, candidates: pd.DataFrame
) -> pd.DataFrame:
    """The judge's pool (schema ``pool``): the draws that passed composition validity, each
    with its candidate id where the seed's filter selected it."""
    from matdisc.io.schemas import POOL

    ids = dict(zip(candidates["sample_index"], candidates["candidate_id"], strict=True))
    frame = pool.assign(
        base=base,
        generator=generator,
        nsites=pool["n_sites"].astype(np.int32),
        candidate_id=[ids.get(i) for i in pool["sample_index"]],
    )
    return frame[POOL.names]


def candidates_frame(
    base: str, generator: str, selected: pd.DataFrame, base_ef: float, cif_dir: Path
) -> pd.DataFrame:
    """The candidates table (schema ``candidates``) from the filter's selected rows."""
    frame = selected.copy()
    frame["candidate_id"] = [item_id(base, generator, i) for i in frame["sample_index"]]
    frame["base"] = base
    frame["generator"] = generator
    frame["nsites"] = frame["n_sites"].astype(np.int32)
    frame["base_e_form_ev_per_atom"] = base_ef
    frame["cif_path"] = [str(cif_dir / f"{cid}.cif") for cid in frame["candidate_id"]]
    from matdisc.io.schemas import CANDIDATES

    return frame[CANDIDATES.names]


def filter_candidates(call: StageCall) -> None:
    """The five-stage filter of one base compound -> candidates, CIFs, funnel."""
    from matdisc.screen.predict import PropertyPredictor
    from matdisc.voxel.store import open_store

    section = call.section("filter")
    settings = FilterSettings.from_section(section)
    base = call.wildcard("base")
    row = base_row(read_table(call.input("bases"), "base_compounds"), base)
    samples = read_table(call.input("samples"), "samples")
    if (samples["base"] != base).any():
        raise UserError(
            f"{call.input('samples')} holds samples of another base compound; re-run the "
            f"sample rule for {base}."
        )
    store = open_store(call.input("voxels"))
    formulas, structures = training_set(store, settings.structure_matcher)
    predictor = PropertyPredictor(
        call.input("cgcnn"), device=call.section("train")["device"], num_threads=call.threads
    )

    def predict_ef(items: list[str]) -> np.ndarray:
        return predictor.predict(items, ["e_form_ev_per_atom"])["e_form_ev_per_atom"].to_numpy()

    base_ef = base_formation_energy(section, row, predict_ef)
    log.info(
        "%s: base %s (%s), Ef %.3f eV/atom; %d training compositions",
        base, row["formula"], row["formula_anonymous"], base_ef, len(formulas),
    )  # fmt: skip
    tables = {"vae": samples}
    if "substitution" in call.inputs:
        tables["substitution"] = read_table(call.input("substitution"), "substitutions")
    cif_dir = call.output("cifs")
    candidates, funnels, pools, counts = [], [], [], {}
    for generator, table in tables.items():
        log.info("%s, %s: %d structures", base, generator, len(table))
        result = run_filter(
            table[list(SAMPLE_INPUT_COLUMNS)],
            base_formula_anonymous=str(row["formula_anonymous"]),
            base_ef=base_ef,
            training_formulas=formulas,
            predict_ef=predict_ef,
            settings=settings,
            training_structures=structures,
            threads=call.threads,
            address=call.section("dask")["scheduler_address"],
        )
        log.info("%s, %s: funnel %s", base, generator, result.counts)
        chosen = candidates_frame(base, generator, result.candidates, base_ef, cif_dir)
        candidates.append(chosen)
        funnels.append(funnel_rows(base, generator, result.counts))
        pools.append(pool_frame(base, generator, result.pool, chosen))
        counts[generator] = result.counts
    frame = pd.concat(candidates, ignore_index=True)
    write_cifs(frame, cif_dir, float(section["cif_symprec_angstrom"]))
    meta = {"base_e_form_ev_per_atom": base_ef, "filter": section, "counts": counts}
    write_table(frame, call.output("candidates"), "candidates", metadata=meta)
    write_table(
        pd.concat(funnels, ignore_index=True), call.output("funnel"), "funnel", metadata=meta
    )
    write_table(pd.concat(pools, ignore_index=True), call.output("pool"), "pool", metadata=meta)


def collect_funnel(call: StageCall) -> None:
    """Funnels of all bases (``--input BASE=PATH``) + their average -> funnel.parquet."""
    if not call.inputs:
        raise UserError("collect-funnel needs one --input BASE=PATH per base compound.")
    # with stability.run, the judge's rows follow the seed's
    sun = read_table(call.inputs["sun"], "sun") if "sun" in call.inputs else None
    frames = []
    for name, path in call.inputs.items():
        if name != "sun":
            frame = read_table(path, "funnel")
            frames.append(frame if sun is None else pd.concat([frame, judge_rows(frame, sun)]))
    funnels = pd.concat(frames, ignore_index=True)
    out = pd.concat([funnels, average_rows(funnels)], ignore_index=True)
    log.info("funnel of %d bases:\n%s", len(frames),
             out[out["base"] == "average"][["stage", "count", "cumulative_pct"]].to_string())  # fmt: skip
    bases = [name for name in call.inputs if name != "sun"]
    write_table(out, call.output("funnel"), "funnel", metadata={"bases": bases})
