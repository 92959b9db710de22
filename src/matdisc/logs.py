"""Logging set-up shared by the command line and the Snakemake rules."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


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
    # Third-party libraries are chatty at INFO; keep their warnings.
    for noisy in ("urllib3", "matplotlib", "distributed", "numexpr", "fsspec", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
