"""``python -m matdisc``: the same as the ``matdisc`` command."""

from __future__ import annotations

import sys

from matdisc.cli import main

# The guard matters: a spawned worker process (multiprocessing) imports this module again.
if __name__ == "__main__":
    sys.exit(main())
