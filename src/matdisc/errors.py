"""Errors a user can cause and fix.

A :class:`UserError` carries one sentence that says what is wrong and what to change.
The command line prints that sentence (no traceback) and exits with status 2; every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input (config, data, environment) described in one actionable sentence."""
