"""The ``matdisc`` command: one sub-command per pipeline stage.

Every Snakemake rule is one call of this command, its sub-command the rule's name with
hyphens, e.g. rule ``download_structures``::

    matdisc download-structures --settings '{"seed": 7, "data": {...}}' \
        --output structures=results/data/structures.parquet \
        --log logs/download_structures/all.log

A person can run a stage directly with ``--config config/config.yaml`` instead of
``--settings``. Errors a user can fix print one sentence and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matdisc import __version__
from matdisc.errors import UserError
from matdisc.logs import setup_logging
from matdisc.stage import StageCall

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    target: str  # "module:function" taking a StageCall
    help: str


#: sub-command -> implementation. Modules are imported only when their stage runs. A rule's
#: sub-command is its name with hyphens and calls the function of that name.
STAGES: dict[str, Stage] = {
    "download-structures": Stage(
        "matdisc.data.stage:download_structures",
        "Materials Project structures -> structures.parquet",
    ),
    "select-base-compounds": Stage(
        "matdisc.data.stage:select_base_compounds",
        "check the configured base compounds against the data",
    ),
    "voxelize-structures": Stage(
        "matdisc.voxel.stage:voxelize_structures", "cubic structures -> voxel store (zarr)"
    ),
    "train-unet": Stage("matdisc.models.stage:train_unet", "train the 3-D UNet segmenter"),
    "train-vae": Stage(
        "matdisc.models.stage:train_vae", "train the conditional DFC-VAE and evaluate the chain"
    ),
    # no rule: re-scores saved models (train-vae writes the same rows)
    "evaluate-vae": Stage(
        "matdisc.models.stage:evaluate_vae", "reconstruction metrics of the VAE/UNet chain"
    ),
    "train-cgcnn": Stage(
        "matdisc.screen.stage:train_cgcnn", "train the eight CGCNN property models"
    ),
    "sample-structures": Stage(
        "matdisc.sample.stage:sample_structures", "latent sampling around a base compound"
    ),
    "substitute-structures": Stage(
        "matdisc.sample.stage:substitute_structures",
        "the ion-exchange baseline's structures around a base compound",
    ),
    "random-sampling-stats": Stage(
        "matdisc.sample.stage:random_sampling_stats",
        "random-sampling statistics -> random_sampling.parquet",
    ),
    "filter-candidates": Stage(
        "matdisc.filters.stage:filter_candidates",
        "the five-stage candidate filter for a base compound",
    ),
    "collect-funnel": Stage(
        "matdisc.filters.stage:collect_funnel", "funnel counts of all bases -> funnel.parquet"
    ),
    "screen-candidates": Stage(
        "matdisc.screen.stage:screen_candidates", "predict the eight properties of the candidates"
    ),
    "collect-screening": Stage(
        "matdisc.screen.stage:collect_screening", "screening of all bases -> screening.parquet"
    ),
    "write-qe-inputs": Stage(
        "matdisc.qe.stage:write_qe_inputs", "Quantum ESPRESSO vc-relax inputs per candidate"
    ),
    "collect-qe-manifest": Stage(
        "matdisc.qe.stage:collect_qe_manifest",
        "QE input manifests of all bases -> manifest.parquet",
    ),
    "run-qe-relax": Stage(
        "matdisc.qe.stage:run_qe_relax", "run pw.x on the inputs and compare the relaxed structures"
    ),
    "relax-references": Stage(
        "matdisc.stability.stage:relax_references",
        "CHGNet-relax the reference phases of every pool's chemical systems (cached)",
    ),
    "fetch-mp-phases": Stage(
        "matdisc.stability.stage:fetch_mp_phases",
        "the Materials Project's thermo entries of every pool's chemical systems (data.source mp)",
    ),
    "relax-candidates": Stage(
        "matdisc.stability.stage:relax_candidates",
        "judge a base's pool: CHGNet single points and relaxations, energy above hull",
    ),
    "collect-sun": Stage(
        "matdisc.stability.stage:collect_sun", "stable, unique, novel per base -> sun.parquet"
    ),
    "collect-generators": Stage(
        "matdisc.stability.stage:collect_generators",
        "cost and S.U.N. per generator -> generators.parquet",
    ),
    "plot-report": Stage(
        "matdisc.report.stage:plot_report", "the results report's figures -> results/report/"
    ),
    "train-ebm": Stage("matdisc.csp.stage:train_ebm", "train the ContinuouSP energy model"),
    "predict-structures": Stage(
        "matdisc.csp.stage:predict_structures",
        "ContinuouSP structure prediction for the candidates of a base",
    ),
    "evaluate-csp": Stage(
        "matdisc.csp.stage:evaluate_csp", "ContinuouSP CSP match rate / RMSE on held-out crystals"
    ),
}


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(
                f"{flag} takes NAME=VALUE, got {item!r}; write it as {flag} name=value."
            )
        out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matdisc", description="High-throughput discovery of inorganic crystals."
    )
    parser.add_argument("--version", action="version", version=f"matdisc {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, stage in STAGES.items():
        p = sub.add_parser(name, help=stage.help, description=stage.help)
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--settings", help="config sections as JSON (what the rules pass)")
        src.add_argument("--config", type=Path, help="a config.yaml, validated against the schema")
        p.add_argument("--input", action="append", metavar="NAME=PATH", help="a named input")
        p.add_argument("--output", action="append", metavar="NAME=PATH", help="a named output")
        p.add_argument("--wildcard", action="append", metavar="NAME=VALUE", help="e.g. base=SrTiO3")
        p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
        p.add_argument("--log", type=Path, help="also append the log to this file")
    return parser


def _settings(args: argparse.Namespace) -> dict:
    if args.config is not None:
        from matdisc.config import load_config

        return load_config(args.config)
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as exc:
        raise UserError(f"--settings is not valid JSON ({exc}); pass a JSON object.") from exc
    if not isinstance(settings, dict):
        raise UserError("--settings must be a JSON object of config sections.")
    # checked like a config file, and what a section leaves out takes the schema's default;
    # only the sections passed are kept (a stage reading another one is a wiring bug)
    from matdisc.config import validate_config

    passed = set(settings) | {"seed"}
    return {k: v for k, v in validate_config(settings).items() if k in passed}


def resolve(target: str):
    module_name, _, func_name = target.partition(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log)
    try:
        call = StageCall(
            settings=_settings(args),
            inputs={k: Path(v) for k, v in _pairs(args.input, "--input").items()},
            outputs={k: Path(v) for k, v in _pairs(args.output, "--output").items()},
            threads=max(1, args.threads),
            wildcards=_pairs(args.wildcard, "--wildcard"),
        )
        log.info("matdisc %s: stage %s %s", __version__, args.stage, call.wildcards or "")
        from matdisc.io.parquet import run_metadata

        provenance = {"stage": args.stage, "seed": call.seed, "settings": call.settings}
        with run_metadata(provenance | ({"wildcards": call.wildcards} if call.wildcards else {})):
            resolve(STAGES[args.stage].target)(call)
    except UserError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; finished outputs are kept, re-run to continue")
        return 130
    except Exception:  # a bug, not a user error: its traceback goes into the rule log too
        log.exception("stage %s failed", args.stage)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
