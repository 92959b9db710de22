"""What DFT starts from: the symmetrised standard cell and the elements to spin-polarise.

A decoded crystal carries the noise of the voxel grid: its sites sit a few hundredths of
an Å off their Wyckoff positions and its cell lengths differ in the third decimal, so pw.x
would find no symmetry, use every k point of the grid and let the relaxation wander in
P1. Symmetrising within ``symprec`` snaps the sites back; the primitive cell of an fcc
crystal (rock salt, Heusler, half-Heusler) has a quarter of the conventional cell's atoms.
"""

from __future__ import annotations

import logging

from pymatgen.core import Composition, Element, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

log = logging.getLogger(__name__)


def standard_cell(structure: Structure, *, cell: str, symprec: float) -> tuple[Structure, int]:
    """The structure to write (``cell``: primitive, conventional or as_generated) and its
    space-group number at ``symprec`` (Å). Where spglib finds no symmetry the structure is
    kept as it is and reported as P1 (1)."""
    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
        number = int(analyzer.get_space_group_number())
        if cell == "primitive":
            standard = analyzer.get_primitive_standard_structure()
        elif cell == "conventional":
            standard = analyzer.get_refined_structure()
        else:
            return structure, number
    except Exception as exc:  # spglib gives up on some degenerate cells
        log.warning("no symmetry found for %s (%s); written as generated", structure.formula, exc)
        return structure, 1
    return standard, number


def _open_shell_count(element: Element, oxidation: float) -> tuple[float, int]:
    """(electrons in the element's d or f valence shell, that shell's capacity) for the ion
    of ``oxidation``; the neutral atom's configuration when ``oxidation`` is 0."""
    if oxidation > 0:
        if element.is_lanthanoid:  # [Xe] 4f^n: the valence electrons beyond Xe minus the charge
            return element.Z - 54 - oxidation, 14
        if element.is_actinoid:  # [Rn] 5f^n
            return element.Z - 86 - oxidation, 14
        if element.block == "d":  # the s electrons leave first
            return element.group - oxidation, 10
        return 0.0, 1
    shells = element.full_electronic_structure
    for letter, capacity in (("f", 14), ("d", 10)):
        counts = [count for _, shell, count in shells if shell == letter]
        # the outermost shell of that kind (the last listed), if it is open
        if counts and 0 < counts[-1] < capacity:
            return float(counts[-1]), capacity
    return 0.0, 1


def open_shell_elements(composition: Composition) -> frozenset[str]:
    """Elements whose d or f shell is partly filled in ``composition``: with pymatgen's most
    likely oxidation states where it finds any (Zr⁴⁺ d⁰ and Cu⁺ d¹⁰ are closed, Ni²⁺ d⁸ and
    Gd³⁺ f⁷ open), else (intermetallics, charge-unbalanced compositions) as neutral atoms."""
    guesses = composition.reduced_composition.oxi_state_guesses()
    oxidation = guesses[0] if guesses else {}
    found = set()
    for element in composition.elements:
        count, capacity = _open_shell_count(element, float(oxidation.get(element.symbol, 0.0)))
        if 1e-6 < count < capacity - 1e-6:
            found.add(element.symbol)
    return frozenset(found)
