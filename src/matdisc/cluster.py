"""Checks of the cluster set-up that turn a silent Snakemake hang into one clear error.

The Slurm executor plugin polls job states with ``sacct`` unless the profile says
``slurm-status-command: squeue``. On a cluster without job accounting (no slurmdbd,
``AccountingStorageType=accounting_storage/none``) ``sacct`` only fails, the plugin never
learns that a job finished, and Snakemake waits forever. The workflow calls
:func:`check_slurm_status_command` before it submits anything (``onstart`` in
``workflow/rules/common.smk``).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable

from matdisc.errors import UserError

log = logging.getLogger(__name__)

#: ``sacct`` arguments that ask for nothing but still need working accounting.
SACCT_PROBE = ("sacct", "--noheader", "-X", "--format=JobID", "--starttime", "now")


def check_slurm_status_command(
    executor: str | None,
    status_command: str | None,
    *,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> None:
    """Raise :class:`UserError` when Slurm jobs would be polled with a ``sacct`` that fails.

    Args:
        executor: name of Snakemake's executor plugin (``"slurm"`` on a cluster).
        status_command: the plugin's ``slurm-status-command`` (``None`` = its default).
        run: ``subprocess.run`` (replaceable in tests).
    """
    if executor != "slurm" or status_command not in (None, "sacct"):
        return
    try:
        probe = run(list(SACCT_PROBE), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = str(exc)
    else:
        if probe.returncode == 0:
            return
        reason = (probe.stderr or probe.stdout).strip() or f"exit status {probe.returncode}"
    raise UserError(
        f"Snakemake would poll Slurm jobs with sacct, but sacct does not work on this cluster "
        f"({reason}), so finished jobs would never be noticed; set "
        f"`slurm-status-command: squeue` in the profile (slurm/config.yaml)."
    )
