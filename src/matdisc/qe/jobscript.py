"""The Slurm batch script written next to each ``pw.in``.

It runs in the folder it is submitted from (Slurm's default working directory), so it is
submitted from the candidate's folder::

    for d in results/qe/*/*/; do (cd "$d" && sbatch job.sbatch); done

and, like the ``qe_relax`` rule, it reads pw.x's output to decide whether the run
finished: pw.x can exit 0 after an error.
"""

from __future__ import annotations

import re

from matdisc.qe.settings import SlurmSettings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def job_script(*, job_name: str, slurm: SlurmSettings) -> str:
    """Text of the batch script (bash) for one candidate."""
    name = _UNSAFE.sub("_", job_name)[:64] or "pw"
    directives = [
        f"#SBATCH --job-name=qe-{name}",
        f"#SBATCH --ntasks={slurm.ntasks}",
        "#SBATCH --cpus-per-task=1",
        f"#SBATCH --time={slurm.time}",
        f"#SBATCH --mem-per-cpu={slurm.mem_per_cpu_mb}M",
        "#SBATCH --output=slurm-%j.out",
    ]
    if slurm.partition:
        directives.append(f"#SBATCH --partition={slurm.partition}")
    if slurm.account:
        directives.append(f"#SBATCH --account={slurm.account}")
    body = f"""\
#!/bin/bash
# pw.x vc-relax of one matdisc candidate. Submit from this folder: sbatch job.sbatch
{chr(10).join(directives)}
set -euo pipefail

if [ ! -f pw.in ]; then
    echo "job.sbatch: no pw.in in $(pwd); submit from the folder that holds pw.in" >&2
    exit 1
fi
export OMP_NUM_THREADS=1
status=0
{slurm.launcher} pw.x -in pw.in > pw.out 2> pw.err || status=$?

# pw.x can exit 0 after an error, and non-zero after a finished run: read its output.
if ! grep -q "JOB DONE" pw.out; then
    echo "pw.x stopped before JOB DONE (exit status $status); see pw.out and pw.err" >&2
    exit 1
fi
if grep -q "Error in routine" pw.out; then
    echo "pw.x reported an error; see pw.out" >&2
    exit 1
fi
if grep -q "convergence NOT achieved" pw.out; then
    echo "a self-consistency cycle did not converge; see pw.out" >&2
    exit 1
fi
if ! grep -q "bfgs converged" pw.out; then
    echo "the relaxation did not converge; see pw.out" >&2
    exit 1
fi
echo "converged: $(grep 'bfgs converged' pw.out)"
"""
    return body
