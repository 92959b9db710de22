"""Progress of long loops: a bar on an interactive terminal, a log line per tenth.

A tqdm bar redraws itself with carriage returns, which fill a rule's log file or a Slurm
output file with one long line. :func:`progress` shows the bar only when stderr is a
terminal (tqdm's ``disable=None``) and, whatever the terminal, logs one summary line each
time another tenth of the loop is done (count, share, elapsed seconds), so the rule logs
say how far a long job got.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

log = logging.getLogger(__name__)

#: A summary line each time this share of the loop more is done.
LOG_STEP = 0.1


def progress(
    iterable: Iterable[T],
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    logger: logging.Logger | None = None,
) -> Iterator[T]:
    """Iterate ``iterable`` with a terminal bar and a log line per tenth (``total``: its
    length when it has none; without one, a line at the end only)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    logger = logger or log
    started = time.perf_counter()
    next_mark = LOG_STEP
    done = 0
    for item in tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, disable=None):
        yield item
        done += 1
        if total and done / total >= next_mark - 1e-9:
            logger.info(
                "%s: %d of %d %s (%.0f %%) in %.0f s",
                desc, done, total, unit, 100 * done / total, time.perf_counter() - started,
            )  # fmt: skip
            while next_mark <= done / total + 1e-9:
                next_mark += LOG_STEP
    if not total:
        logger.info("%s: %d %s in %.0f s", desc, done, unit, time.perf_counter() - started)
