"""Stage entry points: ``sample-structures`` (one base compound) and
``random-sampling-stats``.

``sample-structures`` (rule ``sample_structures``) writes
``results/samples/{base}.parquet`` (schema ``samples``): every draw, with its structure or
the reason there is none. The mode (config ``sample.mode``) decides the draws
(:mod:`matdisc.sample.latent`):

* ``targeted``: around the encoded base, conditioned on its formation-energy decile;
* ``random``: N(0, I), equal draws per decile (the base only names the job and seeds it);
* ``interpolate``: from the base to ``sample.interpolate_to``.

``random-sampling-stats`` (rule ``random_sampling_stats``, in ``all`` when the mode is
random) pools the samples of all bases and writes the seed's random-sampling figures.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from matdisc.data.bases import base_row
from matdisc.errors import UserError
from matdisc.io import read_table, write_table
from matdisc.sample import latent
from matdisc.stage import StageCall

log = logging.getLogger(__name__)

MODES = ("targeted", "random", "interpolate")


def check_settings(section: dict[str, Any]) -> None:
    """One sentence for a sample section the sampler cannot use."""
    mode = section["mode"]
    if mode not in MODES:
        raise UserError(f"sample.mode is {mode!r}; set it to one of {', '.join(MODES)}.")
    n = int(section["n_samples"])
    if n < 1:
        raise UserError(f"sample.n_samples is {n}; set it to at least 1 (the seed used 1000).")
    if not float(section["variance"]) > 0:
        raise UserError(
            f"sample.variance is {section['variance']}; set it to a positive variance "
            "σ² of the draws around the base (the seed used 0.5)."
        )
    if mode == "random" and n % latent.N_DECILES:
        raise UserError(
            f"sample.mode random draws the same number per decile, so sample.n_samples "
            f"({n}) must be a multiple of {latent.N_DECILES}; change it."
        )
    if mode == "interpolate" and not section.get("interpolate_to"):
        raise UserError(
            "sample.mode is interpolate but sample.interpolate_to is not set; name the "
            "compound (a formula in the voxel store) to interpolate towards."
        )


def store_index(store: Any, material_id: str, what: str) -> int:
    """Index of ``material_id`` in the voxel store, or one sentence why it is missing."""
    hits = np.flatnonzero(store.material_id == material_id)
    if not len(hits):
        raise UserError(
            f"{what} ({material_id}) is not in the voxel store {store.path}, which holds only "
            "cubic cells of at most voxel.max_sites sites; choose another compound or raise "
            "voxel.max_sites."
        )
    return int(hits[0])


def decile_of(store: Any, index: int) -> int:
    """Formation-energy decile of a store entry (from the train-split edges if unset)."""
    decile = int(store.decile[index])
    if decile >= 0:
        return decile
    ef = float(store.e_form_ev_per_atom[index])
    if not np.isfinite(ef):
        raise UserError(
            f"{store.material_id[index]} has no formation energy, so it has no decile to "
            "condition on; choose a base compound with a known formation energy."
        )
    return int(np.searchsorted(store.decile_edges, ef, side="right"))


def load_chain(call: StageCall, store: Any) -> Any:
    """The Generator of the trained VAE and UNet, checked against the voxel store."""
    import torch

    from matdisc.sample.generate import Generator
    from matdisc.segment import InverseSettings
    from matdisc.train import load_model, resolve_device
    from matdisc.train.device import inference_bf16

    device = resolve_device(call.section("train")["device"])
    torch.set_num_threads(max(1, call.threads))
    unet, unet_extra = load_model(call.input("unet"), device=device)
    vae, _ = load_model(call.input("vae"), device=device)
    for name, size in (("unet", unet_extra.get("grid_size")), ("vae", vae.grid_size)):
        if size is not None and int(size) != store.grid_size:
            raise UserError(
                f"the {name} model was trained on {size}³ grids but the voxel store holds "
                f"{store.grid_size}³; retrain the models on this store."
            )
    return Generator(
        vae=vae,
        unet=unet,
        padding=store.padding,
        inverse_settings=InverseSettings.from_config(call.section("voxel"), decoded=True),
        device=device,
        threads=call.threads,
        species_reader=call.section("sample")["species_reader"],
        species_choice=call.section("sample")["species_choice"],
        bf16=inference_bf16(call.section("train")),
    )


def encode_entry(gen: Any, store: Any, index: int, decile: int) -> np.ndarray:
    """μ (latent_dim,) of voxel-store entry ``index`` conditioned on ``decile``."""
    from matdisc.models.data import species_channels_of

    density = np.asarray(store.density[index : index + 1], dtype=np.float32)
    coords = store.coords(index)[None]
    species = species_channels_of(store, [index], gen.vae.species_channels)
    return gen.encode(density, coords, latent.onehot(np.array([decile])), species)[0]


def draws_for(
    section: dict[str, Any], base: str, seed: int, gen: Any, store: Any, index: int
) -> latent.Draws:
    mode = section["mode"]
    n = int(section["n_samples"])
    decile = decile_of(store, index)
    if mode == "random":
        return latent.random(gen.vae.latent_dim, n, latent.rng_for(seed, base))
    mu = encode_entry(gen, store, index, decile)
    if mode == "targeted":
        return latent.targeted(
            mu, decile, n, float(section["variance"]), latent.rng_for(seed, base)
        )
    target = str(section["interpolate_to"])
    hits = np.flatnonzero(store.formula == target)
    if not len(hits):
        raise UserError(
            f"sample.interpolate_to '{target}' is not a formula in the voxel store; "
            "name a cubic compound of the data by its reduced formula, such as SrTiO3."
        )
    ef = np.where(
        np.isfinite(store.e_form_ev_per_atom[hits]), store.e_form_ev_per_atom[hits], np.inf
    )
    end = int(hits[np.argmin(ef)])
    end_decile = decile_of(store, end)
    mu_end = encode_entry(gen, store, end, end_decile)
    log.info("interpolating from %s to %s (%s)", base, target, store.material_id[end])
    return latent.interpolate(mu, mu_end, decile, end_decile, n)


def samples_frame(
    base: str, mode: str, draws: latent.Draws, rows: list[dict[str, Any]]
) -> pd.DataFrame:
    """The samples table of one base (schema ``samples``)."""
    frame = pd.DataFrame(rows)
    structures = frame.pop("structure")
    frame["structure_json"] = [None if s is None else json.dumps(s.as_dict()) for s in structures]
    frame.insert(0, "base", base)
    frame.insert(1, "sample_index", np.arange(len(frame), dtype=np.int32))
    frame.insert(2, "mode", mode)
    frame.insert(3, "decile", draws.decile.astype(np.int8))
    frame.insert(4, "t", draws.t)
    frame.insert(5, "z_distance", draws.z_distance)
    return frame


def choice_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Of the structures whose orbits were read with the UNet's class probabilities:
    how many, how many strict-valid as read and after the species choice, how many the
    choice changed, and how many found no valid combination ({} without them)."""
    read = frame[frame["choice_rank"].notna()]
    if read.empty:
        return {}
    rank = read["choice_rank"].astype(int)
    as_read = read["valid_unconstrained"].astype(bool)
    return {
        "structures": len(read),
        "valid_as_read": int(as_read.sum()),
        # a changed read passes; an unchanged one as it was read (see readback.Choice.valid)
        "valid_after": int(((rank > 0) | ((rank == 0) & as_read)).sum()),
        "changed": int((rank > 0).sum()),
        "no_valid_combination": int((rank < 0).sum()),
    }


def no_structure_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Draws without a structure, by reason (the ``reason`` column is null for the others:
    None or NaN, as pandas stores it)."""
    return dict(Counter(str(r) for r in frame["reason"] if pd.notna(r)))


def sample_structures(call: StageCall) -> None:
    """Draw, decode, segment and invert the samples of one base compound."""
    from matdisc.voxel.store import open_store

    section = call.section("sample")
    check_settings(section)
    base = call.wildcard("base")
    row = base_row(read_table(call.input("bases"), "base_compounds"), base)
    store = open_store(call.input("voxels"))
    index = store_index(store, str(row["material_id"]), f"base compound '{base}'")
    gen = load_chain(call, store)
    started = time.perf_counter()
    draws = draws_for(section, base, call.seed, gen, store, index)
    rows = gen.run(
        draws.z,
        draws.condition,
        batch_size=int(section["batch_size"]),
        desc=f"sample {base}",
        seed=int(latent.rng_for(call.seed, f"{base} species").integers(2**62)),
    )
    seconds = time.perf_counter() - started
    frame = samples_frame(base, section["mode"], draws, rows)
    reasons = no_structure_counts(frame)
    log.info(
        "%s: %d draws (%s), %d structures; no structure: %s; %.1f samples/s; time by step %s",
        base, len(frame), section["mode"], int(frame["reason"].isna().sum()), reasons,
        len(frame) / seconds if seconds > 0 else float("inf"),
        {k: round(v, 2) for k, v in gen.timings.items()},
    )  # fmt: skip
    read = choice_counts(frame)
    if read:
        log.info(
            "%s, species read (%s): strict-valid %d of %d structures as read, %d after the "
            "choice; %d changed, %d with no valid combination among those tried",
            base, section["species_choice"], read["valid_as_read"], read["structures"],
            read["valid_after"], read["changed"], read["no_valid_combination"],
        )  # fmt: skip
    write_table(
        frame,
        call.output("samples"),
        "samples",
        metadata={
            "seed": call.seed,
            "base_material_id": row["material_id"],
            "base_decile": decile_of(store, index),
            "sample": section,
            "no_structure": reasons,
            "species_read": read,
            # train.bf16 as resolved on this machine: the models' precision decides the maps
            "inference_bf16": bool(gen.unet.inference_bf16),
            "seconds": seconds,
            "timings_s": dict(gen.timings),
        },
    )


# -- random-sampling statistics -------------------------------------------------------

PAPER_VALID = 0.76
PAPER_NEGATIVE_EF = 0.59


def random_sampling_table(
    samples: pd.DataFrame, ef: np.ndarray, *, min_distance: float, top: int
) -> pd.DataFrame:
    """The seed's random-sampling figures (schema ``random_sampling``).

    samples: pooled samples tables; ef: CGCNN Ef (eV/atom) per row (NaN where none).
    valid: a structure whose shortest distance is >= ``min_distance`` Å.
    """
    n = len(samples)
    dist = samples["min_distance_angstrom"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(dist) & (dist >= min_distance)
    n_valid = int(valid.sum())
    negative = int((np.asarray(ef)[valid] < 0).sum())
    rows = [
        {"metric": "n_draws", "formula_anonymous": None, "count": n, "fraction": 1.0,
         "paper_fraction": 1.0},
        {"metric": "valid", "formula_anonymous": None, "count": n_valid,
         "fraction": n_valid / n if n else np.nan, "paper_fraction": PAPER_VALID},
        {"metric": "negative_ef", "formula_anonymous": None, "count": negative,
         "fraction": negative / n_valid if n_valid else np.nan,
         "paper_fraction": PAPER_NEGATIVE_EF},
    ]  # fmt: skip
    types = Counter(samples.loc[valid, "formula_anonymous"]).most_common(top)
    for name, count in types:
        rows.append(
            {"metric": "structure_type", "formula_anonymous": name, "count": count,
             "fraction": count / n_valid, "paper_fraction": np.nan}
        )  # fmt: skip
    return pd.DataFrame(rows)


def random_sampling_stats(call: StageCall) -> None:
    """Pool the random-mode samples of every base; fraction valid, fraction with
    predicted Ef < 0 and the top structure types -> results/metrics/random_sampling.parquet."""
    from matdisc.screen.predict import predict

    section = call.section("sample")
    paths = {k: v for k, v in call.inputs.items() if k not in ("cgcnn",)}
    frames = [read_table(p, "samples") for p in paths.values()]
    if not frames:
        raise UserError(
            "random-sampling-stats needs at least one samples table (--input BASE=PATH)."
        )
    samples = pd.concat(frames, ignore_index=True)
    modes = set(samples["mode"])
    if modes != {"random"}:
        raise UserError(
            f"the samples were drawn in mode(s) {sorted(modes)}, not random; set "
            "sample.mode: random and re-run the sample rules."
        )
    ef = np.full(len(samples), np.nan)
    has = samples["structure_json"].notna().to_numpy()
    if has.any():
        pred = predict(
            samples.loc[has, "structure_json"].tolist(),
            ["e_form_ev_per_atom"],
            model_dir=call.input("cgcnn"),
            device=call.section("train")["device"],
            num_threads=call.threads,
        )
        ef[has] = pred["e_form_ev_per_atom"].to_numpy()
    stats = random_sampling_table(
        samples,
        ef,
        min_distance=float(call.section("filter")["min_distance_angstrom"]),
        top=int(section["top_structure_types"]),
    )
    log.info("random sampling: %s", stats.head(3).to_dict("records"))
    write_table(stats, call.output("metrics"), "random_sampling", metadata={"seed": call.seed})


def substitute_structures(call: StageCall) -> None:
    """The ion-exchange baseline around one base compound ->
    ``results/substitution/{base}.parquet`` (schema ``substitutions``)."""
    import time

    from pymatgen.core import Structure

    from matdisc.data.bases import base_row
    from matdisc.sample.substitution import substitution_samples

    section = call.section("sample")
    base = call.wildcard("base")
    row = base_row(read_table(call.input("bases"), "base_compounds"), base)
    started = time.perf_counter()
    frame, method = substitution_samples(
        base,
        Structure.from_dict(json.loads(row["structure_json"])),
        n_max=int(section["n_samples"]),
        threshold=float(section["substitution_threshold"]),
        max_shift=int(section["substitution_max_shift"]),
    )
    seconds = time.perf_counter() - started
    log.info("%s: %d substituted structures (%s) in %.1f s", base, len(frame), method, seconds)
    write_table(
        frame,
        call.output("substitution"),
        "substitutions",
        metadata={"method": method, "seconds": seconds, "sample": section, "seed": call.seed},
    )
