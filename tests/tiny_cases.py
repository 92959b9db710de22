"""Small shared inputs of the tests: cubic cells for tiny voxel stores, and a training-loop
configuration of plain choices."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from matdisc.train import TrainConfig

#: Rock-salt binaries (cation, anion, cubic a in Å).
ROCK_SALTS = [("Na", "Cl", 5.64), ("K", "Cl", 6.29), ("Mg", "O", 4.21), ("Li", "F", 4.03)]
#: Cubic perovskites ABO3 (A, B, a in Å).
PEROVSKITES = [("Sr", "Ti", 3.905), ("Ca", "Ti", 3.84)]


def cubic_cells(n_rock_salts: int) -> list[Structure]:
    """The first ``n_rock_salts`` rock salts, then the two perovskites."""
    out = [
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [x, y], [[0, 0, 0], [0.5] * 3])
        for x, y, a in ROCK_SALTS[:n_rock_salts]
    ]
    for x, y, a in PEROVSKITES:
        out.append(
            Structure.from_spacegroup(
                "Pm-3m", Lattice.cubic(a), [x, y, "O"], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0]]
            )
        )
    return out


def loop_config(**kw: object) -> TrainConfig:
    """A TrainConfig of the loop's plain choices (constant lr, fp32, CPU), ``kw`` on top."""
    plain: dict[str, object] = dict(
        patience=None, weight_decay=0.0, device="cpu", bf16=False, seed=0, grad_clip=None,
        num_threads=1, max_minutes=None, lr_schedule="constant", lr_final=0.01,
    )  # fmt: skip
    return TrainConfig(**{**plain, **kw})  # type: ignore[arg-type]
