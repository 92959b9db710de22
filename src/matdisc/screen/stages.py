"""Stage entry points; see the module docstring of the package."""

from __future__ import annotations

from matdisc.errors import StageNotImplementedError
from matdisc.stage import StageCall


def train_cgcnn(call: StageCall) -> None:
    raise StageNotImplementedError("train_cgcnn/screen")


def screen(call: StageCall) -> None:
    raise StageNotImplementedError("train_cgcnn/screen")


def collect(call: StageCall) -> None:
    raise StageNotImplementedError("train_cgcnn/screen")
