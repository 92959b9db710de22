"""``python -m matdisc``: the same as the ``matdisc`` command."""

from __future__ import annotations

import sys

from matdisc.cli import main

sys.exit(main())
