"""Heap settings for many large, short-lived tensors (glibc's allocator).

PyTorch on CPU allocates every intermediate tensor with malloc. glibc serves blocks
above its mmap threshold (128 KiB, raised dynamically to at most 32 MiB) with fresh
mmap'ed pages and gives freed memory above the trim threshold back to the system, so a
loop that allocates the same (E, 32) tensors every step pays page faults on each of them.
The ContinuouSP sampler does: about 10 % of its time at 64 chains went to page faults.
:func:`retain_freed_memory` raises both thresholds, so freed blocks are reused. The
price is that the process keeps its peak heap until it exits, which is what a
Snakemake job or a benchmark wants.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks below this are served from the heap (and kept for reuse when freed).
MMAP_THRESHOLD = 1 << 30
#: Free memory at the top of the heap is returned to the system only above this.
TRIM_THRESHOLD = 4 << 30


@cache
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where not glibc.

    Numbers do not change (only where memory comes from); called once per process.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no glibc mallopt here (%s): heap thresholds left as they are", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; the values must fit a C int (< 2 GiB)
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, min(TRIM_THRESHOLD, 2**31 - 1)) == 1
    if not ok:
        log.debug("mallopt refused the heap thresholds")
    return ok
