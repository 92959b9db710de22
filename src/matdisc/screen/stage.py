"""Stage entry points: ``train-cgcnn``, ``screen-candidates`` and ``collect-screening``."""

from __future__ import annotations

import logging

import pandas as pd

from matdisc.errors import UserError
from matdisc.io import read_table, write_table
from matdisc.io.schemas import PROPERTY_COLUMNS
from matdisc.screen.predict import PropertyPredictor
from matdisc.screen.train import CGCNNSettings, train_all
from matdisc.stage import StageCall

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ("candidate_id", "base", "generator", "formula", "structure_json")


def train_cgcnn(call: StageCall) -> None:
    """structures.parquet -> one CGCNN per property, results/metrics/cgcnn.parquet and the
    parity plots (output ``parity``, a folder)."""
    settings = CGCNNSettings.from_section(call.section("cgcnn"))
    train = call.section("train")
    table = read_table(call.input("structures"), "structures")
    metrics_path = call.output("metrics")
    frame = train_all(
        table,
        settings=settings,
        model_dir=call.output("models"),
        metrics_dir=call.output("parity"),
        device=train["device"],
        # auto leaves the graph models in fp32: their small scatter sums gain nothing from
        # bf16 and lose precision; only an explicit true turns it on.
        bf16=train["bf16"] is True,
        threads=call.threads,
        seed=call.seed,
    )
    write_table(
        frame,
        metrics_path,
        "cgcnn_metrics",
        metadata={"seed": call.seed, "cgcnn": call.section("cgcnn")},
    )
    trained = frame[frame["trained"]]
    log.info(
        "trained %d of %d property models; metrics in %s", len(trained), len(frame), metrics_path
    )


def screen_candidates(call: StageCall) -> None:
    """Predict the eight properties of every filtered candidate of one base compound: of its
    CHGNet-relaxed structure where the judge relaxed it (input ``stability``), else of the
    generated one."""
    section = call.section("screen")
    base = call.wildcard("base")
    path = call.input("candidates")
    candidates = read_table(path)
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise UserError(f"{path} lacks the columns {missing}; re-run the filter_candidates rule.")
    predictor = PropertyPredictor(
        call.input("cgcnn"),
        device=call.section("train")["device"],
        # one intra-op thread: two measured several times slower on shared cores
        # (benchmarks/bench_cgcnn.py --threads 2)
        num_threads=1,
    )
    structures = candidates["structure_json"].tolist()
    relaxed = 0
    if "stability" in call.inputs:  # the judge ran: screen its relaxed structures
        judged = read_table(call.inputs["stability"], "stability")
        judged = judged[judged["candidate_id"].notna() & judged["relaxed_structure_json"].notna()]
        by_id = dict(zip(judged["candidate_id"], judged["relaxed_structure_json"], strict=True))
        structures = [
            by_id.get(c, s) for c, s in zip(candidates["candidate_id"], structures, strict=True)
        ]
        relaxed = sum(c in by_id for c in candidates["candidate_id"])
    log.info("%s: screening %d candidates (%d CHGNet-relaxed)", base, len(candidates), relaxed)
    pred = predictor.predict(
        structures,
        list(PROPERTY_COLUMNS),
        batch_size=int(section["batch_size"]),
        zero_gap_threshold_ev=float(section["zero_gap_threshold_ev"]),
    )
    frame = pd.concat(
        [candidates[["candidate_id", "base", "generator", "formula"]].reset_index(drop=True), pred],
        axis=1,
    )
    write_table(
        frame,
        call.output("screening"),
        "screening",
        metadata={"base": base, "screen": section, "relaxed_structures": relaxed},
    )


def collect_screening(call: StageCall) -> None:
    """Per-base screening tables -> results/screening.parquet."""
    frames = []
    for base, path in sorted(call.inputs.items()):
        frame = read_table(path, "screening")
        log.info("%s: %d screened candidates", base, len(frame))
        frames.append(frame)
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(
            {c: pd.Series(dtype=object) for c in ("candidate_id", "base", "formula")}
            | {p: pd.Series(dtype=float) for p in PROPERTY_COLUMNS}
        )
    )
    write_table(
        frame, call.output("screening"), "screening", metadata={"bases": sorted(call.inputs)}
    )
