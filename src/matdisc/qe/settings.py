"""Settings of the pw.x input generator, built from the validated ``qe`` config section.

Every default and its meaning is in the ``qe`` section of ``config/schema.yaml``; a partial
section (a test's, a benchmark's) is completed by the schema's defaults before the settings
are built. Keys that concern running pw.x (``run``, ``pw_command`` …) are not input
settings and are ignored here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from matdisc.errors import UserError
from matdisc.qe.pseudo import FAMILY_NAMES

#: Keys of the ``qe`` config section that belong to running and comparing, not to inputs.
RUN_KEYS: frozenset[str] = frozenset(
    {"run", "pw_command", "mpi_command", "timeout_min", "keep_scratch", "bond_tolerance"}
)

#: pw.x 6.7 values of &CELL cell_dofree that work with ibrav = 0 (the inputs give the
#: cell explicitly, so 'ibrav' is not offered).
CELL_DOFREE: tuple[str, ...] = (
    "all", "a", "b", "c", "fixa", "fixb", "fixc", "x", "y", "z", "xy", "xz", "yz",
    "xyz", "shape", "volume", "2Dxy", "2Dshape", "epitaxial_ab", "epitaxial_ac",
    "epitaxial_bc",
)  # fmt: skip
PSEUDO_KINDS: tuple[str, ...] = ("NC", "US", "PAW")
FUNCTIONALS: tuple[str, ...] = ("PBE", "PBESOL")
SMEARINGS: tuple[str, ...] = ("gaussian", "methfessel-paxton", "marzari-vanderbilt", "fermi-dirac")
VDW_CORRECTIONS: tuple[str, ...] = ("grimme-d2", "grimme-d3", "none")
SPIN_MODES: tuple[str, ...] = ("auto", "on", "off")
#: The cell written to pw.in: the candidate's symmetrised primitive or conventional
#: standard cell (spglib via pymatgen), or the cell as generated.
CELL_CHOICES: tuple[str, ...] = ("primitive", "conventional", "as_generated")
#: What an input starts from: the judge's CHGNet-relaxed structure where there is one
#: (stability.run), or the generated structure.
START_CHOICES: tuple[str, ...] = ("relaxed", "generated")


@dataclass(frozen=True, kw_only=True)
class SlurmSettings:
    """The ``#SBATCH`` lines and launcher of the batch script next to each ``pw.in``."""

    ntasks: int
    time: str
    mem_per_cpu_mb: int
    partition: str | None
    account: str | None
    launcher: str

    def __post_init__(self) -> None:
        _require(self.ntasks >= 1, "qe.slurm.ntasks must be at least 1")
        _require(self.mem_per_cpu_mb >= 1, "qe.slurm.mem_per_cpu_mb must be at least 1")
        _require(bool(self.time.strip()), "qe.slurm.time must be a Slurm time such as 24:00:00")
        _require(bool(self.launcher.strip()), "qe.slurm.launcher must name a command, e.g. srun")


@dataclass(frozen=True, kw_only=True)
class QEInputSettings:
    """Everything that shapes a generated ``pw.x`` vc-relax input.

    Units are in the names: Ry for energies and cut-offs, Ry/Bohr for forces, kbar for
    pressure, 1/Å (2π included) for the k-point spacing.
    """

    functional: str
    pseudo_family: str | Mapping[str, str]
    pseudo_dir: Path | None
    pseudo_preference: tuple[str, ...]
    start_from: str
    hull_phases: bool
    cell: str
    symprec_angstrom: float
    ecutwfc_ry: float | None
    ecutrho_ry: float | None
    ecutwfc_fallback_ry: float
    dual_nc: float
    dual_us_paw: float
    kpoint_spacing_inv_angstrom: float
    kpoint_shift: tuple[int, int, int]
    smearing: str
    degauss_ry: float
    vdw_corr: str
    etot_conv_thr_ry: float
    forc_conv_thr_ry_per_bohr: float
    press_conv_thr_kbar: float
    nstep: int
    cell_dofree: str
    conv_thr_ry: float
    mixing_beta: float
    electron_maxstep: int
    spin: str
    magnetic_elements: frozenset[str] | None
    starting_magnetization: float
    slurm: SlurmSettings

    def __post_init__(self) -> None:
        _require(self.functional in FUNCTIONALS, f"qe.functional must be one of {FUNCTIONALS}")
        _require(
            isinstance(self.pseudo_family, Mapping) or self.pseudo_family in FAMILY_NAMES,
            f"qe.pseudo_family {self.pseudo_family!r} is not known: use one of "
            f"{', '.join(FAMILY_NAMES)} or a mapping of element to UPF file name",
        )
        _require(self.cell in CELL_CHOICES, f"qe.cell must be one of {CELL_CHOICES}")
        _require(self.start_from in START_CHOICES, f"qe.start_from must be one of {START_CHOICES}")
        _require(
            bool(self.pseudo_preference) and all(k in PSEUDO_KINDS for k in self.pseudo_preference),
            f"qe.pseudo_preference must list kinds among {PSEUDO_KINDS}",
        )
        for name in ("ecutwfc_ry", "ecutrho_ry"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"qe.{name} must be positive or null")
        for name in (
            "ecutwfc_fallback_ry", "dual_nc", "dual_us_paw", "kpoint_spacing_inv_angstrom",
            "degauss_ry", "etot_conv_thr_ry", "forc_conv_thr_ry_per_bohr",
            "press_conv_thr_kbar", "conv_thr_ry", "mixing_beta", "symprec_angstrom",
        ):  # fmt: skip
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, f"qe.{name} must be a positive number")
        _require(
            self.nstep >= 1 and self.electron_maxstep >= 1,
            "qe.nstep and qe.electron_maxstep must be at least 1",
        )
        _require(
            len(self.kpoint_shift) == 3 and all(s in (0, 1) for s in self.kpoint_shift),
            "qe.kpoint_shift must be three values, each 0 or 1",
        )
        _require(self.smearing in SMEARINGS, f"qe.smearing must be one of {SMEARINGS}")
        _require(self.vdw_corr in VDW_CORRECTIONS, f"qe.vdw_corr must be one of {VDW_CORRECTIONS}")
        _require(self.cell_dofree in CELL_DOFREE, f"qe.cell_dofree must be one of {CELL_DOFREE}")
        _require(self.spin in SPIN_MODES, f"qe.spin must be one of {SPIN_MODES}")
        _require(
            -1 <= self.starting_magnetization <= 1, "qe.starting_magnetization must lie in [-1, 1]"
        )

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None = None) -> QEInputSettings:
        """From a ``qe`` config section; keys it lacks take the schema's defaults."""
        from matdisc.config import validate_config

        complete = validate_config({"qe": copy.deepcopy(dict(section or {}))})["qe"]
        return cls.from_mapping({k: v for k, v in complete.items() if k not in RUN_KEYS})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> QEInputSettings:
        """Build from a complete mapping of field values (a validated ``qe`` section
        without its run keys)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        missing = sorted(names - set(values))
        _require(not unknown, f"unknown QE input settings {unknown}; allowed: {sorted(names)}")
        _require(not missing, f"QE input settings {missing} have no value")
        kwargs = dict(values)
        slurm = kwargs.pop("slurm")
        family = kwargs["pseudo_family"]
        magnetic = kwargs["magnetic_elements"]
        try:
            return cls(
                **{
                    **kwargs,
                    "functional": str(kwargs["functional"]).upper(),
                    "pseudo_family": (
                        {str(k): str(v) for k, v in family.items()}
                        if isinstance(family, Mapping)
                        else str(family)
                    ),
                    "pseudo_dir": (
                        None
                        if kwargs["pseudo_dir"] is None
                        else Path(str(kwargs["pseudo_dir"])).expanduser()
                    ),
                    "pseudo_preference": tuple(str(k).upper() for k in kwargs["pseudo_preference"]),
                    "kpoint_shift": tuple(int(s) for s in kwargs["kpoint_shift"]),
                    "magnetic_elements": (
                        None if magnetic is None else frozenset(str(e) for e in magnetic)
                    ),
                    "nstep": int(kwargs["nstep"]),
                    "electron_maxstep": int(kwargs["electron_maxstep"]),
                },
                slurm=SlurmSettings(**slurm),
            )
        except TypeError as exc:  # a wrong key inside slurm, or a value of the wrong type
            raise UserError(
                f"QE input settings are malformed ({exc}); fix the qe section."
            ) from exc


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(f"{message}; change it in the qe section of config.yaml.")
