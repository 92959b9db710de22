"""Stage entry points of the candidate judge (rules in workflow/rules/stability.smk).

- ``relax_references``: the reference phases of every chemical system in the pools of all
  bases, CHGNet-relaxed once (cache ``results/stability/cache/references.parquet``, kept
  between runs) → ``results/stability/references.parquet``.
- ``relax_candidates`` (one base): its pool judged → ``results/stability/{base}.parquet``
  and the relaxed structures' symmetrised CIFs in ``results/stability/{base}/``.
- ``fetch_mp_phases`` (``data.source: mp``): the Materials Project's GGA/GGA+U thermo
  entries of the same chemical systems → ``results/stability/mp_phases.parquet``, so each
  relaxed candidate also gets ``e_above_hull_mp`` against the Materials Project's hull
  (CHGNet energy against MP2020-corrected DFT energies, the scale CHGNet is trained on).
- ``collect_sun``: the S.U.N. table of all bases → ``results/metrics/sun.parquet``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from pymatgen.core import Structure

from matdisc.errors import UserError
from matdisc.io import read_table, write_table
from matdisc.stability.hull import Hulls
from matdisc.stability.judge import JudgeSettings, judge_pool
from matdisc.stability.potential import CELL_FILTERS, Potential
from matdisc.stability.references import (
    chemical_system,
    reference_phases,
    screen_polymorphs,
)
from matdisc.stability.references import (
    relax_references as relax_phases,
)
from matdisc.stability.sun import sun_structures, sun_table
from matdisc.stage import StageCall
from matdisc.train.device import resolve_device

log = logging.getLogger(__name__)

#: Persistent cache of relaxed reference phases, beside the stage's output.
CACHE_NAME = "cache/references.parquet"


def _per_base(call: StageCall, kind: str) -> dict[str, Path]:
    """Inputs named ``{kind}:{base}``, by base, in the order given."""
    prefix = f"{kind}:"
    found = {k[len(prefix) :]: v for k, v in call.inputs.items() if k.startswith(prefix)}
    if not found:
        raise UserError(f"this stage needs one --input {kind}:BASE=PATH per base compound.")
    return found


def load_potential(call: StageCall) -> Potential:
    """CHGNet on the ``train.device`` of the config, with the rule's threads."""
    device = resolve_device(call.section("train")["device"])
    return Potential(device=device.type, threads=call.threads)


def _metadata(call: StageCall, potential: Potential, settings: JudgeSettings) -> dict:
    return {
        "stability": call.section("stability"),
        "relax": dataclasses.asdict(settings.relax) | {"cell_filters": list(CELL_FILTERS)},
        "potential": dataclasses.asdict(potential.info),
    }


def _pool_systems(call: StageCall) -> set[tuple[str, ...]]:
    """The chemical systems of every pool given."""
    systems: set[tuple[str, ...]] = set()
    for path in _per_base(call, "pool").values():
        systems |= {chemical_system(f) for f in read_table(path, "pool")["formula"].unique()}
    return systems


def fetch_mp_phases(call: StageCall) -> None:
    """The Materials Project's thermo entries of the pools' chemical systems."""
    import os

    from matdisc.data.mp import fetch_thermo_entries

    systems = _pool_systems(call)
    output = call.output("mp_phases")
    docs, source = fetch_thermo_entries(
        systems,
        call.section("data")["mp"],
        output.parent / "cache" / "mp",
        api_key=os.environ.get("MP_API_KEY"),
    )
    frame = pd.DataFrame(
        {
            "material_id": [str(d["material_id"]) for d in docs],
            "formula": [str(d["formula_pretty"]) for d in docs],
            "energy_ev_per_atom": [float(d["energy_per_atom"]) for d in docs],
            "e_above_hull_ev_per_atom": [d.get("energy_above_hull") for d in docs],
            "thermo_type": [str(d["thermo_type"]) for d in docs],
        }
    ).drop_duplicates("material_id")
    write_table(
        frame,
        output,
        "mp_phases",
        metadata={"source": source, "systems": sorted("-".join(s) for s in systems)},
    )


def relax_references(call: StageCall) -> None:
    """Reference phases of the chemical systems of every pool, relaxed once."""
    settings = JudgeSettings.from_section(call.section("stability"), call.seed)
    systems = _pool_systems(call)
    structures = read_table(call.input("structures"), "structures")
    phases = reference_phases(structures, systems)
    log.info(
        "%d chemical systems: %d reference phases (%d from the data, %d ASE elements, "
        "%d elements without a reference)",
        len(systems), len(phases), int((phases["source"] == "data").sum()),
        int((phases["source"] == "ase").sum()), int((phases["source"] == "none").sum()),
    )  # fmt: skip
    output = call.output("references")
    potential = load_potential(call)
    phases, skipped = screen_polymorphs(
        phases,
        potential=potential,
        window_ev_per_atom=call.section("stability")["polymorph_window_ev_per_atom"],
    )
    frame = relax_phases(
        phases,
        potential=potential,
        settings=settings.relax,
        cache_path=output.parent / CACHE_NAME,
        workers=call.threads,
    )
    missing = phases[phases["source"] == "none"]
    meta = _metadata(call, potential, settings) | {
        "missing_elements": dict(zip(missing["formula"], missing["reason"], strict=True)),
        "polymorphs_not_relaxed": skipped,
    }
    write_table(frame, output, "references", metadata=meta)


def relax_candidates(call: StageCall) -> None:
    """One base's pool judged: single points, relaxations, hull, novelty."""
    from matdisc.io.parquet import read_metadata

    settings = JudgeSettings.from_section(call.section("stability"), call.seed)
    base = call.wildcard("base")
    pool = read_table(call.input("pool"), "pool")
    references_path = call.input("references")
    references = read_table(references_path, "references")
    missing = read_metadata(references_path).get("missing_elements", {})
    structures = read_table(call.input("structures"), "structures")
    formulas = set(pool["formula"])
    known: dict[str, list[tuple[str, Structure]]] = {}
    for mid, formula, raw in zip(
        structures["material_id"], structures["formula"], structures["structure_json"], strict=True
    ):
        if formula in formulas:
            known.setdefault(formula, []).append((mid, Structure.from_dict(json.loads(raw))))
    mp_hulls = None
    if "mp_phases" in call.inputs:
        mp_hulls = Hulls(read_table(call.input("mp_phases"), "mp_phases"), {})
    potential = load_potential(call)
    table = judge_pool(
        pool,
        base=base,
        potential=potential,
        hulls=Hulls(references, missing),
        known=known,
        settings=settings,
        seed=call.seed,
        cif_dir=call.output("cifs"),
        mp_hulls=mp_hulls,
    )
    relaxed = table[table["relaxed"].astype(bool)]
    log.info(
        "%s: %d structures judged, %d relaxed, %d stable (<= %.2f eV/atom above the hull), "
        "%d of them novel",
        base, len(table), len(relaxed), int(table["stable"].sum()),
        settings.threshold_ev_per_atom, int((table["stable"] & table["novel"]).sum()),
    )  # fmt: skip
    for row in relaxed.sort_values("rank").itertuples():
        log.info(
            "  %s %s: E_hull %.3f eV/atom (single point %.3f), %d reference phases%s",
            row.structure_id, row.formula, row.e_above_hull_ev_per_atom,
            row.e_above_hull_single_ev_per_atom, row.n_reference_phases,
            f", thin hull (no phase in {row.empty_subsystems})" if row.thin_hull else "",
        )  # fmt: skip
        if mp_hulls is not None:
            log.info(
                "    against the Materials Project's %d phases: %.3f eV/atom%s",
                row.n_mp_phases, row.e_above_hull_mp_ev_per_atom,
                f" ({row.mp_hull_reason})" if row.mp_hull_reason else "",
            )  # fmt: skip
    write_table(
        table, call.output("stability"), "stability", metadata=_metadata(call, potential, settings)
    )


def collect_sun(call: StageCall) -> None:
    """The S.U.N. table: per base and over all bases, per generator."""
    judged = _per_base(call, "stability")
    bases = list(judged)
    tables = [read_table(judged[b], "stability") for b in bases]
    # every draw made counts, failed ones included: the rows of each generator's table
    sources = {"vae": _per_base(call, "samples")}
    if any(name.startswith("substitution:") for name in call.inputs):
        sources["substitution"] = _per_base(call, "substitution")
    frames = []
    for generator, paths in sources.items():
        draws = [pq.ParquetFile(paths[b]).metadata.num_rows for b in bases]
        mine = [t[t["generator"] == generator] for t in tables]
        frames.append(sun_table(mine, draws, bases, generator=generator))
    table = pd.concat(frames, ignore_index=True)
    log.info("S.U.N.:\n%s", table.to_string(index=False))
    write_table(table, call.output("sun"), "sun", metadata={"stability": call.section("stability")})


def collect_generators(call: StageCall) -> None:
    """What each generator cost (CPU seconds of its rules, from Snakemake's benchmark
    records: the VAE's training and sampling, the substitution's enumeration) and found
    (S.U.N.) -> results/metrics/generators.parquet."""
    sun = read_table(call.input("sun"), "sun")
    tables = [read_table(path, "stability") for path in _per_base(call, "stability").values()]
    costs: dict[str, dict[str, float]] = {}
    for name, path in call.inputs.items():
        if name.startswith("cost:"):  # cost:GENERATOR:RULE[:BASE]
            _, generator, job = name.split(":", 2)
            record = pd.read_csv(path, sep="\t")
            costs.setdefault(generator, {})[job] = float(record["cpu_time"].iloc[-1])
    rows = []
    for generator, detail in costs.items():
        overall = sun[(sun["base"] == "all") & (sun["generator"] == generator)]
        if overall.empty:
            raise UserError(
                f"the S.U.N. table has no row of generator {generator}; re-run collect_sun."
            )
        found = overall.iloc[0]
        # the S.U.N. structures of all bases, as the S.U.N. table's overall row counts them
        mine = sun_structures(
            pd.concat([t[t["generator"] == generator] for t in tables], ignore_index=True)
        )
        cpu = sum(detail.values())
        rows.append(
            {
                "generator": generator,
                "draws": int(found["draws"]),
                "sun": int(found["novel"]),
                "stable": int(found["stable"]),
                "cpu_seconds": cpu,
                "cpu_seconds_json": json.dumps(detail, sort_keys=True),
                "sun_per_cpu_hour": int(found["novel"]) / (cpu / 3600) if cpu > 0 else float("nan"),
                "sun_known_composition": int(mine["composition_known"].sum()),
                "sun_new_composition": int((~mine["composition_known"].astype(bool)).sum()),
            }
        )
    table = pd.DataFrame(rows)
    log.info("generators:\n%s", table.drop(columns="cpu_seconds_json").to_string(index=False))
    write_table(table, call.output("generators"), "generators")
