"""Device choice and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from matdisc.errors import UserError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when one is present, else the CPU.

    An explicit ``cuda``/``cuda:N`` on a machine without CUDA is a user error (the config
    asks for hardware that is not there), not a silent fallback.
    """
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"train.device is '{spec}' but no CUDA device is available here; "
            "set train.device: auto (or cpu) in config/config.yaml."
        )
    try:
        return torch.device(spec)
    except RuntimeError as exc:
        raise UserError(
            f"train.device '{spec}' is not a device; use auto, cpu or cuda[:N]."
        ) from exc


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
