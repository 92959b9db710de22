"""Training loop shared by every model: seeding, devices, checkpoints, resume, early stopping."""

from __future__ import annotations

from matdisc.train.checkpoint import load_model, save_model
from matdisc.train.device import resolve_device, seed_everything
from matdisc.train.loop import FitResult, TrainConfig, fit

__all__ = [
    "FitResult",
    "TrainConfig",
    "fit",
    "load_model",
    "resolve_device",
    "save_model",
    "seed_everything",
]
