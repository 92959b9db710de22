"""Training of the eight CGCNN property models (Court et al. 2020, Table 1).

One model per property, each trained on the materials that have that label (masked),
using the table's train/val/test split: val for early stopping and model selection,
test for the reported metrics. Formation energy and energy per atom are trained from
scratch; the other six start from the formation-energy model's embedding and
convolution (transfer learning) with a fresh dense head. K, G and ε are learned as
log10. Targets are standardised with the mean and standard deviation of the training
labels; the scaler is saved in the checkpoint. A property with fewer than
``min_labels`` training labels is not trained: the reason is logged, written to the
metrics table and the model manifest, and its predictions are NaN.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from matdisc.errors import UserError
from matdisc.graphs import CrystalGraph, GraphStore, build_graph, element_feature_table
from matdisc.io.atomic import atomic_write_text
from matdisc.models.cgcnn import CGCNN
from matdisc.screen.properties import SPECS, TRANSFER_SOURCE, PropertySpec, mae, smape_percent
from matdisc.train import TrainConfig, fit, save_model, seed_everything

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(kw_only=True)
class CGCNNSettings:
    """The ``cgcnn`` config section (see config/schema.yaml for the meaning of each key)."""

    cutoff_angstrom: float
    max_neighbors: int
    tie_tolerance_angstrom: float
    gaussian_step_angstrom: float
    gaussian_width_angstrom: float
    node_features: int
    hidden_features: int
    n_conv: int
    epochs: int
    finetune_epochs: int
    batch_size: int
    lr: float
    finetune_lr: float
    weight_decay: float
    patience: int | None
    min_labels: int
    transfer: bool
    max_minutes_per_property: float | None
    properties: list[str]

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> CGCNNSettings:
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"unknown cgcnn config keys {unknown}; check their spelling.")
        settings = cls(**section)
        bad = [p for p in settings.properties if p not in SPECS]
        if bad:
            raise UserError(f"cgcnn.properties has unknown names {bad}; choose from {list(SPECS)}.")
        return settings

    @property
    def graph(self) -> dict[str, float]:
        return {
            "cutoff": self.cutoff_angstrom,
            "max_neighbors": self.max_neighbors,
            "tie_tolerance": self.tie_tolerance_angstrom,
        }

    def new_model(self) -> CGCNN:
        return CGCNN(
            element_features=element_feature_table().tolist(),
            node_features=self.node_features,
            hidden_features=self.hidden_features,
            n_conv=self.n_conv,
            cutoff=self.cutoff_angstrom,
            gaussian_step=self.gaussian_step_angstrom,
            gaussian_width=self.gaussian_width_angstrom,
        )


class LabelledCrystals(Dataset):
    """Crystals (indices into a :class:`GraphStore`) with standardised targets."""

    def __init__(self, index: np.ndarray, target: np.ndarray) -> None:
        self.index = np.asarray(index, dtype=np.int64)
        self.target = np.asarray(target, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[int, float]:
        return int(self.index[i]), float(self.target[i])


class GraphCollate:
    """DataLoader collate: [(crystal index, target)] -> (targets (B,), batched graph)."""

    def __init__(self, store: GraphStore) -> None:
        self.store = store

    def __call__(self, items: list[tuple[int, float]]) -> tuple[torch.Tensor, CrystalGraph]:
        index = np.fromiter((i for i, _ in items), dtype=np.int64, count=len(items))
        target = torch.tensor([t for _, t in items], dtype=torch.float32)
        return target, self.store.batch(index)


def mse_loss(
    model: torch.nn.Module, batch: tuple[torch.Tensor, CrystalGraph], device: torch.device
) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE on standardised targets; also the MAE (in standard deviations)."""
    target, graph = batch
    target = target.to(device)
    pred = model(graph.to(device)).float()
    loss = torch.nn.functional.mse_loss(pred, target)
    return loss, {"mae_std": float((pred - target).abs().mean().detach())}


@torch.no_grad()
def predict_store(
    model: CGCNN, store: GraphStore, index: np.ndarray, *, batch_size: int, device: torch.device
) -> np.ndarray:
    """Raw model outputs (standardised scale) for crystals ``index`` of ``store``."""
    model.eval()
    out = []
    for start in range(0, len(index), batch_size):
        graph = store.batch(index[start : start + batch_size]).to(device)
        out.append(model(graph).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


@dataclass
class PropertyResult:
    """One row of the metrics table."""

    property: str
    trained: bool
    reason: str | None
    target_scale: str
    mae: float = float("nan")
    smape_percent: float = float("nan")
    mae_original_units: float = float("nan")
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    transfer_from: str | None = None
    epochs_run: int = 0
    train_seconds: float = 0.0
    paper_mae: float = float("nan")
    paper_smape_percent: float = float("nan")
    paper_n_train: int = 0
    paper_n_test: int = 0
    test_true: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    test_pred: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("test_")}


def train_property(
    spec: PropertySpec,
    *,
    store: GraphStore,
    values: np.ndarray,
    split: np.ndarray,
    settings: CGCNNSettings,
    checkpoint: Path,
    resume_path: Path,
    device: str,
    bf16: bool,
    seed: int,
    source: CGCNN | None = None,
) -> tuple[PropertyResult, CGCNN | None]:
    """Train (or decline to train) one property model; write its checkpoint.

    values: (n_crystals,) labels in column units, NaN where unknown; split: (n_crystals,)
    "train"/"val"/"test". ``source``: the formation-energy model to transfer from.
    """
    result = PropertyResult(
        property=spec.name,
        trained=False,
        reason=None,
        target_scale=spec.scale,
        paper_mae=spec.paper_mae,
        paper_smape_percent=spec.paper_smape_percent,
        paper_n_train=spec.paper_n_train,
        paper_n_test=spec.paper_n_test,
    )
    finite = np.isfinite(values)
    ok = spec.valid(values)
    if (finite & ~ok).any():
        log.info(
            "%s: %d non-positive labels cannot be learned on a log scale; skipped",
            spec.name,
            int((finite & ~ok).sum()),
        )
    idx = {s: np.flatnonzero(ok & (split == s)) for s in ("train", "val", "test")}
    result.n_train, result.n_val, result.n_test = (len(idx[s]) for s in ("train", "val", "test"))
    if result.n_train < settings.min_labels or result.n_test == 0:
        result.reason = (
            f"too few labels: {result.n_train} in the train split and {result.n_test} in the "
            f"test split (cgcnn.min_labels = {settings.min_labels}, and the test split "
            f"must not be empty)"
        )
        log.warning("%s not trained: %s; its predictions will be NaN", spec.name, result.reason)
        return result, None

    target = spec.forward(values[ok])
    full = np.full(len(values), np.nan)
    full[ok] = target
    mean = float(np.mean(full[idx["train"]]))
    std = float(np.std(full[idx["train"]])) or 1.0

    def scaled(which: str) -> LabelledCrystals:
        return LabelledCrystals(idx[which], (full[idx[which]] - mean) / std)

    seed_everything(seed)  # the initial weights depend on the seed only
    model = settings.new_model()
    finetune = spec.transfer and settings.transfer and source is not None
    if finetune:
        copied = model.load_feature_extractor(source)
        result.transfer_from = TRANSFER_SOURCE
        log.info(
            "%s: fine-tuning from %s (%d tensors copied)", spec.name, TRANSFER_SOURCE, len(copied)
        )
    elif spec.transfer and settings.transfer:
        log.warning(
            "%s: no %s model to transfer from; training from scratch", spec.name, TRANSFER_SOURCE
        )
    config = TrainConfig(
        epochs=settings.finetune_epochs if finetune else settings.epochs,
        lr=settings.finetune_lr if finetune else settings.lr,
        batch_size=settings.batch_size,
        patience=settings.patience,
        weight_decay=settings.weight_decay,
        device=device,
        bf16=bf16,
        seed=seed,
        # One intra-op thread: a batch of 64 small graphs gains little from a second one,
        # and on shared cores two threads measured ~10x slower per step (spin-waiting).
        num_threads=1,
        max_minutes=settings.max_minutes_per_property,
        grad_clip=None,
        lr_schedule="constant",
        lr_final=1.0,
    )
    started = time.perf_counter()
    fitted = fit(
        model=model,
        loss_fn=mse_loss,
        train_set=scaled("train"),
        val_set=scaled("val") if result.n_val else None,
        config=config,
        resume_path=resume_path,
        collate_fn=GraphCollate(store),
        meta={"property": spec.name},
        desc=f"cgcnn {spec.name}",
    )
    result.epochs_run = fitted.epochs_run
    result.train_seconds = time.perf_counter() - started
    dev = next(model.parameters()).device
    pred = predict_store(model, store, idx["test"], batch_size=512, device=dev) * std + mean
    true = full[idx["test"]]
    result.trained = True
    result.mae = mae(pred, true)
    result.smape_percent = smape_percent(pred, true)
    result.mae_original_units = mae(spec.inverse(pred), values[idx["test"]])
    result.test_true, result.test_pred = true, pred
    save_model(
        checkpoint,
        model,
        extra={
            "property": spec.name,
            "target_scale": spec.scale,
            "target_mean": mean,
            "target_std": std,
            "graph": settings.graph,
            "transfer_from": result.transfer_from,
            "n_train": result.n_train,
            "n_val": result.n_val,
            "n_test": result.n_test,
            "best_epoch": fitted.best_epoch,
            "test_mae": result.mae,
            "settings": settings.__dict__,
        },
    )
    resume_path.unlink(missing_ok=True)
    log.info(
        "%s: test MAE %.4g (%s; seed %.3g), SMAPE %.3g%%, n train/val/test %d/%d/%d, %.0f s",
        spec.name, result.mae, spec.scale, spec.paper_mae, result.smape_percent,
        result.n_train, result.n_val, result.n_test, result.train_seconds,
    )  # fmt: skip
    return result, model


def plot_parity(path: Path, result: PropertyResult) -> None:
    """Predicted vs true on the test split (or a note why the model is not trained)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matdisc.io.atomic import atomic_path

    spec = SPECS[result.property]
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    if result.trained:
        true, pred = result.test_true, result.test_pred
        lo = float(min(true.min(), pred.min()))
        hi = float(max(true.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.scatter(true, pred, s=8, alpha=0.6)
        ax.set_xlabel(f"true {spec.label}")
        ax.set_ylabel(f"predicted {spec.label}")
        ax.set_title(
            f"{spec.name}: MAE {result.mae:.3g} (seed {spec.paper_mae:.3g}), n={len(true)}",
            fontsize=9,
        )
    else:
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"{spec.name}\nnot trained:\n{result.reason}",
            ha="center",
            va="center",
            wrap=True,
            fontsize=8,
        )
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def train_all(
    table: pd.DataFrame,
    *,
    settings: CGCNNSettings,
    model_dir: Path,
    metrics_dir: Path,
    device: str = "auto",
    bf16: bool = False,
    threads: int = 1,
    seed: int = 0,
) -> pd.DataFrame:
    """Train every property model on ``table`` (a STRUCTURES table); return the metrics.

    Writes ``model_dir/<property>.pt`` for trained properties, ``model_dir/manifest.json``
    for all, and ``metrics_dir/cgcnn_parity_<property>.png``.
    """
    from matdisc.graphs import parse_structures

    arrays, ok, bad = parse_structures(table["structure_json"].tolist())
    if bad:
        reasons = pd.Series(list(bad.values())).value_counts()
        log.warning(
            "%d structures cannot be used and are skipped: %s",
            len(bad),
            "; ".join(f"{n}x {r}" for r, n in reasons.head(5).items()),
        )
    if not ok:
        raise UserError(
            "no structure of the input table can be read; re-run the download_structures rule."
        )
    rows = table.iloc[ok]
    torch.set_num_threads(max(1, threads))  # graph building: large tensor ops
    started = time.perf_counter()
    graph = build_graph(arrays, **settings.graph)
    store = GraphStore(graph)
    log.info(
        "built crystal graphs of %d crystals (%d edges) in %.1f s",
        len(store),
        graph.edge_center.shape[0],
        time.perf_counter() - started,
    )
    split = rows["split"].to_numpy().astype(str)
    model_dir.mkdir(parents=True, exist_ok=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    resume_dir = Path(str(model_dir) + ".resume")
    resume_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"graph": settings.graph, "properties": {}}
    results: list[PropertyResult] = []
    source: CGCNN | None = None
    order = sorted(settings.properties, key=lambda p: p != TRANSFER_SOURCE)  # source first
    for offset, name in enumerate(order):
        spec = SPECS[name]
        result, model = train_property(
            spec,
            store=store,
            values=rows[name].to_numpy(dtype=np.float64),
            split=split,
            settings=settings,
            checkpoint=model_dir / f"{name}.pt",
            resume_path=resume_dir / f"{name}.pt",
            device=device,
            bf16=bf16,
            seed=seed + offset,
            source=source,
        )
        if name == TRANSFER_SOURCE and model is not None:
            source = model
        results.append(result)
        manifest["properties"][name] = {
            "trained": result.trained,
            "reason": result.reason,
            "checkpoint": f"{name}.pt" if result.trained else None,
        }
        plot_parity(metrics_dir / f"cgcnn_parity_{name}.png", result)
    for name in SPECS:
        if name not in manifest["properties"]:
            reason = "not in cgcnn.properties"
            manifest["properties"][name] = {"trained": False, "reason": reason, "checkpoint": None}
            spec = SPECS[name]
            results.append(
                PropertyResult(
                    property=name,
                    trained=False,
                    reason=reason,
                    target_scale=spec.scale,
                    paper_mae=spec.paper_mae,
                    paper_smape_percent=spec.paper_smape_percent,
                    paper_n_train=spec.paper_n_train,
                    paper_n_test=spec.paper_n_test,
                )
            )
            plot_parity(metrics_dir / f"cgcnn_parity_{name}.png", results[-1])
    atomic_write_text(model_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    if resume_dir.is_dir() and not any(resume_dir.iterdir()):
        resume_dir.rmdir()
    frame = pd.DataFrame([r.row() for r in results])
    frame["property"] = pd.Categorical(frame["property"], categories=list(SPECS), ordered=True)
    return frame.sort_values("property").assign(property=lambda f: f["property"].astype(str))
