"""Running pw.x on one input and deciding, from its output, whether it really finished.

pw.x can exit 0 after an error and non-zero after a finished run (for example 3 when the
ionic step limit is reached), so the exit status is only one clue: a run counts as
converged only when its output says ``JOB DONE``, holds no error block and no failed
self-consistency, and reports ``bfgs converged``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read as ase_read

log = logging.getLogger(__name__)

CONVERGED = "converged"
NOT_CONVERGED = "not_converged"
FAILED = "failed"
NO_INPUT = "no_input"
STATUSES: tuple[str, ...] = (CONVERGED, NOT_CONVERGED, FAILED, NO_INPUT)

_ERROR_BLOCK = re.compile(r"%{20,}\s*\n\s*(Error in routine[^\n]*)\n\s*([^\n]*)")
_BFGS = re.compile(r"bfgs converged in\s+(\d+)\s+scf cycles and\s+(\d+)\s+bfgs steps")
_SCF_CYCLES = re.compile(r"number of scf cycles\s*=\s*(\d+)")
_BFGS_STEPS = re.compile(r"number of bfgs steps\s*=\s*(\d+)")
_PW_WALL = re.compile(r"PWSCF\s*:.*?CPU\s+(?:(\d+)h\s*)?(?:(\d+)m\s*)?(?:([\d.]+)s)?\s+WALL")


def reported_wall_time(text: str) -> float | None:
    """pw.x's own wall time (s) from its closing timing line, e.g. '1m13.32s CPU 2m58.74s WALL'."""
    match = _PW_WALL.search(text)
    if match is None or not any(match.groups()):
        return None
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class OutputCheck:
    """What pw.x's output says about a run.

    status: one of :data:`STATUSES`. reason: why it is not converged (None when it is).
    n_scf_cycles / n_bfgs_steps: ionic iterations of the relaxation (None if unknown).
    """

    status: str
    reason: str | None
    n_scf_cycles: int | None
    n_bfgs_steps: int | None


def check_output(text: str, returncode: int | None) -> OutputCheck:
    """Classify a pw.x relax/vc-relax output; ``returncode`` None = not known."""
    cycles = [int(m) for m in _SCF_CYCLES.findall(text)]
    steps = [int(m) for m in _BFGS_STEPS.findall(text)]
    n_cycles = max(cycles) if cycles else None
    n_steps = max(steps) if steps else None
    bfgs = _BFGS.search(text)
    if bfgs:
        n_cycles, n_steps = int(bfgs.group(1)), int(bfgs.group(2))

    error = _ERROR_BLOCK.search(text)
    if error:
        detail = " ".join(f"{error.group(1).strip()} {error.group(2).strip()}".split())
        return OutputCheck(FAILED, f"pw.x reported: {detail}", n_cycles, n_steps)
    if "JOB DONE" not in text:
        status = "unknown" if returncode is None else str(returncode)
        return OutputCheck(
            FAILED,
            f"pw.x stopped before 'JOB DONE' (exit status {status}); see its output",
            n_cycles,
            n_steps,
        )
    if "convergence NOT achieved" in text:
        line = next(ln.strip() for ln in text.splitlines() if "convergence NOT achieved" in ln)
        return OutputCheck(NOT_CONVERGED, f"self-consistency failed: {line}", n_cycles, n_steps)
    if "The maximum number of steps has been reached" in text:
        return OutputCheck(
            NOT_CONVERGED,
            f"the relaxation reached the ionic step limit (nstep) after {n_steps} BFGS steps",
            n_cycles,
            n_steps,
        )
    if bfgs is None:
        return OutputCheck(
            NOT_CONVERGED, "the output has no 'bfgs converged' line", n_cycles, n_steps
        )
    if returncode not in (None, 0):
        log.warning("pw.x exited with status %s after a converged relaxation", returncode)
    return OutputCheck(CONVERGED, None, n_cycles, n_steps)


@dataclass(frozen=True)
class RunResult:
    """One pw.x run: the output check, the last structure and energy, and its cost.

    atoms: the last structure in the output (the relaxed one when converged), None if the
    output holds none. energy_ev: total energy of that structure (eV). wall_time_s: time
    the run took (for a reused finished run, the wall time pw.x reported then). reused: an
    earlier identical run was read instead of running pw.x again.
    """

    check: OutputCheck
    output_path: Path
    atoms: Atoms | None
    energy_ev: float | None
    wall_time_s: float
    returncode: int | None
    reused: bool


def pw_command(*, pw: str, ranks: int, mpi: str) -> tuple[list[str], int]:
    """Command line for ``ranks`` MPI ranks, and the ranks it really uses: serial pw.x for
    one rank or when the MPI launcher is not on PATH.

    ``mpi`` is a template such as ``"mpirun -np {ranks}"``.
    """
    serial = shlex.split(pw)
    if ranks <= 1:
        return serial, 1
    launcher = shlex.split(mpi.format(ranks=ranks))
    if not launcher or shutil.which(launcher[0]) is None:
        log.warning(
            "%s is not on PATH; running pw.x serially instead of on %d MPI ranks",
            launcher[0] if launcher else "(empty mpi_command)",
            ranks,
        )
        return serial, 1
    return launcher + serial, ranks


def _environment(pseudo_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # MPI ranks, not threads, share the cores
    env["ESPRESSO_PSEUDO"] = str(pseudo_dir)  # pw.in names no folder
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Open MPI refuses to start as root (common in containers) unless told it may.
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def parse_output(path: Path) -> tuple[Atoms | None, float | None, str | None]:
    """The last structure and its energy (eV) from a pw.x output, or why there are none."""
    try:
        atoms = ase_read(path, format="espresso-out", index=-1)
    except Exception as exc:  # ASE raises many kinds on truncated output
        return None, None, f"ASE could not read {path.name}: {type(exc).__name__}: {exc}"
    try:
        energy = float(atoms.get_potential_energy())
    except Exception as exc:
        return atoms, None, f"no total energy in {path.name}: {exc}"
    return atoms, energy, None


def run_pw(
    input_text: str,
    workdir: Path,
    *,
    command: list[str],
    pseudo_dir: Path,
    timeout_s: float | None = None,
    keep_scratch: bool = False,
    reuse: bool = True,
) -> RunResult:
    """Run pw.x on ``input_text`` in ``workdir`` (pw.in, pw.out, pw.err are kept there),
    with the pseudopotentials of ``pseudo_dir``.

    With ``reuse``, a finished earlier run of the same input in ``workdir`` is read
    instead of run again. The scratch folder (wavefunctions) is removed afterwards
    unless ``keep_scratch``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    input_path = workdir / "pw.in"
    output_path = workdir / "pw.out"
    if (
        reuse
        and input_path.is_file()
        and output_path.is_file()
        and input_path.read_text(encoding="utf-8") == input_text
    ):
        text = output_path.read_text(encoding="utf-8", errors="replace")
        if "JOB DONE" in text:
            log.info("reusing the finished run in %s", workdir)
            wall = reported_wall_time(text)
            return _result(
                text, output_path, None, wall if wall is not None else np.nan, reused=True
            )
    input_path.write_text(input_text, encoding="utf-8")
    output_path.unlink(missing_ok=True)

    started = time.monotonic()
    timed_out = False
    with output_path.open("w") as out, (workdir / "pw.err").open("w") as err:
        process = subprocess.Popen(
            [*command, "-in", "pw.in"],
            cwd=workdir,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=_environment(pseudo_dir),
            start_new_session=True,  # its own process group, so a time-out stops MPI ranks too
        )
        try:
            returncode: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(process)
            returncode = process.returncode
        except BaseException:
            _stop(process)
            raise
    wall = time.monotonic() - started
    if not keep_scratch:
        shutil.rmtree(workdir / "scratch", ignore_errors=True)
    text = output_path.read_text(encoding="utf-8", errors="replace")
    if timed_out:
        check = check_output(text, returncode)
        atoms, energy, _ = parse_output(output_path)
        reason = f"pw.x was stopped after the time limit of {timeout_s:g} s"
        return RunResult(
            OutputCheck(FAILED, reason, check.n_scf_cycles, check.n_bfgs_steps),
            output_path, atoms, energy, wall, returncode, reused=False,
        )  # fmt: skip
    result = _result(text, output_path, returncode, wall, reused=False)
    message = _first_paragraph(workdir / "pw.err")
    if (
        result.check.status == FAILED
        and "JOB DONE" not in text
        and not _ERROR_BLOCK.search(text)
        and message
    ):
        # A launcher or loader problem (mpirun, a missing library) shows only on stderr.
        check = dataclasses.replace(
            result.check, reason=f"{result.check.reason}; pw.err: {message}"
        )
        result = dataclasses.replace(result, check=check)
    return result


def _first_paragraph(path: Path, limit: int = 300) -> str | None:
    """The first block of text lines of a file (skipping rulers), shortened to ``limit``."""
    if not path.is_file():
        return None
    words: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if any(ch.isalpha() for ch in line):
            words.append(line.strip())
        elif words:
            break
    return " ".join(words)[:limit] or None


def _result(
    text: str, output_path: Path, returncode: int | None, wall: float, *, reused: bool
) -> RunResult:
    check = check_output(text, returncode)
    atoms, energy, problem = parse_output(output_path)
    if problem and check.status == CONVERGED:
        check = OutputCheck(FAILED, problem, check.n_scf_cycles, check.n_bfgs_steps)
    return RunResult(check, output_path, atoms, energy, wall, returncode, reused)


def _stop(process: subprocess.Popen) -> None:
    """Terminate the run's process group (pw.x and any MPI ranks), then kill it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
