"""Errors a user can cause and fix.

A :class:`UserError` carries one sentence that says what is wrong and what to change.
The command line prints that sentence (no traceback) and exits with status 2; every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input (config, data, environment) described in one actionable sentence."""


class StageNotImplementedError(UserError, NotImplementedError):
    """A pipeline stage whose implementation has not landed yet."""

    def __init__(self, stage: str) -> None:
        super().__init__(
            f"The '{stage}' stage is not implemented in this version of matdisc yet; "
            f"request an earlier target (for example results/data/structures.parquet) "
            f"or update matdisc."
        )
        self.stage = stage
