"""Stage entry points: ``train-ebm``, ``predict-structures`` and ``evaluate-csp`` (the ``csp``
config section)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from matdisc.csp.energy import ContinuousEnergy, CrystalBatch
from matdisc.csp.sampler import Schedule
from matdisc.csp.train import EBMSettings, sample_structures
from matdisc.csp.train import train_ebm as fit_ebm
from matdisc.errors import UserError
from matdisc.graphs import CrystalArrays, parse_structures
from matdisc.io import read_table, write_table
from matdisc.memory import retain_freed_memory
from matdisc.progress import progress
from matdisc.stage import StageCall
from matdisc.train import load_model, save_model, seed_everything

log = logging.getLogger(__name__)

MODEL_KEYS = (
    "node_features",
    "edge_features",
    "n_conv",
    "mlp_layers",
    "n_gaussians",
    "width_factor",
    "cutoff_factor",
    "reference_density",
)

#: The seed's CSP metric.
MATCHER_ARGS = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}


def select_structures(table: pd.DataFrame, section: dict[str, Any], seed: int = 0) -> pd.DataFrame:
    """Rows of the structures table the EBM is trained / evaluated on (config filters).

    With ``section["split"]`` = [train, val, test] fractions, the chosen rows get a fresh
    split (column ``split``), drawn with ``seed`` and listed in random order (so a test
    subset of the first N rows is a random one); otherwise they keep the run's split.
    """
    keep = table["nsites"] <= int(section["max_sites"])
    if section.get("structure_class"):
        keep &= table["structure_class"] == section["structure_class"]
    if section.get("crystal_system"):
        keep &= table["crystal_system"] == section["crystal_system"]
    chosen = table[keep]
    log.info(
        "ContinuouSP data: %d of %d structures (structure_class=%s, crystal_system=%s, "
        "nsites <= %d); %d skipped by these filters",
        len(chosen),
        len(table),
        section.get("structure_class"),
        section.get("crystal_system"),
        int(section["max_sites"]),
        len(table) - len(chosen),
    )
    if section.get("split") is not None:
        chosen = _resplit(chosen, [float(f) for f in section["split"]], seed)
    if chosen.empty:
        raise UserError(
            "no structure passes the csp filters (structure_class, crystal_system, max_sites); "
            "relax them in the csp section of config.yaml."
        )
    return chosen


def _resplit(frame: pd.DataFrame, fractions: list[float], seed: int) -> pd.DataFrame:
    if sum(fractions) <= 0:
        raise UserError(f"csp.split {fractions} must have a positive sum, e.g. [0.6, 0.2, 0.2].")
    shares = np.asarray(fractions) / sum(fractions)
    order = np.random.default_rng(seed).permutation(len(frame))
    bounds = np.round(np.cumsum(shares) * len(frame)).astype(int)
    labels = np.empty(len(frame), dtype=object)
    for name, lo, hi in zip(("train", "val", "test"), [0, *bounds[:2]], bounds, strict=True):
        labels[order[lo:hi]] = name
    out = frame.assign(split=labels).iloc[order]
    log.info(
        "csp.split %s (seed %d): %s",
        fractions,
        seed,
        ", ".join(f"{n} {int((out['split'] == n).sum())}" for n in ("train", "val", "test")),
    )
    return out


def _arrays(frame: pd.DataFrame) -> tuple[CrystalArrays, pd.DataFrame]:
    arrays, ok, bad = parse_structures(frame["structure_json"].tolist())
    for i, reason in list(bad.items())[:5]:
        log.warning("skipped %s: %s", frame["material_id"].iloc[i], reason)
    if bad:
        log.warning("%d structures skipped (unreadable or disordered)", len(bad))
    return arrays, frame.iloc[ok]


def _device_threads(call: StageCall) -> None:
    torch.set_num_threads(max(call.threads, 1))
    retain_freed_memory()  # MALA allocates the same large tensors every step


def train_ebm(call: StageCall) -> None:
    """structures.parquet (train split) -> results/models/ebm.pt + results/metrics/ebm.parquet."""
    section = call.section("csp")
    _device_threads(call)
    seed_everything(call.seed)
    table = select_structures(
        read_table(call.input("structures"), "structures"), section, seed=call.seed
    )
    train = table[table["split"] == "train"]
    arrays, train = _arrays(train)
    model = ContinuousEnergy(**{k: section[k] for k in MODEL_KEYS})
    settings = EBMSettings.from_section(section)
    log.info("training the ContinuouSP EBM on %d crystals: %s", len(train), model.model_args)
    model_path = call.output("model")
    # Not a Snakemake output: a killed job keeps it and the re-run continues from it.
    resume = Path(str(model_path) + ".resume")
    history = fit_ebm(model, arrays, settings, seed=call.seed, resume_path=resume)
    save_model(model_path, model, extra={"csp": section, "n_train": len(train)})
    resume.unlink(missing_ok=True)
    write_table(
        pd.DataFrame(history),
        call.output("metrics"),
        "ebm_metrics",
        metadata={"seed": call.seed, "csp": section},
    )


def _load_ebm(path: Path) -> ContinuousEnergy:
    if not Path(path).is_file():
        raise UserError(f"{path} does not exist; run the train_ebm rule (matdisc train-ebm) first.")
    model, _ = load_model(path, device="cpu")
    return model


def evaluate_csp(call: StageCall) -> None:
    """The seed's CSP task on the test split: K samples per test crystal; match rate, RMSE."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    section = call.section("csp")
    _device_threads(call)
    table = select_structures(
        read_table(call.input("structures"), "structures"), section, seed=call.seed
    )
    test = table[table["split"] == "test"]
    if section.get("eval_limit"):
        test = test.iloc[: int(section["eval_limit"])]
    arrays, test = _arrays(test)
    if not len(test):
        raise UserError("the test split holds no structure for the csp filters; relax them.")
    model = _load_ebm(call.input("ebm"))
    k = int(section["samples"])
    t0 = time.perf_counter()
    batch, energy = sample_structures(
        model, arrays.numbers, k, Schedule.from_section(section, "eval_steps"), seed=call.seed
    )
    sampling_s = time.perf_counter() - t0
    samples = batch.structures()
    truths = CrystalBatch.from_arrays(arrays.lattices, arrays.frac_coords, arrays.numbers)
    truths = truths.structures()
    matcher = StructureMatcher(**MATCHER_ARGS)
    rows = []
    pairs = zip(truths, test["material_id"], strict=True)
    for i, (truth, mid) in enumerate(progress(pairs, total=len(truths), desc="matching")):
        rms = [_rms(matcher, s, truth, mid) for s in samples[i * k : (i + 1) * k]]
        found = [r for r in rms if r is not None]
        energies = energy[i * k : (i + 1) * k]
        lowest = int(torch.argmin(energies))
        rows.append(
            {
                "material_id": mid,
                "formula": truth.composition.reduced_formula,
                "nsites": len(truth),
                "n_samples": k,
                "n_matched": len(found),
                "matched": bool(found),
                "rms_dist": min(found) if found else None,
                # one sample per composition (K = 1): the first chain's
                "matched_k1": rms[0] is not None,
                "rms_dist_k1": rms[0],
                # the sample the learned energy ranks lowest
                "matched_lowest_energy": rms[lowest] is not None,
                "rms_dist_lowest_energy": rms[lowest],
                "best_energy": float(energies[lowest]),
            }
        )
    frame = pd.DataFrame(rows)
    figures = {
        "match_rate": float(frame["matched"].mean()),
        "rmse": _mean_or_none(frame["rms_dist"]),
        "match_rate_k1": float(frame["matched_k1"].mean()),
        "rmse_k1": _mean_or_none(frame["rms_dist_k1"]),
        "match_rate_lowest_energy": float(frame["matched_lowest_energy"].mean()),
        "rmse_lowest_energy": _mean_or_none(frame["rms_dist_lowest_energy"]),
    }
    seconds = time.perf_counter() - t0
    log.info(
        "CSP on %d test crystals: K = %d match rate %.2f%%, RMSE %s; K = 1 %.2f%%, RMSE %s; "
        "%.0f s (%.0f s sampling)",
        len(frame),
        k,
        100 * figures["match_rate"],
        figures["rmse"],
        100 * figures["match_rate_k1"],
        figures["rmse_k1"],
        seconds,
        sampling_s,
    )
    write_table(
        frame,
        call.output("metrics"),
        "csp_metrics",
        metadata={
            "seed": call.seed,
            "csp": section,
            **figures,
            "matcher": MATCHER_ARGS,
            "n_test": len(frame),
            "n_train": int((table["split"] == "train").sum()),
            "eval_seconds": seconds,
            "sampling_seconds": sampling_s,
        },
    )


def _rms(matcher: Any, sample: Any, truth: Any, material_id: str) -> float | None:
    """StructureMatcher's RMS distance of a sample to the truth; None when they do not match."""
    try:
        r = matcher.get_rms_dist(sample, truth)
    except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
        log.warning("StructureMatcher failed on a sample of %s: %s", material_id, exc)
        return None
    return None if r is None else float(r[0])


def _mean_or_none(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def predict_structures(call: StageCall) -> None:
    """K EBM samples per candidate composition, ranked by EBM and CGCNN formation energy;
    with ``csp.relax_samples`` also relaxed by CHGNet, grouped into polymorphs, and the
    candidate's cubic structure placed against the lowest of them
    (:mod:`matdisc.csp.polymorphs`)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from matdisc.screen.predict import PropertyPredictor

    section = call.section("csp")
    _device_threads(call)
    base = call.wildcard("base")
    path = call.input("candidates")
    candidates = read_table(path)
    missing = [
        c
        for c in ("candidate_id", "base", "formula", "structure_json", "e_form_ev_per_atom")
        if c not in candidates.columns
    ]
    if missing:
        raise UserError(f"{path} lacks the columns {missing}; re-run the filter_candidates rule.")
    model = _load_ebm(call.input("ebm"))
    k = int(section["samples"])
    cubic = [Structure.from_dict(json.loads(s)) for s in candidates["structure_json"]]
    species = [np.asarray(s.atomic_numbers, dtype=np.int64) for s in cubic]
    rows: list[dict] = []
    chgnet = None  # the CHGNet model's info, when it relaxed the samples
    if species:
        batch, energy = sample_structures(
            model, species, k, Schedule.from_section(section, "eval_steps"), seed=call.seed
        )
        samples = batch.structures()
        predictor = PropertyPredictor(call.input("cgcnn"), device="cpu")
        e_form = predictor.predict(samples, ["e_form_ev_per_atom"])["e_form_ev_per_atom"]
        matcher = StructureMatcher(**MATCHER_ARGS)
        judged, chgnet = _judge_polymorphs(call, cubic, samples, k, matcher)
        for i, cand in enumerate(candidates.itertuples(index=False)):
            for j in range(k):
                s = samples[i * k + j]
                try:
                    sga = SpacegroupAnalyzer(s, symprec=0.1)
                    sg, system = int(sga.get_space_group_number()), sga.get_crystal_system()
                except Exception as exc:  # spglib raises assorted errors on odd cells
                    log.warning("no space group for a sample of %s: %s", cand.candidate_id, exc)
                    sg, system = None, None
                rows.append(
                    {
                        "candidate_id": cand.candidate_id,
                        "base": base,
                        "formula": cand.formula,
                        "sample": j,
                        "structure_json": json.dumps(s.as_dict()),
                        "nsites": len(s),
                        "spacegroup_number": sg,
                        "crystal_system": system,
                        "ebm_energy": float(energy[i * k + j]),
                        "pred_e_form_ev_per_atom": float(e_form.iloc[i * k + j]),
                        "candidate_e_form_ev_per_atom": cand.e_form_ev_per_atom,
                        "matches_candidate": bool(matcher.fit(s, cubic[i])),
                        **(judged[i][0][j] if judged else {}),
                        **(judged[i][1] if judged else {}),
                    }
                )
    frame = pd.DataFrame(rows, columns=[f.name for f in _schema("csp_predictions")])
    if rows:
        frame["rank_ebm"] = frame.groupby("candidate_id")["ebm_energy"].rank(method="first")
        frame["rank_e_form"] = frame.groupby("candidate_id")["pred_e_form_ev_per_atom"].rank(
            method="first"
        )
    else:
        log.warning("no candidates for %s; writing an empty table", base)
    metadata: dict[str, Any] = {"seed": call.seed, "csp": section}
    if chgnet is not None:
        metadata |= {"stability": call.section("stability"), "potential": asdict(chgnet)}
    write_table(frame, call.output("csp"), "csp_predictions", metadata=metadata)


def _judge_polymorphs(
    call: StageCall, cubic: list[Any], samples: list[Any], k: int, matcher: Any
) -> tuple[list[tuple[list[dict], dict]], Any]:
    """CHGNet on every candidate and its k samples (``csp.relax_samples``): per candidate,
    the sample columns and the candidate columns of :mod:`matdisc.csp.polymorphs`; and the
    model's :class:`~matdisc.stability.potential.PotentialInfo` (None when off)."""
    from matdisc.csp.polymorphs import judge_candidate
    from matdisc.progress import progress
    from matdisc.stability.references import RelaxSettings
    from matdisc.stability.stage import load_potential

    if not call.section("csp")["relax_samples"]:
        return [], None
    stability = call.section("stability")
    settings = RelaxSettings.from_section(stability, call.seed)
    potential = load_potential(call)
    judged = []
    for i in progress(range(len(cubic)), desc="CHGNet polymorphs"):
        per_sample, per_candidate = judge_candidate(
            cubic[i],
            samples[i * k : (i + 1) * k],
            potential,
            settings,
            matcher,
            symprec=float(stability["symprec_angstrom"]),
        )
        log.info(
            "%s: %d samples relaxed into %d polymorphs; the cubic structure is %s",
            cubic[i].composition.reduced_formula,
            k,
            per_candidate["n_polymorphs"],
            "the lowest found"
            if per_candidate["candidate_is_lowest"]
            else f"{per_candidate['candidate_above_lowest_ev_per_atom']:.3f} eV/atom above the "
            "lowest found",
        )
        judged.append((per_sample, per_candidate))
    return judged, potential.info


def _schema(name: str):
    from matdisc.io.schemas import SCHEMAS

    return SCHEMAS[name]
