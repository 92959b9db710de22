"""Stage entry points; see the module docstring of the package."""

from __future__ import annotations

from matdisc.errors import StageNotImplementedError
from matdisc.stage import StageCall


def write_inputs(call: StageCall) -> None:
    raise StageNotImplementedError("qe")


def collect_manifest(call: StageCall) -> None:
    raise StageNotImplementedError("qe")


def relax(call: StageCall) -> None:
    raise StageNotImplementedError("qe")
