"""One pw.x vc-relax input from a pymatgen structure.

The text is written by hand (not through a third-party writer) so that its layout is
stable and pinned by a golden-file test. The structure is first put into the cell that
``qe.cell`` asks for (:mod:`matdisc.qe.structure`); that cell is written as it is
(``ibrav = 0``, ``CELL_PARAMETERS angstrom``) and its sites in fractional coordinates, in
order, so the relaxed structure pw.x reports lines up site by site with the input one
(:attr:`PwInput.structure`). One species per element, in order of first appearance. The
input names no pseudopotential folder: pw.x reads ``$ESPRESSO_PSEUDO``, which the job
script sets, so the same ``pw.in`` runs wherever the family's files are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Element, Structure

from matdisc.errors import UserError
from matdisc.qe.pseudo import PseudoChoice, PseudoFamily, PseudoFile
from matdisc.qe.settings import QEInputSettings
from matdisc.qe.structure import open_shell_elements, standard_cell


class StructureError(UserError):
    """A structure that cannot become a pw.x input (the message says why)."""


@dataclass(frozen=True)
class PwInput:
    """A generated input and the choices recorded in the manifest.

    structure: the structure written (after ``qe.cell``). spacegroup_number: its space
    group at ``qe.symprec_angstrom``. kpoints: Monkhorst–Pack divisions along a, b, c.
    species: element symbols in the order of ATOMIC_SPECIES. files: element → the
    family's file.
    """

    text: str
    structure: Structure
    spacegroup_number: int
    kpoints: tuple[int, int, int]
    ecutwfc_ry: float
    ecutrho_ry: float
    nspin: int
    species: tuple[str, ...]
    files: dict[str, PseudoFile]

    @property
    def pseudopotentials(self) -> dict[str, str]:
        """Element → UPF file name."""
        return {element: f.filename for element, f in self.files.items()}


def kpoint_grid(structure: Structure, spacing_inv_angstrom: float) -> tuple[int, int, int]:
    """Monkhorst–Pack divisions ``ceil(|b_i| / spacing)`` (|b_i| with the 2π, in 1/Å), ≥ 1."""
    lengths = structure.lattice.reciprocal_lattice.abc
    # The small tolerance keeps a length that is an exact multiple from rounding up.
    return tuple(max(1, math.ceil(b / spacing_inv_angstrom - 1e-6)) for b in lengths)  # type: ignore[return-value]


def species_order(structure: Structure) -> tuple[str, ...]:
    """Element symbols in order of first appearance; rejects anything pw.x cannot take."""
    if not structure.is_ordered:
        raise StructureError(
            "the structure has partially occupied sites; pw.x needs one element per site"
        )
    order: list[str] = []
    for index, site in enumerate(structure):
        specie = site.specie
        symbol = getattr(specie, "symbol", str(specie))
        element = getattr(specie, "element", specie)
        if not isinstance(element, Element):
            raise StructureError(f"site {index} holds {symbol!r}, which is not a chemical element")
        if element.symbol not in order:
            order.append(element.symbol)
    if not order:
        raise StructureError("the structure has no sites")
    return tuple(order)


def _value(value: object) -> str:
    """A Fortran namelist literal."""
    if isinstance(value, bool):
        return ".true." if value else ".false."
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _namelist(name: str, entries: list[tuple[str, object]]) -> str:
    width = max(len(key) for key, _ in entries)
    body = "\n".join(f"  {key:<{width}} = {_value(value)}" for key, value in entries)
    return f"&{name}\n{body}\n/\n"


def _coordinate(x: float) -> str:
    text = f"{x:14.10f}"
    return text.replace("-0.0000000000", " 0.0000000000")


def starting_magnetization(
    structure: Structure,
    species: tuple[str, ...],
    settings: QEInputSettings,
    moments: frozenset[str] | None = None,
) -> dict[int, float]:
    """1-based species index → starting magnetisation; empty = not spin-polarised.

    The magnetic species: ``qe.magnetic_elements`` if listed, else every element with an
    open d or f shell, and every element CHGNet gave a moment (``moments``, where the input
    starts from its relaxation)."""
    if settings.spin == "off":
        return {}
    elements = settings.magnetic_elements
    if elements is None:
        elements = open_shell_elements(structure.composition) | (moments or frozenset())
    magnetic = [i + 1 for i, el in enumerate(species) if el in elements]
    if settings.spin == "auto" and not magnetic:
        return {}
    # spin "on" without a magnetic element: every species starts magnetic, since pw.x
    # needs a non-zero starting magnetisation somewhere for nspin = 2.
    chosen = magnetic or list(range(1, len(species) + 1))
    return {i: settings.starting_magnetization for i in chosen}


def build_input(
    structure: Structure,
    settings: QEInputSettings,
    family: PseudoFamily,
    *,
    moments: frozenset[str] | None = None,
    outdir: str = "./scratch",
) -> PwInput:
    """The vc-relax input for ``structure``; ``moments``: the elements CHGNet gave a moment,
    which start magnetic besides those with an open d or f shell.

    Raises :class:`StructureError` for a structure pw.x cannot take and
    :class:`~matdisc.qe.pseudo.PseudoError` for an element without a pseudopotential.
    """
    species_order(structure)
    if structure.lattice.volume <= 1e-6:
        raise StructureError("the cell has zero volume")
    structure, spacegroup = standard_cell(
        structure, cell=settings.cell, symprec=settings.symprec_angstrom
    )
    species = species_order(structure)
    choice: PseudoChoice = family.choose_all(
        species,
        ecutwfc_ry=settings.ecutwfc_ry,
        ecutrho_ry=settings.ecutrho_ry,
        fallback_wfc_ry=settings.ecutwfc_fallback_ry,
        dual_nc=settings.dual_nc,
        dual_us_paw=settings.dual_us_paw,
    )
    kpts = kpoint_grid(structure, settings.kpoint_spacing_inv_angstrom)
    magnetization = starting_magnetization(structure, species, settings, moments)

    control: list[tuple[str, object]] = [
        ("calculation", "vc-relax"),
        ("restart_mode", "from_scratch"),
        ("prefix", "pwscf"),
        ("outdir", outdir),
        ("nstep", settings.nstep),
        ("etot_conv_thr", settings.etot_conv_thr_ry),
        ("forc_conv_thr", settings.forc_conv_thr_ry_per_bohr),
        ("tprnfor", True),
        ("tstress", True),
    ]
    system: list[tuple[str, object]] = [
        ("ibrav", 0),
        ("nat", len(structure)),
        ("ntyp", len(species)),
        ("ecutwfc", choice.ecutwfc_ry),
        ("ecutrho", choice.ecutrho_ry),
        ("input_dft", settings.functional),
        ("occupations", "smearing"),
        ("smearing", settings.smearing),
        ("degauss", settings.degauss_ry),
    ]
    if settings.vdw_corr != "none":
        system.append(("vdw_corr", settings.vdw_corr))
    if magnetization:
        system.append(("nspin", 2))
        system.extend((f"starting_magnetization({i})", m) for i, m in magnetization.items())
    electrons: list[tuple[str, object]] = [
        ("conv_thr", settings.conv_thr_ry),
        ("mixing_beta", settings.mixing_beta),
        ("electron_maxstep", settings.electron_maxstep),
    ]
    ions: list[tuple[str, object]] = [("ion_dynamics", "bfgs")]
    cell: list[tuple[str, object]] = [
        ("cell_dynamics", "bfgs"),
        ("cell_dofree", settings.cell_dofree),
        ("press_conv_thr", settings.press_conv_thr_kbar),
    ]

    lines = ["ATOMIC_SPECIES"]
    width = max(len(el) for el in species)
    for el in species:
        mass = float(Element(el).atomic_mass)
        lines.append(f"  {el:<{width}}  {mass:10.5f}  {choice.files[el].filename}")
    lines.append("CELL_PARAMETERS angstrom")
    for row in np.asarray(structure.lattice.matrix, dtype=float):
        lines.append("  " + " ".join(_coordinate(x) for x in row))
    lines.append("ATOMIC_POSITIONS crystal")
    frac = np.mod(np.asarray(structure.frac_coords, dtype=float), 1.0)
    frac[np.isclose(frac, 1.0, rtol=0.0, atol=1e-10)] = 0.0
    for site, row in zip(structure, frac, strict=True):
        lines.append(f"  {site.specie.symbol:<{width}} " + " ".join(_coordinate(x) for x in row))
    lines.append("K_POINTS automatic")
    lines.append(
        "  "
        + " ".join(str(k) for k in kpts)
        + " "
        + " ".join(str(s) for s in settings.kpoint_shift)
    )

    text = (
        _namelist("CONTROL", control)
        + _namelist("SYSTEM", system)
        + _namelist("ELECTRONS", electrons)
        + _namelist("IONS", ions)
        + _namelist("CELL", cell)
        + "\n".join(lines)
        + "\n"
    )
    return PwInput(
        text=text,
        structure=structure,
        spacegroup_number=spacegroup,
        kpoints=kpts,
        ecutwfc_ry=choice.ecutwfc_ry,
        ecutrho_ry=choice.ecutrho_ry,
        nspin=2 if magnetization else 1,
        species=species,
        files=dict(choice.files),
    )
