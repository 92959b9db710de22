"""Device choice, bf16 autocast and seeding."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

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


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 matrix hardware backs autocast on ``device``.

    CUDA: the GPU supports bf16 (Ampere and later). CPU: the oneDNN backend is there and
    the CPU has AMX tiles (Sapphire Rapids and later), where bf16 training ran 1.4-1.5x
    the samples/s of channels-last fp32 (2.6-2.7x plain fp32) in
    ``benchmarks/bench_training.py``; without AMX, bf16 on the CPU is emulated and
    slower, so it stays off.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(torch.backends.mkldnn.is_available() and amx is not None and amx())
    return False


def resolve_bf16(spec: bool | str, device: torch.device) -> bool:
    """``train.bf16``: true/false as given; ``auto`` -> :func:`bf16_supported`."""
    if isinstance(spec, bool):
        return spec
    if spec == "auto":
        return bf16_supported(device)
    raise UserError(f"train.bf16 is {spec!r}; use auto, true or false.")


def inference_bf16(train: dict) -> bool:
    """Whether the UNet segments under bf16 autocast at inference (sampling, evaluation):
    the config's ``train`` section's ``bf16`` resolved on its ``device``, as in training."""
    return resolve_bf16(train["bf16"], resolve_device(train["device"]))


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``enabled`` (:func:`resolve_bf16`), else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def model_threads_beside(workers: int) -> Iterator[None]:
    """Half the caller's torch CPU threads (at least one) while ``workers`` > 1 worker
    processes share the cores with the model passes, restored on exit.

    Two torch threads beside two busy workers on two cores wait on each other at every
    operation; one thread does not (``benchmarks/bench_evaluate.py`` runs both).
    """
    before = torch.get_num_threads()
    if int(workers) > 1:
        torch.set_num_threads(max(1, before // 2))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_channels_last(spec: bool | str, bf16: bool) -> bool:
    """A section's ``channels_last``; ``auto`` = channels-last 3-D unless bf16 autocast is on
    (``benchmarks/bench_training.py``: channels-last is 1.6-1.8x the contiguous layout in
    fp32 on 2 CPU cores, and slower than it under bf16 on AMX)."""
    if isinstance(spec, bool):
        return spec
    if spec == "auto":
        return not bf16
    raise UserError(f"channels_last is {spec!r}; use auto, true or false.")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
