"""Random 90° rotations of voxel grids, applied on the fly (seed 000: "random 90° rotations
around the x-, y- and z-axes").

:func:`random_rot90` draws one of the 24 proper rotations of the cube uniformly and
applies it to every array passed: density, species and mask maps (d, d, d) rotate as
images; a coordinate grid (3, d, d, d) rotates as a field of positions, i.e. its spatial
axes rotate AND its components are permuted and reflected so that it stays the
coordinate grid of the rotated cell (for a cube: equal to the original grid; for a, b, c
unequal: the grid of the permuted lengths). Works on numpy arrays and torch tensors.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from matdisc.voxel.cell import CENTRINGS

# Each rotation as quarter turns (k, axes) applied in order; generated and deduplicated
# once by their effect on an array with all-distinct entries.
_QUARTER_AXES = ((1, 2), (2, 0), (0, 1))  # about x, y, z


def _rotations() -> list[tuple[tuple[int, tuple[int, int]], ...]]:
    probe = np.arange(27).reshape(3, 3, 3)
    seen: dict[bytes, tuple[tuple[int, tuple[int, int]], ...]] = {}
    for ks in itertools.product(range(4), repeat=3):
        plan = tuple((k, axes) for k, axes in zip(ks, _QUARTER_AXES, strict=True) if k)
        out = probe
        for k, axes in plan:
            out = np.rot90(out, k, axes)
        seen.setdefault(out.tobytes(), plan)
    return list(seen.values())


ROTATIONS = _rotations()
assert len(ROTATIONS) == 24


def _keeps_tetrahedral_sets(index: int) -> bool:
    """True if rotation ``index`` maps the tetrahedral holes (¼, ¼, ¼) + F onto themselves
    rather than onto the other set (¾, ¾, ¾) + F."""
    moved = rotate_fractions(np.full((1, 3), 0.25), index)[0]
    gap = np.abs((moved - 0.25) % 1.0 - CENTRINGS["F"])
    return bool(np.any(np.all(np.minimum(gap, 1.0 - gap) < 1e-9, axis=1)))


def random_rot90(rng: Any, *arrays: Any) -> tuple[Any, ...]:
    """Rotate all ``arrays`` by the same random proper 90° rotation.

    rng: ``numpy.random.Generator`` or ``torch.Generator`` (None: a fresh numpy one).
    arrays: (d, d, d) maps (any dtype) or (3, d, d, d) coordinate grids (Å), numpy or
    torch. Returns the rotated arrays in the same order (numpy results are views; call
    ``np.ascontiguousarray`` if needed).
    """
    return apply_rotation(_draw(rng), *arrays)


def apply_rotation(index: int, *arrays: Any) -> tuple[Any, ...]:
    """Rotate by rotation ``index`` (0..23; 0 is the identity) of :data:`ROTATIONS`."""
    plan = ROTATIONS[index]
    return tuple(_rotate(a, plan) for a in arrays)


def rotate_fractions(frac: np.ndarray, index: int) -> np.ndarray:
    """Fractional positions (n, 3) of points of a cubic cell after rotation ``index`` of
    :data:`ROTATIONS`, as the voxels of its maps move: a quarter turn on axes (a0, a1)
    takes (f0, f1) to (1 - f1, f0) (see :func:`_quarter_turn_field`)."""
    out = np.array(frac, dtype=np.float64, copy=True)
    for k, (a0, a1) in ROTATIONS[index]:
        for _ in range(k):
            out[:, a0], out[:, a1] = 1.0 - out[:, a1], out[:, a0].copy()
    return out


def draw_rotation(rng: Any, choices: Sequence[int] | None = None) -> int:
    """A uniform random index into :data:`ROTATIONS` (the draw :func:`random_rot90` makes),
    or into ``choices`` only (for example :data:`TETRAHEDRAL_ROTATIONS`)."""
    if choices is None:
        return _draw(rng)
    return int(choices[_draw(rng, len(choices))])


def _draw(rng: Any, n: int = len(ROTATIONS)) -> int:
    if rng is None:
        rng = np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    import torch

    if isinstance(rng, torch.Generator):
        return int(torch.randint(n, (1,), generator=rng).item())
    raise TypeError(f"rng must be a numpy Generator or a torch Generator, got {type(rng)}")


#: The 12 rotations of the tetrahedral group 23 (2-fold about the axes, 3-fold about the
#: diagonals): they keep each set of a face-centred cell's tetrahedral holes in place (about
#: the cell centre, up to the centring), where the other 12 swap the two sets. The training
#: rotations of maps in the canonical setting (matdisc.voxel.setting), so that a rotated
#: half-Heusler still has its empty set where every half-Heusler of the store has it.
TETRAHEDRAL_ROTATIONS = tuple(i for i in range(len(ROTATIONS)) if _keeps_tetrahedral_sets(i))
assert len(TETRAHEDRAL_ROTATIONS) == 12 and TETRAHEDRAL_ROTATIONS[0] == 0


def _rotate(array: Any, plan: tuple[tuple[int, tuple[int, int]], ...]) -> Any:
    is_torch = type(array).__module__.startswith("torch")
    if array.ndim == 3:
        for k, axes in plan:
            array = array.rot90(k, axes) if is_torch else np.rot90(array, k, axes)
        return array
    if array.ndim == 4 and array.shape[0] == 3:
        for k, axes in plan:
            for _ in range(k):
                array = _quarter_turn_field(array, axes, is_torch)
        return array
    raise ValueError(
        f"expected a (d, d, d) map or a (3, d, d, d) grid, got shape {tuple(array.shape)}"
    )


def _quarter_turn_field(coords: Any, axes: tuple[int, int], is_torch: bool) -> Any:
    """One quarter turn of a coordinate grid about the cell centre.

    ``np.rot90(m, 1, (a0, a1))`` takes old index (j, d-1-i) on axes (a0, a1) to new (i, j),
    so a position (x0, x1) goes to (L1 - x1, x0): new component a0 = L_a1 - old a1,
    new component a1 = old a0, where L = 2 × mean of that component (the grid is
    symmetric about the cell centre).
    """
    a0, a1 = axes
    spatial = (a0 + 1, a1 + 1)
    turned = coords.rot90(1, spatial) if is_torch else np.rot90(coords, 1, spatial)
    length = 2.0 * turned[a1].mean()
    comps = [turned[0], turned[1], turned[2]]
    comps[a0], comps[a1] = length - turned[a1], turned[a0]
    if is_torch:
        import torch

        return torch.stack(comps)
    return np.stack(comps)
