"""The Slurm batch script written next to each ``pw.in``.

It runs in the folder it is submitted from (Slurm's default working directory), so it is
submitted from the candidate's folder::

    for d in results/qe/*/*/; do (cd "$d" && sbatch job.sbatch); done

and, like the ``qe_relax`` rule, it reads pw.x's output to decide whether the run
finished: pw.x can exit 0 after an error. It exports ``ESPRESSO_PSEUDO`` (``qe.pseudo_dir``,
else the submitting shell's, else pw.x's default ``~/espresso/pseudo``) and, before pw.x
starts, checks that the family's files are there with the md5 the family publishes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from pathlib import Path

from matdisc.qe.pseudo import PseudoFile
from matdisc.qe.settings import SlurmSettings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def job_script(
    *,
    job_name: str,
    slurm: SlurmSettings,
    pseudo_dir: Path | None,
    files: Iterable[PseudoFile],
    family_label: str,
) -> str:
    """Text of the batch script (bash) for one candidate."""
    if pseudo_dir is None:
        export = 'export ESPRESSO_PSEUDO="${ESPRESSO_PSEUDO:-$HOME/espresso/pseudo}"'
    else:
        export = f"export ESPRESSO_PSEUDO={shlex.quote(str(pseudo_dir))}"
    checks = "\n".join(
        f"check_pseudo {shlex.quote(f.filename)} {f.md5 or '-'}"
        for f in sorted(files, key=lambda f: f.filename)
    )
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

# Pseudopotentials: {family_label}. pw.in names no folder; pw.x reads $ESPRESSO_PSEUDO.
{export}
bad=0
check_pseudo() {{
    local path="$ESPRESSO_PSEUDO/$1"
    if [ ! -f "$path" ]; then
        echo "job.sbatch: $path is missing: unpack the {family_label} files into $ESPRESSO_PSEUDO" >&2
        bad=1
    elif [ "$2" != "-" ] && command -v md5sum >/dev/null \
        && [ "$(md5sum < "$path" | cut -d' ' -f1)" != "$2" ]; then
        echo "job.sbatch: $path does not have the md5 $2 of the {family_label} file" >&2
        bad=1
    fi
}}
{checks}
if [ "$bad" -ne 0 ]; then
    exit 1
fi

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
