"""Stage entry points; see the module docstring of the package."""

from __future__ import annotations

from matdisc.errors import StageNotImplementedError
from matdisc.stage import StageCall


def run(call: StageCall) -> None:
    raise StageNotImplementedError("filter")


def collect_funnel(call: StageCall) -> None:
    raise StageNotImplementedError("filter")
