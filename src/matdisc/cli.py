"""The ``matdisc`` command: one sub-command per pipeline stage.

Every Snakemake rule is one call of this command, e.g.::

    matdisc download --settings '{"seed": 7, "data": {...}}' \
        --output structures=results/data/structures.parquet --log logs/download.log

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


#: sub-command -> implementation. Modules are imported only when their stage runs.
STAGES: dict[str, Stage] = {
    "download": Stage(
        "matdisc.data.download:run", "Materials Project structures -> structures.parquet"
    ),
    "select-bases": Stage(
        "matdisc.data.bases:run", "check the configured base compounds against the data"
    ),
    "voxelize": Stage("matdisc.voxel.stage:run", "cubic structures -> voxel store (zarr)"),
    "train-unet": Stage("matdisc.models.stages:train_unet", "train the 3-D UNet segmenter"),
    "train-vae": Stage(
        "matdisc.models.stages:train_vae", "train the conditional DFC-VAE and evaluate the chain"
    ),
    "evaluate": Stage(
        "matdisc.models.stages:evaluate", "reconstruction metrics of the VAE/UNet chain"
    ),
    "train-cgcnn": Stage(
        "matdisc.screen.stages:train_cgcnn", "train the eight CGCNN property models"
    ),
    "sample": Stage("matdisc.sample.stage:run", "latent sampling around a base compound"),
    "random-stats": Stage(
        "matdisc.sample.stage:random_stats", "random-sampling statistics -> random_sampling.parquet"
    ),
    "filter": Stage(
        "matdisc.filters.stage:run", "the five-stage candidate filter for a base compound"
    ),
    "collect-funnel": Stage(
        "matdisc.filters.stage:collect_funnel", "funnel counts of all bases -> funnel.parquet"
    ),
    "screen": Stage(
        "matdisc.screen.stages:screen", "predict the eight properties of the candidates"
    ),
    "collect-screening": Stage(
        "matdisc.screen.stages:collect", "screening of all bases -> screening.parquet"
    ),
    "qe-inputs": Stage(
        "matdisc.qe.stage:write_inputs", "Quantum ESPRESSO vc-relax inputs per candidate"
    ),
    "collect-qe": Stage(
        "matdisc.qe.stage:collect_manifest", "QE input manifests of all bases -> manifest.parquet"
    ),
    "qe-relax": Stage(
        "matdisc.qe.stage:relax", "run pw.x on the inputs and compare the relaxed structures"
    ),
    "train-ebm": Stage("matdisc.csp.stage:train_ebm", "train the ContinuouSP energy model"),
    "csp": Stage(
        "matdisc.csp.stage:predict", "ContinuouSP structure prediction for the candidates of a base"
    ),
    "evaluate-csp": Stage(
        "matdisc.csp.stage:evaluate", "ContinuouSP CSP match rate / RMSE on held-out crystals"
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
    return settings


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
        resolve(STAGES[args.stage].target)(call)
    except UserError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; finished outputs are kept, re-run to continue")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
