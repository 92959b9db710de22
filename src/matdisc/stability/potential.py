"""CHGNet, the universal ML potential of the judge: single-point energies and relaxations.

CHGNet's wheel ships its pretrained weights, so it runs with the network off. Its training
energies are Materials Project energies with the MP2020 compatibility corrections already
applied (CHGNet's documentation says so), so its energies go into a phase diagram as they
are: the corrections are never applied a second time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

log = logging.getLogger(__name__)

#: The pretrained model used (CHGNet's name for it).
MODEL_NAME = "0.3.0"

#: ASE's cell filters of a relaxation, in the order tried: the next one only when the one
#: before did not converge within the step limit. UnitCellFilter (linear cell deformation)
#: first: on the default run's 363 reference phases it took a third of the Fréchet filter's
#: time (whose 3x3 matrix exponentials in scipy cost more per step than CHGNet on a small
#: cell) for the same minima, except two phases it did not converge on in 300 steps
#: (BaTiO3, SiO2), which the log-parameterised FrechetCellFilter relaxes (docs/experiments.md).
CELL_FILTERS = ("UnitCellFilter", "FrechetCellFilter")


@dataclass(frozen=True)
class PotentialInfo:
    """What the parquet metadata records of the model: name, package version, checkpoint
    file name and its sha256."""

    model: str
    version: str
    checkpoint: str
    sha256: str


@dataclass(frozen=True)
class Relaxation:
    """One relaxation: the relaxed structure, its energy (eV/atom), magnetic moments (μB
    per site), the optimizer's steps, whether it converged within the step limit, the
    force calls made, the wall time (s) and the cell filter of the result."""

    structure: Structure
    energy_ev_per_atom: float
    magmoms: tuple[float, ...]
    steps: int
    converged: bool
    force_calls: int
    seconds: float
    cell_filter: str = CELL_FILTERS[0]


class Potential:
    """A loaded CHGNet model (``device``: cpu or cuda)."""

    def __init__(self, *, device: str = "cpu", threads: int | None = None) -> None:
        import torch
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        if threads:
            torch.set_num_threads(threads)
        self.device = device
        # CHGNet prints its banner and device to stdout: keep them out of the rule logs.
        with contextlib.redirect_stdout(io.StringIO()):
            self.model = CHGNet.load(model_name=MODEL_NAME, use_device=device, verbose=False)
            self.calculator = CHGNetCalculator(model=self.model, use_device=device)
        self.info = _info()

    def energies(self, structures: list[Structure], batch_size: int = 1) -> np.ndarray:
        """Single-point energies (eV/atom) of ``structures``, ``batch_size`` per model call
        (on a CPU one at a time is fastest: benchmarks/bench_stability.py)."""
        if not structures:
            return np.zeros(0)
        with warnings.catch_warnings():  # a torch warning inside CHGNet's volume tensor
            warnings.simplefilter("ignore", UserWarning)
            out = self.model.predict_structure(structures, task="e", batch_size=batch_size)
        out = out if isinstance(out, list) else [out]
        return np.asarray([float(p["e"]) for p in out], dtype=np.float64)

    def relax(
        self,
        structure: Structure,
        *,
        fmax: float,
        steps: int,
        rattle_angstrom: float,
        seed: int,
    ) -> Relaxation:
        """Relax cell and positions (FIRE on ASE's :data:`CELL_FILTERS` in turn) to ``fmax``
        (eV/Å) in at most ``steps`` steps, from ``structure`` with its sites rattled by a
        seeded Gaussian of ``rattle_angstrom``: the forces of a perfectly symmetric cell keep
        its symmetry, so an unstable cubic cell could never leave it."""
        from ase import filters
        from ase.optimize import FIRE
        from pymatgen.io.ase import AseAtomsAdaptor

        start = AseAtomsAdaptor.get_atoms(structure)
        if rattle_angstrom > 0:
            rng = np.random.default_rng(seed)
            start.positions += rng.normal(0.0, rattle_angstrom, size=start.positions.shape)
        started = time.perf_counter()
        force_calls = 0
        for name in CELL_FILTERS:
            atoms = start.copy()
            atoms.calc = self.calculator
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                optimizer = FIRE(getattr(filters, name)(atoms), logfile=None)
                converged = bool(optimizer.run(fmax=fmax, steps=steps))
            force_calls += int(optimizer.nsteps) + 1  # FIRE: one call per step, plus the start
            if converged:
                break
            log.info(
                "%s: not relaxed to %g eV/Å in %d steps with %s",
                structure.composition.reduced_formula, fmax, steps, name,
            )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            energy = float(atoms.get_potential_energy()) / len(atoms)
            magmoms = tuple(float(m) for m in atoms.get_magnetic_moments())
        relaxed = Structure(
            atoms.cell[:], atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True
        )
        return Relaxation(
            structure=relaxed,
            energy_ev_per_atom=energy,
            magmoms=magmoms,
            steps=int(optimizer.nsteps),
            converged=converged,
            force_calls=force_calls,
            seconds=time.perf_counter() - started,
            cell_filter=name,
        )


def _info() -> PotentialInfo:
    import chgnet

    folder = Path(chgnet.__file__).parent / "pretrained" / MODEL_NAME
    checkpoints = sorted(folder.glob("*.pth.tar"))
    if not checkpoints:
        raise FileNotFoundError(f"CHGNet's {MODEL_NAME} checkpoint is missing from {folder}")
    digest = hashlib.sha256(checkpoints[0].read_bytes()).hexdigest()
    return PotentialInfo(
        model=f"CHGNet {MODEL_NAME}",
        version=str(chgnet.__version__),
        checkpoint=checkpoints[0].name,
        sha256=digest,
    )
