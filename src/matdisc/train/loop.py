"""One training loop for every model in matdisc.

:func:`fit` trains with Adam, validates every epoch, keeps the best weights, stops early
when the validation loss stops improving, and checkpoints every epoch so that a killed
job resumes exactly where it stopped (same weights, optimizer state, random streams and
step count as an uninterrupted run).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from matdisc import __version__
from matdisc.errors import UserError
from matdisc.io.atomic import atomic_path
from matdisc.train.device import autocast, resolve_bf16, resolve_device, seed_everything

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, dict[str, float]]]


LR_SCHEDULES = ("constant", "cosine")


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation settings of one training run."""

    epochs: int
    lr: float
    batch_size: int
    patience: int | None  # epochs without val improvement before stopping; None = never
    weight_decay: float
    device: str
    bf16: bool | str  # True, False or "auto" (see matdisc.train.device.resolve_bf16)
    seed: int
    grad_clip: float | None
    num_threads: int
    max_minutes: float | None  # wall-time budget, checked at epoch ends
    # constant = lr throughout; cosine = lr decayed per step along half a cosine to
    # lr_final x lr at the last step of the last epoch (a max_minutes stop cuts it short)
    lr_schedule: str
    lr_final: float

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise UserError(
                f"training needs epochs >= 0, batch_size >= 1 and lr > 0 "
                f"(got {self.epochs}, {self.batch_size}, {self.lr}); fix the model's config section."
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got "
                f"'{self.lr_schedule}'; fix the model's config section."
            )
        if not 0.0 <= self.lr_final <= 1.0:
            raise UserError(
                f"lr_final is a fraction of lr in [0, 1], got {self.lr_final}; "
                "fix the model's config section."
            )


def lr_factor(config: TrainConfig, step: float, total_steps: int) -> float:
    """Multiplier of ``config.lr`` at optimiser step ``step`` (0-based) of ``total_steps``."""
    if config.lr_schedule == "constant" or total_steps <= 1:
        return 1.0
    progress = min(step / (total_steps - 1), 1.0)
    return config.lr_final + (1.0 - config.lr_final) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class FitResult:
    """What a training run did; ``history`` has one dict per epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    epochs_run: int = 0
    stopped_early: bool = False
    #: stopped by the wall-clock cap (``max_minutes``): the result depends on machine speed
    time_capped: bool = False
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return int(sum(h.get("steps", 0) for h in self.history))


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "loader": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _batches(loader: DataLoader, desc: str) -> Iterator[Any]:
    yield from tqdm(loader, desc=desc, leave=False, mininterval=2.0, disable=None)


def _run_epoch(
    model: nn.Module,
    loss_fn: LossFn,
    loader: DataLoader,
    device: torch.device,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer | None,
    desc: str,
    bf16: bool,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; trains when ``optimizer`` is given. Returns weighted means."""
    training = optimizer is not None
    model.train(training)
    totals: dict[str, float] = {}
    count = 0
    steps = 0
    grad = contextlib.nullcontext() if training else torch.no_grad()
    with grad:
        for batch in _batches(loader, desc):
            with autocast(device, bf16):
                loss, metrics = loss_fn(model, batch, device)
            if not torch.isfinite(loss):
                raise UserError(
                    f"the {desc} loss became {loss.item()} at step {steps}; "
                    "lower the learning rate in the model's config section."
                )
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                steps += 1
            n = _batch_len(batch)
            count += n
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * n
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value) * n
    means = {k: v / max(count, 1) for k, v in totals.items()}
    means["steps"] = float(steps)
    means["samples"] = float(count)
    return means


def _batch_len(batch: Any) -> int:
    """Number of samples in a batch (first tensor's leading dimension, or len)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return _batch_len(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    if hasattr(batch, "num_graphs"):
        return int(batch.num_graphs)
    return len(batch)


def fit(
    *,
    model: nn.Module,
    loss_fn: LossFn,
    train_set: Dataset,
    val_set: Dataset | None,
    config: TrainConfig,
    resume_path: Path | str,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    meta: dict[str, Any] | None = None,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` and leave the best-validation weights in it.

    ``loss_fn(model, batch, device) -> (loss, metrics)`` is used for training (train mode,
    with gradients) and validation (eval mode, no gradients). A checkpoint is written to
    ``resume_path`` after every epoch; if it exists when called, training resumes from it.
    """
    resume_path = Path(resume_path)
    torch.set_num_threads(max(1, config.num_threads))
    device = resolve_device(config.device)
    bf16 = resolve_bf16(config.bf16, device)
    log.info("%s: training on %s, bf16 autocast %s", desc, device, "on" if bf16 else "off")
    seed_everything(config.seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=collate_fn,
        drop_last=len(train_set) > config.batch_size,  # BatchNorm needs > 1 sample
    )
    total_steps = config.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step, total_steps)
    )
    val_loader = (
        DataLoader(val_set, batch_size=config.batch_size, shuffle=False, collate_fn=collate_fn)
        if val_set is not None and len(val_set) > 0
        else None
    )

    result = FitResult()
    best_loss = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0
    start_epoch = 0
    elapsed_before = 0.0
    ckpt = _load_resume(resume_path, config, meta, desc)
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if "scheduler" in ckpt:
            scheduler.load_state_dict(ckpt["scheduler"])
        best_state = ckpt["best_state_dict"]
        best_loss = ckpt["best_loss"]
        bad_epochs = ckpt["bad_epochs"]
        start_epoch = ckpt["epoch"]
        elapsed_before = ckpt["seconds"]
        result.history = ckpt["history"]
        result.best_epoch = ckpt["best_epoch"]
        _set_rng_state(ckpt["rng"], generator)
        log.info("%s: resuming from %s after epoch %d", desc, resume_path, start_epoch)
        if ckpt.get("stopped"):
            start_epoch = config.epochs  # it had stopped early: nothing left to do
            result.stopped_early = True
            result.time_capped = bool(ckpt.get("time_capped", False))

    started = time.perf_counter()
    epoch = start_epoch
    for epoch in range(start_epoch, config.epochs):
        train_metrics = _run_epoch(
            model,
            loss_fn,
            train_loader,
            device,
            config,
            optimizer,
            f"{desc} epoch {epoch + 1}",
            bf16,
            scheduler,
        )
        val_metrics = (
            _run_epoch(model, loss_fn, val_loader, device, config, None, f"{desc} val", bf16)
            if val_loader is not None
            else {"loss": train_metrics["loss"]}
        )
        row = {"epoch": float(epoch + 1), "steps": train_metrics["steps"]}
        row["lr"] = float(optimizer.param_groups[0]["lr"])
        row.update({f"train_{k}": v for k, v in train_metrics.items() if k != "steps"})
        row.update({f"val_{k}": v for k, v in val_metrics.items() if k not in ("steps",)})
        seconds = elapsed_before + time.perf_counter() - started
        row["seconds"] = seconds
        result.history.append(row)
        val_loss = val_metrics["loss"]
        if val_loss < best_loss:
            best_loss = val_loss
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            result.best_epoch = epoch + 1
            bad_epochs = 0
        else:
            bad_epochs += 1
        log.info(
            "%s epoch %d/%d: %s",
            desc,
            epoch + 1,
            config.epochs,
            ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch",)),
        )
        stop_patience = config.patience is not None and bad_epochs >= config.patience
        stop_time = config.max_minutes is not None and seconds >= 60 * config.max_minutes
        _save_resume(
            resume_path,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            best_state=best_state,
            best_loss=best_loss,
            best_epoch=result.best_epoch,
            bad_epochs=bad_epochs,
            epoch=epoch + 1,
            seconds=seconds,
            history=result.history,
            rng=_rng_state(generator),
            config=config,
            meta=meta,
            stopped=stop_patience or stop_time,
            time_capped=stop_time and not stop_patience,
        )
        if stop_patience:
            log.info(
                "%s: validation loss has not improved for %d epochs; stopping", desc, bad_epochs
            )
            result.stopped_early = True
            break
        if stop_time:
            log.warning(
                "%s: stopped by the wall-clock cap of %.1f min after epoch %d of %d; the "
                "model depends on this machine's speed and load (set max_minutes: null for "
                "an epoch budget only)",
                desc,
                config.max_minutes,
                epoch + 1,
                config.epochs,
            )
            result.stopped_early = True
            result.time_capped = True
            break

    result.epochs_run = len(result.history)
    result.seconds = result.history[-1]["seconds"] if result.history else 0.0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


#: Settings that only bound how long a run goes on (or where): a resume file written under
#: other values of these continues; any other difference means another model.
_BUDGET_KEYS = frozenset({"epochs", "max_minutes", "patience", "num_threads", "device"})


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like trees (budget keys aside)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted((set(saved) | set(current)) - _BUDGET_KEYS, key=str)
        return [
            d for k in keys for d in _differences(saved.get(k), current.get(k), f"{prefix}{k}.")
        ]
    same_length_lists = (
        isinstance(saved, (list, tuple))
        and isinstance(current, (list, tuple))
        and len(saved) == len(current)
    )
    if same_length_lists:
        return [d for a, b in zip(saved, current, strict=True) for d in _differences(a, b, prefix)]
    return [] if saved == current else [prefix.rstrip(".") or "(value)"]


def _load_resume(path: Path, config: TrainConfig, meta: Any, desc: str) -> dict | None:
    """The resume checkpoint at ``path``, or None when there is none or it was written for
    other settings: then it is renamed to ``<path>.stale`` (kept, not loaded), since
    continuing from it would train another model, or fail on its shapes."""
    if not path.is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    saved = {"train": ckpt.get("train_config", {}), "meta": ckpt.get("meta")}
    changed = _differences(saved, {"train": asdict(config), "meta": meta})
    if not changed:
        return ckpt
    stale = path.with_name(path.name + ".stale")
    path.replace(stale)
    log.warning(
        "%s: %s was written with other settings (%s); kept as %s, training starts afresh",
        desc,
        path,
        ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else ""),
        stale,
    )
    return None


def _save_resume(path: Path, **state: Any) -> None:
    config: TrainConfig = state.pop("config")
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in state.pop("model").state_dict().items()},
        "optimizer": state.pop("optimizer").state_dict(),
        "scheduler": state.pop("scheduler").state_dict(),
        "best_state_dict": state.pop("best_state"),
        "train_config": asdict(config),
        "version": __version__,
        **state,
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
