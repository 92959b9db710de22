"""Property prediction with the trained CGCNN models (used by the filter and by screening).

    from matdisc.screen import predict
    frame = predict(structures, ["e_form_ev_per_atom"], model_dir="results/models/cgcnn")

``structures`` may be pymatgen Structures, ``Structure.as_dict()`` mappings or their JSON
strings. The frame has one row per structure (same order) and one column per property
(units in the names). A property whose model was not trained, or a structure that cannot
be read, gives NaN (the reason is logged). Refractive index and dielectric constant are
NaN where the predicted band gap is at most ``zero_gap_threshold_ev`` (as in the seed: a
metal has neither).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from matdisc.errors import UserError
from matdisc.graphs import build_graph, parse_structures
from matdisc.screen.properties import SPECS
from matdisc.screen.train import MANIFEST
from matdisc.train import load_model, resolve_device

log = logging.getLogger(__name__)

GAP = "band_gap_ev"
NEEDS_GAP = ("refractive_index", "dielectric_total")


class PropertyPredictor:
    """The CGCNN models of one training run (a ``results/models/cgcnn`` directory)."""

    def __init__(
        self, model_dir: Path | str, *, device: str = "auto", num_threads: int | None = None
    ) -> None:
        self.model_dir = Path(model_dir)
        path = self.model_dir / MANIFEST
        if not path.is_file():
            raise UserError(
                f"{path} does not exist; run the train_cgcnn rule (matdisc train-cgcnn) first."
            )
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        self.device = resolve_device(device)
        if num_threads:
            torch.set_num_threads(num_threads)
        self.graph_settings: dict[str, Any] = self.manifest["graph"]
        self._models: dict[str, tuple[torch.nn.Module, dict[str, Any]]] = {}

    def reason_not_trained(self, name: str) -> str | None:
        """None when ``name`` has a trained model, else why not."""
        entry = self.manifest["properties"].get(name)
        if entry is None:
            return "no entry in the model manifest"
        return None if entry["trained"] else entry["reason"]

    def _model(self, name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
        if name not in self._models:
            ckpt = self.model_dir / self.manifest["properties"][name]["checkpoint"]
            model, extra = load_model(ckpt, device=self.device)
            if extra.get("graph") != self.graph_settings:
                raise UserError(
                    f"{ckpt} was trained with graph settings {extra.get('graph')} but the "
                    f"manifest says {self.graph_settings}; re-run train_cgcnn."
                )
            self._models[name] = (model, extra)
        return self._models[name]

    @torch.no_grad()
    def predict(
        self,
        structures: Sequence[Any],
        properties: Sequence[str] | None = None,
        *,
        batch_size: int = 256,
        zero_gap_threshold_ev: float | None = 0.1,
    ) -> pd.DataFrame:
        """Predictions, (n_structures rows) x (properties columns), in column units.

        zero_gap_threshold_ev: refractive index and dielectric constant become NaN where
        the predicted gap is <= this; None disables the rule.
        """
        properties = list(SPECS) if properties is None else list(properties)
        unknown = [p for p in properties if p not in SPECS]
        if unknown:
            raise UserError(f"unknown properties {unknown}; choose from {list(SPECS)}.")
        wanted = list(properties)
        apply_gap_rule = zero_gap_threshold_ev is not None and any(p in NEEDS_GAP for p in wanted)
        if apply_gap_rule and GAP not in wanted:
            wanted.append(GAP)
        out = {p: np.full(len(structures), np.nan) for p in wanted}
        runnable = []
        for p in wanted:
            reason = self.reason_not_trained(p)
            if reason is None:
                runnable.append(p)
            else:
                log.warning("%s predictions are NaN: the model is not trained (%s)", p, reason)
        arrays, ok, bad = parse_structures(structures)
        if bad:
            log.warning(
                "%d structures cannot be read; their predictions are NaN (e.g. #%d: %s)",
                len(bad),
                *next(iter(bad.items())),
            )
        ok = np.asarray(ok, dtype=np.int64)
        if runnable and len(ok):
            for start in range(0, len(ok), batch_size):
                part = np.arange(start, min(start + batch_size, len(ok)))
                graph = build_graph(arrays.take(part), **self.graph_settings).to(self.device)
                for p in runnable:
                    model, extra = self._model(p)
                    raw = model(graph).float().cpu().numpy().astype(np.float64)
                    scaled = raw * extra["target_std"] + extra["target_mean"]
                    out[p][ok[part]] = SPECS[p].inverse(scaled)
        if apply_gap_rule:
            if self.reason_not_trained(GAP) is not None:
                log.warning(
                    "no band-gap model: the zero-gap rule for %s cannot be applied",
                    ", ".join(p for p in wanted if p in NEEDS_GAP),
                )
            else:
                metal = out[GAP] <= zero_gap_threshold_ev
                for p in wanted:
                    if p in NEEDS_GAP:
                        out[p][metal] = np.nan
                if metal.any():
                    log.info(
                        "%d structures with predicted gap <= %.3g eV: refractive index "
                        "and dielectric constant set to NaN",
                        int(metal.sum()),
                        zero_gap_threshold_ev,
                    )
        return pd.DataFrame({p: out[p] for p in properties})


def predict(
    structures: Sequence[Any],
    properties: Sequence[str] | None = None,
    *,
    model_dir: Path | str,
    device: str = "auto",
    batch_size: int = 256,
    zero_gap_threshold_ev: float | None = 0.1,
    num_threads: int | None = None,
) -> pd.DataFrame:
    """One-call form of :meth:`PropertyPredictor.predict` (loads the models each call)."""
    predictor = PropertyPredictor(model_dir, device=device, num_threads=num_threads)
    return predictor.predict(
        structures, properties, batch_size=batch_size, zero_gap_threshold_ev=zero_gap_threshold_ev
    )
