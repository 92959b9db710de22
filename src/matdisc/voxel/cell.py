"""From a stored crystal to its conventional cubic cell (a = b = c, 90°).

The Materials Project stores face- and body-centred crystals (rock salt, Heuslers,
fluorites, CsCl-type bcc alloys ...) as primitive cells with 60° or 109.47° angles; the
grid needs the conventional cube. :func:`conventional_cubic` finds it from the lattice
metric alone: the shortest three mutually orthogonal lattice vectors of equal length span
the conventional cell of a cubic lattice (P: the cell itself, I: twice, F: four times the
primitive volume). The sites are replicated into that cell. This takes well under a
millisecond, where a symmetry search (spglib) takes 20-40 ms per structure here.

The metric result is checked: its pure translations must be those of a P, I or F cubic
cell (otherwise the stored cell was a supercell, e.g. a magnetic one, and the cube found is
too large). Cells the metric search cannot handle fall back to spglib's standardised
conventional cell, which also tells a non-cubic crystal apart.

Conventions: the origin is the stored cell's origin (the cell is not re-centred here; with
``voxel.setting: canonical`` the voxelize stage moves it, :mod:`matdisc.voxel.setting`), so a
translation by a lattice vector leaves the result unchanged; lengths are averaged over the
three cell vectors; fractional coordinates are wrapped into [0, 1).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from matdisc.voxel.errors import VoxelizeError

log = logging.getLogger(__name__)

#: Cubic space groups are numbers 195-230.
CUBIC_SPACEGROUPS = range(195, 231)
#: spglib angle tolerance (degrees): pymatgen's SpacegroupAnalyzer default, which the
#: download stage's crystal systems come from (spglib's own default is far stricter).
ANGLE_TOLERANCE = 5.0

# Integer combinations of the stored cell vectors searched for the cube edges. Entries up
# to 2 cover the F and I centrings from any reduced primitive cell.
_COMBOS = np.array(
    [n for n in itertools.product(range(-2, 3), repeat=3) if n > (0, 0, 0)], dtype=np.int64
)

#: Centring translations of the conventional cubic cells (fractions of the cube edge).
CENTRINGS = {
    "P": np.zeros((1, 3)),
    "I": np.array([[0, 0, 0], [0.5, 0.5, 0.5]]),
    "F": np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
}


@dataclass(frozen=True)
class CubicCell:
    """A conventional cubic cell.

    lattice: (3,) float64 a, b, c in Å (equal to within the tolerance; the grid uses them
    as given). frac: (n, 3) float64 fractional coordinates in [0, 1). numbers: (n,) int64
    atomic numbers. method: how it was found (``as_given``, ``metric``, ``spglib``).
    """

    lattice: np.ndarray
    frac: np.ndarray
    numbers: np.ndarray
    method: str

    def __len__(self) -> int:
        return len(self.numbers)

    def to_structure(self):
        """The cell as a pymatgen ``Structure`` (orthogonal lattice a, b, c)."""
        from pymatgen.core import Lattice, Structure

        a, b, c = (float(x) for x in self.lattice)
        return Structure(
            Lattice.orthorhombic(a, b, c), self.numbers.tolist(), self.frac, to_unit_cell=True
        )

    def as_dict(self) -> dict[str, Any]:
        """The cell in pymatgen's ``Structure.as_dict()`` layout, built without pymatgen
        objects (``Structure.from_dict`` reads it back)."""
        from pymatgen.core.periodic_table import Element

        a, b, c = (float(x) for x in self.lattice)
        matrix = [[a, 0.0, 0.0], [0.0, b, 0.0], [0.0, 0.0, c]]
        symbols = {int(z): Element.from_Z(int(z)).symbol for z in set(self.numbers.tolist())}
        sites = [
            {
                "species": [{"element": symbols[int(z)], "occu": 1}],
                "abc": [float(x) for x in f],
                "xyz": [float(f[0] * a), float(f[1] * b), float(f[2] * c)],
                "properties": {},
                "label": symbols[int(z)],
            }
            for z, f in zip(self.numbers, self.frac, strict=True)
        ]
        return {
            "@module": "pymatgen.core.structure",
            "@class": "Structure",
            "charge": 0,
            "lattice": {"matrix": matrix, "pbc": [True, True, True]},
            "properties": {},
            "sites": sites,
        }


def arrays_from_structure(structure: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lattice matrix (3, 3) Å rows = cell vectors, frac (n, 3), atomic numbers (n,))."""
    if not structure.is_ordered:
        raise VoxelizeError(
            "disordered", "the structure has partially occupied sites; voxelize an ordered cell."
        )
    numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
    return (
        np.asarray(structure.lattice.matrix, dtype=np.float64),
        np.asarray(structure.frac_coords, dtype=np.float64),
        numbers,
    )


def arrays_from_dict(data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`arrays_from_structure`, straight from ``Structure.as_dict()`` output.

    Skips building pymatgen objects (about 10x faster for the stage's thousands of rows).
    """
    from pymatgen.core.periodic_table import Element

    try:
        matrix = np.asarray(data["lattice"]["matrix"], dtype=np.float64)
        sites = data["sites"]
        frac = np.asarray([site["abc"] for site in sites], dtype=np.float64).reshape(-1, 3)
        species = [site["species"] for site in sites]
    except (KeyError, TypeError, ValueError) as exc:
        raise VoxelizeError("unreadable", f"the structure JSON is not readable ({exc!r}).") from exc
    numbers = np.empty(len(species), dtype=np.int64)
    for i, occupants in enumerate(species):
        if len(occupants) != 1 or abs(float(occupants[0].get("occu", 1.0)) - 1.0) > 1e-6:
            raise VoxelizeError(
                "disordered",
                "the structure has partially occupied sites; voxelize an ordered cell.",
            )
        try:
            numbers[i] = _atomic_number(occupants[0]["element"], Element)
        except (KeyError, ValueError) as exc:
            raise VoxelizeError(
                "unreadable", f"site {i} names no known element ({occupants[0]!r})."
            ) from exc
    return matrix, frac, numbers


_Z_CACHE: dict[str, int] = {}


def _atomic_number(symbol: str, element_cls: Any) -> int:
    z = _Z_CACHE.get(symbol)
    if z is None:
        z = _Z_CACHE[symbol] = int(element_cls(symbol).Z)
    return z


def conventional_cubic(
    matrix: np.ndarray,
    frac: np.ndarray,
    numbers: np.ndarray,
    *,
    tolerance: float = 0.01,
    symprec: float = 0.1,
    check_symmetry: bool = False,
) -> CubicCell:
    """The conventional cubic cell of a crystal given by any of its cells.

    matrix: (3, 3) Å, rows = cell vectors; frac: (n, 3); numbers: (n,) atomic numbers.
    tolerance: largest relative difference of the three lengths and largest |cos| of the
    angles accepted as cubic. symprec: spglib tolerance (Å), used by the fallback, by the
    check of the centring translations and when ``check_symmetry`` asks spglib to confirm a
    cubic space group. Raises :class:`VoxelizeError` (``not_cubic`` / ``empty``).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    numbers = np.asarray(numbers, dtype=np.int64)
    if len(numbers) == 0:
        raise VoxelizeError("empty", "the structure has no sites.")
    cell = _metric_cell(matrix, frac, numbers, tolerance, symprec)
    if cell is None:
        cell = _spglib_cell(matrix, frac, numbers, symprec)
    elif check_symmetry:
        _require_cubic_symmetry(cell, symprec)
    return cell


def _is_cube(matrix: np.ndarray, tolerance: float) -> bool:
    lengths = np.linalg.norm(matrix, axis=1)
    if np.ptp(lengths) > tolerance * lengths.mean():
        return False
    unit = matrix / lengths[:, None]
    cos = unit @ unit.T
    return bool(np.all(np.abs(cos[np.triu_indices(3, 1)]) <= tolerance))


def _metric_cell(
    matrix: np.ndarray, frac: np.ndarray, numbers: np.ndarray, tolerance: float, symprec: float
) -> CubicCell | None:
    """The cube spanned by the shortest orthogonal equal lattice vectors, or None."""
    if _is_cube(matrix, tolerance):
        transform = np.eye(3, dtype=np.int64)
        method = "as_given"
    else:
        transform = _cube_transform(matrix, tolerance)
        if transform is None:
            return None
        method = "metric"
    multiple = round(abs(np.linalg.det(transform)))
    new_frac, new_numbers = _replicate(frac, numbers, transform, multiple)
    if new_frac is None:
        return None
    new_matrix = transform @ matrix
    lengths = np.linalg.norm(new_matrix, axis=1)
    if not _centring_ok(new_frac, new_numbers, symprec / lengths.mean()):
        return None
    return CubicCell(
        lattice=np.full(3, lengths.mean()), frac=new_frac, numbers=new_numbers, method=method
    )


def _cube_transform(matrix: np.ndarray, tolerance: float) -> np.ndarray | None:
    """Integer (3, 3) matrix N whose rows, applied to ``matrix``, give the cube edges."""
    vectors = _COMBOS @ matrix
    lengths = np.linalg.norm(vectors, axis=1)
    order = np.argsort(lengths, kind="stable")
    vectors, lengths, combos = vectors[order], lengths[order], _COMBOS[order]
    unit = vectors / lengths[:, None]
    orthogonal = np.abs(unit @ unit.T) <= tolerance
    same_length = np.abs(lengths[:, None] - lengths[None, :]) <= tolerance * lengths[:, None]
    candidate = orthogonal & same_length
    volume = abs(np.linalg.det(matrix))
    # A loop over ~60 candidate vectors (not over sites or voxels), shortest first.
    for i in range(len(vectors)):
        partners = np.flatnonzero(candidate[i])
        partners = partners[partners > i]
        for j_pos, j in enumerate(partners):
            third = partners[j_pos + 1 :]
            third = third[candidate[j, third]]
            if third.size == 0:
                continue
            transform = np.stack([combos[i], combos[j], combos[third[0]]])
            det = np.linalg.det(transform)
            if round(abs(det)) not in (1, 2, 4) or abs(abs(det) - round(abs(det))) > 1e-6:
                continue
            if (
                abs(abs(np.linalg.det(transform @ matrix)) - round(abs(det)) * volume)
                > 1e-6 * volume
            ):
                continue
            if det < 0:
                transform[2] *= -1
            return transform
    return None


def _replicate(
    frac: np.ndarray, numbers: np.ndarray, transform: np.ndarray, multiple: int
) -> tuple[np.ndarray | None, np.ndarray]:
    """Sites of the cell ``transform @ matrix`` (``multiple`` times the stored volume)."""
    if multiple == 1 and np.array_equal(transform, np.eye(3, dtype=transform.dtype)):
        return _wrap(frac), numbers
    inverse = np.linalg.inv(transform.astype(np.float64))
    # Old-cell translations t with (f + t) inside the new cell, f in [0, 1).
    corners = np.array(list(itertools.product((0, 1), repeat=3))) @ transform
    lo, hi = corners.min(axis=0) - 1, corners.max(axis=0)
    shifts = np.stack(
        np.meshgrid(*(np.arange(lo[k], hi[k] + 1) for k in range(3)), indexing="ij"), axis=-1
    ).reshape(-1, 3)
    positions = (frac[None, :, :] + shifts[:, None, :]) @ inverse  # (shifts, n, 3)
    eps = 1e-6
    inside = np.all((positions >= -eps) & (positions < 1 - eps), axis=-1)
    new_frac = _wrap(positions[inside])
    new_numbers = np.broadcast_to(numbers, inside.shape)[inside]
    # Deduplicate on a 1-D key: position rounded to 1e-5 and the atomic number.
    grid = np.round(new_frac * 1e5).astype(np.int64) % 100000
    keys = ((grid[:, 0] * 100000 + grid[:, 1]) * 100000 + grid[:, 2]) * 128 + new_numbers
    _, first = np.unique(keys, return_index=True)
    first.sort()
    if len(first) != multiple * len(numbers):
        return None, numbers
    return new_frac[first], new_numbers[first].astype(np.int64)


def _wrap(frac: np.ndarray) -> np.ndarray:
    """Fractional coordinates into [0, 1), with values a hair below 1 sent to 0."""
    out = frac - np.floor(frac)
    out[out > 1 - 1e-9] = 0.0
    return out


def _centring_ok(frac: np.ndarray, numbers: np.ndarray, tol: float) -> bool:
    """True if the pure translations of the cell are exactly a P, I or F centring."""
    if len(numbers) > 400:
        return False
    # Candidate translations: from one site of the rarest species to each of its kind.
    kinds, counts = np.unique(numbers, return_counts=True)
    ref = np.flatnonzero(numbers == kinds[counts.argmin()])
    shifts = frac[ref] - frac[ref[0]]  # (T, 3)
    moved = frac[None, :, None, :] + shifts[:, None, None, :]  # (T, n, 1, 3)
    delta = moved - frac[None, None, :, :]  # (T, n, n, 3)
    delta -= np.round(delta)
    close = np.all(np.abs(delta) <= tol, axis=-1) & (numbers[:, None] == numbers[None, :])
    is_symmetry = np.all(close.any(axis=2), axis=1)  # (T,)
    found = _wrap(shifts[is_symmetry])
    for centring in CENTRINGS.values():
        if len(found) != len(centring):
            continue
        diff = found[:, None, :] - centring[None, :, :]
        diff -= np.round(diff)
        if np.all(np.all(np.abs(diff) <= tol, axis=-1).any(axis=1)):
            return True
    return False


def _spglib_cell(
    matrix: np.ndarray, frac: np.ndarray, numbers: np.ndarray, symprec: float
) -> CubicCell:
    dataset = _dataset((matrix, frac, numbers), symprec)
    if dataset.number not in CUBIC_SPACEGROUPS:
        raise VoxelizeError(
            "not_cubic",
            f"the crystal is not cubic (space group {dataset.international}, "
            f"No. {dataset.number} at symprec {symprec} Å); only cubic cells are voxelized.",
        )
    std = np.asarray(dataset.std_lattice, dtype=np.float64)
    lengths = np.linalg.norm(std, axis=1)
    return CubicCell(
        lattice=np.full(3, lengths.mean()),
        frac=_wrap(np.asarray(dataset.std_positions, dtype=np.float64)),
        numbers=np.asarray(dataset.std_types, dtype=np.int64),
        method="spglib",
    )


def _require_cubic_symmetry(cell: CubicCell, symprec: float) -> None:
    dataset = _dataset((np.diag(cell.lattice), cell.frac, cell.numbers), symprec)
    if dataset.number not in CUBIC_SPACEGROUPS:
        raise VoxelizeError(
            "not_cubic",
            f"the cell is cubic in shape but its symmetry is not (space group "
            f"{dataset.international}, No. {dataset.number} at symprec {symprec} Å).",
        )


def symmetry_dataset(cell: tuple[np.ndarray, np.ndarray, np.ndarray], symprec: float) -> Any:
    """spglib's symmetry dataset of ``cell`` (lattice rows, fractional positions, type
    numbers) at ``symprec`` Å and the download stage's angle tolerance; None when spglib
    finds none (overlapping atoms)."""
    import warnings

    import spglib

    with warnings.catch_warnings():
        # spglib 2.x warns that returning None on failure is deprecated; None is handled.
        warnings.simplefilter("ignore", DeprecationWarning)
        return spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=ANGLE_TOLERANCE)


def _dataset(cell: tuple[np.ndarray, np.ndarray, np.ndarray], symprec: float) -> Any:
    dataset = symmetry_dataset(cell, symprec)
    if dataset is None:
        raise VoxelizeError(
            "not_cubic",
            f"spglib found no symmetry for the cell at symprec {symprec} Å "
            f"(overlapping atoms?); only cubic cells are voxelized.",
        )
    return dataset
