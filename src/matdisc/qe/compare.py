"""Generated vs relaxed structure: the comparisons of Court et al. 2020, Table 3.

|Δ bonds| (%): the bonds are the first-shell neighbours of every site in the *generated*
structure (all neighbours within ``(1 + tolerance)`` × that site's nearest-neighbour
distance, periodic images included). Each bond is followed into the relaxed structure —
same two sites, same image offset — and its relative length change is averaged over
all bonds. Following the bonds (rather than re-detecting them) measures the distortion
of the same local geometry even where the relaxation reorders neighbour shells.

|Δ cell| (%): the mean of |Δa|/a, |Δb|/b, |Δc|/c; the largest angle change (degrees)
and the signed volume change (%) are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure


@dataclass(frozen=True)
class Comparison:
    """Table 3 metrics of one candidate (percentages are of the generated values)."""

    bond_change_pct: float
    max_bond_change_pct: float
    n_bonds: int
    cell_change_pct: float
    angle_change_deg: float
    volume_change_pct: float


def first_shell_bonds(
    structure: Structure, tolerance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bonds as (i, j, image) arrays: site i to site j in cell ``image`` (integers, (n, 3)).

    Each unordered bond appears once.
    """
    # Search radius: enough to find every site's nearest neighbour in any cell shape.
    radius = float(max(structure.lattice.abc)) * 1.01
    centers, points, images, distances = structure.get_neighbor_list(radius, exclude_self=True)
    if len(distances) == 0:
        raise ValueError("no neighbours found; the structure has a single isolated site")
    nearest = np.full(len(structure), np.inf)
    np.minimum.at(nearest, centers, distances)
    keep = distances <= nearest[centers] * (1.0 + tolerance)
    i, j, image = centers[keep], points[keep], np.rint(images[keep]).astype(int)
    # One entry per unordered bond: (i, j, +n) and (j, i, -n) are the same bond.
    seen: set[tuple[int, int, int, int, int]] = set()
    rows = []
    for a, b, n in zip(i, j, image, strict=True):
        key = (int(a), int(b), *map(int, n))
        twin = (int(b), int(a), *(-int(x) for x in n))
        if twin in seen:
            continue
        seen.add(key)
        rows.append(key)
    bonds = np.asarray(rows, dtype=int).reshape(-1, 5)
    return bonds[:, 0], bonds[:, 1], bonds[:, 2:]


def bond_lengths(
    frac: np.ndarray, matrix: np.ndarray, i: np.ndarray, j: np.ndarray, image: np.ndarray
) -> np.ndarray:
    """Lengths (Å) of bonds i→j+image for fractional coordinates ``frac`` (n, 3) and cell
    rows ``matrix`` (3, 3)."""
    vectors = (frac[j] + image - frac[i]) @ matrix
    return np.linalg.norm(vectors, axis=1)


def compare_structures(
    generated: Structure, relaxed: Structure, *, tolerance: float = 0.15
) -> Comparison:
    """Table 3 metrics between a generated structure and its relaxed version.

    The two must have the same sites in the same order (pw.x keeps the input order).
    Relaxed fractional coordinates are unwrapped to the image nearest the generated
    position, so a site that crossed a cell face is not counted as a long bond.
    """
    if len(generated) != len(relaxed):
        raise ValueError(f"site counts differ: {len(generated)} generated, {len(relaxed)} relaxed")
    gen_species = [site.specie.symbol for site in generated]
    rel_species = [site.specie.symbol for site in relaxed]
    if gen_species != rel_species:
        raise ValueError(
            "the relaxed structure lists its sites in another order than the generated one"
        )
    f_gen = np.asarray(generated.frac_coords, dtype=float)
    f_rel = np.asarray(relaxed.frac_coords, dtype=float)
    f_rel = f_rel - np.rint(f_rel - f_gen)
    i, j, image = first_shell_bonds(generated, tolerance)
    d_gen = bond_lengths(f_gen, np.asarray(generated.lattice.matrix), i, j, image)
    d_rel = bond_lengths(f_rel, np.asarray(relaxed.lattice.matrix), i, j, image)
    change = np.abs(d_rel - d_gen) / d_gen * 100.0
    abc_gen = np.asarray(generated.lattice.abc)
    abc_rel = np.asarray(relaxed.lattice.abc)
    angles_gen = np.asarray(generated.lattice.angles)
    angles_rel = np.asarray(relaxed.lattice.angles)
    return Comparison(
        bond_change_pct=float(change.mean()),
        max_bond_change_pct=float(change.max()),
        n_bonds=len(change),
        cell_change_pct=float(np.mean(np.abs(abc_rel - abc_gen) / abc_gen) * 100.0),
        angle_change_deg=float(np.max(np.abs(angles_rel - angles_gen))),
        volume_change_pct=float(
            (relaxed.lattice.volume - generated.lattice.volume) / generated.lattice.volume * 100.0
        ),
    )
