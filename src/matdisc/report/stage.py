"""Stage entry point ``plot-report`` (rule ``plot_report``): the report's figures.

Inputs: the funnel, the UNet and VAE checkpoints (their training histories), the voxel
store (for the latent map) and, when the judge ran, its tables, reference phases and the
S.U.N. table. Outputs under ``results/report/``: ``funnel.png``, ``learning_curves.png``,
``latent.png`` and, with the judge, ``cells.png``, ``hulls/hull_{base}.png`` and
``sun.html``. ``snakemake --report results/report.html`` gathers them with their captions
(``workflow/report/``).
"""

from __future__ import annotations

import logging

import pandas as pd

from matdisc.io import read_table
from matdisc.report.figures import (
    best_structures,
    cells_figure,
    funnel_figure,
    hull_figure,
    learning_curves_figure,
    sun_html,
)
from matdisc.stage import StageCall

log = logging.getLogger(__name__)

#: Relaxed structures pictured per base in ``cells.png``.
CELLS_PER_BASE = 2


def _history(path) -> list[dict]:
    from matdisc.train import load_model

    _, extra = load_model(path, device="cpu")
    return list(extra["history"])


def plot_report(call: StageCall) -> None:
    """The report's figures from the finished run's tables."""
    from matdisc.report.latent import latent_map

    funnel_figure(read_table(call.input("funnel")), call.output("funnel"))
    learning_curves_figure(
        {
            "UNet (species + mask)": _history(call.input("unet")),
            "Cond-DFC-VAE": _history(call.input("vae")),
        },
        call.output("curves"),
    )
    bases = list(call.settings["base_compounds"])
    facts = latent_map(
        vae_path=call.input("vae"),
        voxels=call.input("voxels"),
        bases=bases,
        n_draws=200,
        seed_section=call.settings,
        out_png=call.output("latent"),
        threads=call.threads,
        bases_table=call.input("bases"),
    )
    log.info("latent map: %s", facts)
    if "sun" not in call.inputs:
        return
    tables = {b: read_table(call.input(f"stability:{b}"), "stability") for b in bases}
    best = best_structures(tables, CELLS_PER_BASE)
    cells_figure(best, call.output("cells"))
    references = read_table(call.input("references"), "references")
    hulls = call.output("hulls")
    hulls.mkdir(parents=True, exist_ok=True)
    for base in bases:
        top = best[best["base"] == base].head(1) if not best.empty else pd.DataFrame()
        row = top.iloc[0] if len(top) else None
        hull_figure(row, references, hulls / f"hull_{base}.png", base=base)
    generators = (
        read_table(call.input("generators"), "generators") if "generators" in call.inputs else None
    )
    sun_html(read_table(call.input("sun"), "sun"), generators, call.output("sun"))
