"""Figures and tables of the results report (``snakemake --report results/report.html``).

Each function reads tables the pipeline already wrote and writes one file atomically:
the funnel per base beside the paper's Table 2, the UNet/VAE learning curves, the unit
cells of the judge's best structures, the convex hull of each base's best candidate and
the S.U.N. table. Nothing here trains or relaxes anything.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from matdisc.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

#: Points per inch of the saved figures (legible in a browser, small files).
DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)


def funnel_figure(funnel: pd.DataFrame, path: Path) -> None:
    """Share of the draws left after each filter stage, per base, one panel per generator,
    with the paper's Table 2 averages as black bars (stages the paper did not have are
    left without one)."""
    plt = _pyplot()
    generators = list(dict.fromkeys(funnel["generator"]))
    stages = funnel.drop_duplicates("stage").sort_values("step")
    labels = stages["description"].tolist()
    bases = list(dict.fromkeys(funnel["base"]))
    width = 0.8 / (len(bases) + 1)
    x = np.arange(len(stages))
    fig, axes = plt.subplots(
        len(generators), 1, figsize=(max(8.0, 0.75 * len(stages)), 4.2 * len(generators)),
        sharex=True, squeeze=False,
    )  # fmt: skip
    for ax, generator in zip(axes[:, 0], generators, strict=True):
        mine = funnel[funnel["generator"] == generator]
        for i, base in enumerate(bases):
            rows = mine[mine["base"] == base].set_index("stage").reindex(stages["stage"])
            ax.bar(x + i * width, rows["cumulative_pct"].to_numpy(float), width, label=base)
        paper = stages["paper_cumulative_pct"].to_numpy(float)
        ax.bar(x + len(bases) * width, paper, width, color="black", label="paper (Table 2 average)")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylim(0, 150)
        ax.set_ylabel("left (% of the structures, symlog)", fontsize=9)
        ax.set_title(f"Candidate funnel per base compound: generator {generator}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    axes[-1, 0].set_xticks(x + 0.4 - width / 2, labels, rotation=35, ha="right", fontsize=8)
    _save(fig, path)


def learning_curves_figure(
    histories: Mapping[str, Sequence[Mapping[str, float]]], path: Path
) -> None:
    """Training and validation loss per epoch of each model (one panel per model)."""
    plt = _pyplot()
    names = [n for n, h in histories.items() if h]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.6 * max(len(names), 1), 3.8))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names, strict=False):
        frame = pd.DataFrame(list(histories[name]))
        for column, style in (("train_loss", "-"), ("val_loss", "--")):
            if column in frame:
                ax.plot(frame["epoch"], frame[column], style, marker="o", ms=3, label=column)
        best = frame["val_loss"].idxmin() if "val_loss" in frame else None
        if best is not None and np.isfinite(frame["val_loss"][best]):
            ax.axvline(frame["epoch"][best], color="grey", lw=0.8, ls=":", label="best val epoch")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(name)
        ax.legend(fontsize=8)
    _save(fig, path)


def best_structures(tables: Mapping[str, pd.DataFrame], per_base: int) -> pd.DataFrame:
    """The ``per_base`` relaxed structures of each base lowest above the hull."""
    rows = []
    for base, table in tables.items():
        relaxed = table[table["relaxed"].astype(bool)].sort_values("rank")
        rows.append(relaxed.head(per_base).assign(base=base))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def cells_figure(best: pd.DataFrame, path: Path) -> None:
    """The relaxed unit cells of ``best`` (rows of the stability tables), one panel each."""
    from ase.visualize.plot import plot_atoms
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    plt = _pyplot()
    n = max(len(best), 1)
    columns = min(n, 4)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    from ase.data import atomic_numbers
    from ase.data.colors import jmol_colors
    from matplotlib.patches import Patch

    for ax, row in zip(axes.ravel(), best.itertuples(), strict=False):
        structure = Structure.from_dict(json.loads(row.relaxed_structure_json))
        atoms = AseAtomsAdaptor.get_atoms(structure)
        plot_atoms(atoms, ax, rotation="10x,-20y,0z", radii=0.45, show_unit_cell=2)
        symbols = sorted({s.symbol for s in structure.species}, key=lambda e: atomic_numbers[e])
        handles = [
            Patch(facecolor=jmol_colors[atomic_numbers[e]], edgecolor="black", label=e)
            for e in symbols
        ]
        ax.legend(handles=handles, fontsize=7, loc="lower right", frameon=False)
        flags = ", ".join(f for f, on in (("stable", row.stable), ("novel", row.novel)) if bool(on))
        ax.set_title(
            f"{row.base} ({row.generator}): {row.formula} (space group "
            f"{int(row.spacegroup_relaxed)})\n"
            f"E_hull {row.e_above_hull_ev_per_atom:.3f} eV/atom{', ' + flags if flags else ''}",
            fontsize=8,
        )
    if best.empty:
        axes[0, 0].text(0.5, 0.5, "no relaxed structure", ha="center", va="center")
    _save(fig, path)


def hull_figure(
    row: pd.Series | None, references: pd.DataFrame, path: Path, *, base: str
) -> dict[str, object]:
    """The CHGNet convex hull of ``row``'s chemical system (its reference phases and the
    candidate, marked), drawn by pymatgen's phase-diagram plotter; a note if it cannot be
    drawn (no relaxed candidate, a missing elemental reference, more than 4 elements)."""
    from pymatgen.analysis.phase_diagram import PDEntry, PDPlotter, PhaseDiagram
    from pymatgen.core import Composition

    from matdisc.stability.hull import Hulls

    plt = _pyplot()
    note = None
    if row is None:
        note = f"{base}: no structure was relaxed"
    else:
        hulls = Hulls(references, {})
        elements = sorted({el.symbol for el in Composition(row["formula"]).elements})
        entries = hulls.entries(elements)
        composition = Composition(row["formula"])
        candidate = PDEntry(
            composition,
            float(row["energy_ev_per_atom"]) * composition.num_atoms,
            name=f"{row['formula']}*",
        )
        try:
            if len(elements) > 4:
                raise ValueError("more than four elements")
            diagram = PhaseDiagram([*entries, candidate])
            plotter = PDPlotter(diagram, show_unstable=0.3, backend="matplotlib")
            ax = plotter.get_plot(label_unstable=True)
            fig = ax.figure
            fig.set_size_inches(6.4, 5.2)
            for text in ax.texts:  # pymatgen's labels are poster-sized
                text.set_fontsize(9)
            ax.tick_params(labelsize=9)
            ax.xaxis.label.set_fontsize(10)
            ax.yaxis.label.set_fontsize(10)
            ax.margins(0.12)
            ax.set_title(
                f"{base}: hull of {'-'.join(elements)} (CHGNet); * {row['formula']}, "
                f"{float(row['e_above_hull_ev_per_atom']):.3f} eV/atom above it",
                fontsize=9,
            )
            _save(fig, path)
            return {"base": base, "system": "-".join(elements), "phases": len(entries)}
        except ValueError as exc:  # e.g. an element without any phase
            note = f"{base}: the hull of {'-'.join(elements)} cannot be drawn ({exc})"
    fig, ax = plt.subplots(figsize=(6.4, 1.6))
    ax.set_axis_off()
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
    _save(fig, path)
    log.warning("%s", note)
    return {"base": base, "note": note}


def sun_html(sun: pd.DataFrame, generators: pd.DataFrame | None, path: Path) -> None:
    """The S.U.N. table, and what each generator cost and found, as a small HTML page
    (rates in %, 95 % interval)."""
    table = sun.copy()
    for column in ("sun_rate", "sun_rate_low", "sun_rate_high"):
        table[column] = (100 * table[column]).map(lambda v: f"{v:.2f}")
    table = table.rename(
        columns={"sun_rate": "S.U.N. %", "sun_rate_low": "95 % low", "sun_rate_high": "95 % high"}
    )
    body = table.to_html(index=False, border=0, classes="sun")
    if generators is not None:
        cost = generators.drop(columns="cpu_seconds_json").round(2)
        body += "<h3>Per generator</h3>" + cost.to_html(index=False, border=0, classes="sun")
    style = (
        "<style>body{font-family:sans-serif;font-size:13px}"
        "table.sun{border-collapse:collapse}"
        "table.sun td,table.sun th{padding:3px 8px;border-bottom:1px solid #ccc;"
        "text-align:right}</style>"
    )
    atomic_write_text(path, f"<!doctype html><html><head>{style}</head><body>{body}</body></html>")
