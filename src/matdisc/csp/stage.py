"""Stage entry points; see the module docstring of the package."""

from __future__ import annotations

from matdisc.errors import StageNotImplementedError
from matdisc.stage import StageCall


def train_ebm(call: StageCall) -> None:
    raise StageNotImplementedError("csp")


def predict(call: StageCall) -> None:
    raise StageNotImplementedError("csp")


def evaluate(call: StageCall) -> None:
    raise StageNotImplementedError("csp")
