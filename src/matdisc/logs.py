"""Logging set-up shared by the command line and the Snakemake rules."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

#: Library warnings that say nothing to a user of matdisc (message regex, category):
#: spglib's notice about its own error handling, pymatgen's note that noble gases have no
#: Pauling electronegativity (asked for every composition it checks).
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    ("Set OLD_ERROR_HANDLING to false", DeprecationWarning),
    ("No Pauling electronegativity for", UserWarning),
)


def setup_logging(log_file: Path | str | None = None, *, level: int = logging.INFO) -> None:
    """Log to stderr and, if given, to ``log_file`` (appended, parent created)."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(stream)
    if log_file is not None:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(handler)
    # Other warnings go through logging, so they reach the rule's log file too.
    logging.captureWarnings(True)
    quiet_library_warnings()
    # Third-party libraries are chatty at INFO; keep their warnings.
    for noisy in ("urllib3", "matplotlib", "distributed", "numexpr", "fsspec", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def quiet_library_warnings() -> None:
    """Ignore the :data:`QUIET_WARNINGS` (also in worker processes, which log nothing)."""
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
