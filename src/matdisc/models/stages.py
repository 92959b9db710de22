"""Stage entry points; see the module docstring of the package."""

from __future__ import annotations

from matdisc.errors import StageNotImplementedError
from matdisc.stage import StageCall


def train_unet(call: StageCall) -> None:
    raise StageNotImplementedError("train_unet/train_vae")


def train_vae(call: StageCall) -> None:
    raise StageNotImplementedError("train_unet/train_vae")


def evaluate(call: StageCall) -> None:
    raise StageNotImplementedError("train_unet/train_vae")
