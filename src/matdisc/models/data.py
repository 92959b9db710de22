"""Datasets over the voxel store for the UNet and the VAE, with random 90° rotations.

The store's arrays of one split are read into memory once (a few hundred MB at most for
the cubic set at 32³); coordinate grids are computed per item from the cell lengths.
Augmentation draws its rotation from torch's global generator, which the training loop
seeds and checkpoints, so a resumed run sees the same rotations as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from matdisc.models.losses import IGNORE_INDEX

log = logging.getLogger(__name__)

N_DECILES = 10


@dataclass(frozen=True)
class VoxelSplit:
    """One split of the voxel store in memory.

    density (n, d, d, d) float32 store units; species (n, d, d, d) uint8 atomic numbers
    (0 = background); lattice (n, 3) float32 a, b, c Å; decile (n,) int64 (-1 = unknown);
    index (n,) the items' rows in the store; channels: the VAE's species channels
    (n, 1 + k, d, d, d) float32 (:func:`with_species_channels`) or None; sites: each item's
    sites (n, m, 4) float32, fractional x, y, z and the Gaussian's σ Å, padded with σ = 0
    (:func:`with_sites`), or None. setting: the store's ``voxel.setting`` (``as_given`` or
    ``canonical``), which decides the rotations the VAE trains with.
    """

    index: np.ndarray
    material_id: np.ndarray
    density: np.ndarray
    species: np.ndarray
    lattice: np.ndarray
    decile: np.ndarray
    grid_size: int
    padding: float
    channels: np.ndarray | None = None
    sites: np.ndarray | None = None
    setting: str = "as_given"

    def __len__(self) -> int:
        return len(self.material_id)

    def subset(self, index: np.ndarray) -> VoxelSplit:
        return VoxelSplit(
            index=self.index[index],
            material_id=self.material_id[index],
            density=self.density[index],
            species=self.species[index],
            lattice=self.lattice[index],
            decile=self.decile[index],
            grid_size=self.grid_size,
            padding=self.padding,
            channels=None if self.channels is None else self.channels[index],
            sites=None if self.sites is None else self.sites[index],
            setting=self.setting,
        )


def species_channels_of(store: Any, index: Sequence[int], kind: str) -> np.ndarray | None:
    """(n, 1 + k, d, d, d) float32 species channels of store entries ``index`` (``kind`` =
    the descriptor set), drawn from the store's cells; None for ``kind`` ``none`` or no entry."""
    from matdisc.segment.species import descriptor_grids
    from matdisc.voxel.cell import arrays_from_structure

    if kind == "none":
        return None
    lattice = np.asarray(store.lattice, dtype=np.float64)
    out = []
    for i in index:
        _, frac, numbers = arrays_from_structure(store.structure(int(i)))
        out.append(
            descriptor_grids(
                lattice[int(i)],
                frac,
                numbers,
                kind=kind,
                grid_size=int(store.grid_size),
                padding=float(store.padding),
            )
        )
    return np.stack(out) if out else None


def with_species_channels(store: Any, data: VoxelSplit, kind: str) -> VoxelSplit:
    """``data`` with the VAE's species channels of every item (``kind`` = the descriptor
    set; ``none``: without)."""
    import dataclasses

    return dataclasses.replace(data, channels=species_channels_of(store, data.index, kind))


def with_sites(store: Any, data: VoxelSplit) -> VoxelSplit:
    """``data`` with every item's sites (fractional position and σ) from the store's cells."""
    import dataclasses

    from matdisc.voxel.cell import arrays_from_structure
    from matdisc.voxel.radii import radius_lookup

    radii = radius_lookup()
    cells = [arrays_from_structure(store.structure(int(i)))[1:] for i in data.index]
    sites = np.zeros((len(cells), max((len(n) for _, n in cells), default=0), 4), np.float32)
    for k, (frac, numbers) in enumerate(cells):
        sites[k, : len(numbers), :3] = frac % 1.0
        sites[k, : len(numbers), 3] = radii[numbers]
    return dataclasses.replace(data, sites=sites)


def load_split(store: Any, split: str, *, limit: int | None = None) -> VoxelSplit:
    """Read the items of ``split`` (train/val/test, or all: the whole store) from an open
    voxel store.

    ``limit`` keeps the first ``limit`` items (in store order) for quick runs.
    """
    splits = np.asarray(store.split)
    index = np.arange(len(splits)) if split == "all" else np.flatnonzero(splits == split)
    if limit is not None:
        index = index[:limit]
    density = np.asarray(store.density[:], dtype=np.float32)[index]
    species = np.asarray(store.species[:], dtype=np.uint8)[index]
    return VoxelSplit(
        index=index,
        material_id=np.asarray(store.material_id)[index],
        density=density,
        species=species,
        lattice=np.asarray(store.lattice, dtype=np.float32)[index],
        decile=np.asarray(store.decile, dtype=np.int64)[index],
        grid_size=int(store.grid_size),
        padding=float(store.padding),
        setting=str(store.attrs.get("setting", "as_given")),
    )


def class_lookup(classes: Sequence[int]) -> np.ndarray:
    """(256,) int64 table: atomic number -> class index (0 background, unknown -> ignore)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    lut[0] = 0
    for k, z in enumerate(classes):
        lut[int(z)] = k + 1
    return lut


def class_counts(species: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Voxel count per class index (background first) over an array of atomic numbers."""
    per_z = np.bincount(species.ravel(), minlength=256)
    return np.array([per_z[0], *(per_z[int(z)] for z in classes)], dtype=np.int64)


def onehot(decile: int, n: int = N_DECILES) -> np.ndarray:
    """(n,) float32 one-hot of ``decile``; all zeros for an unknown decile (-1), the
    condition of maps trained unconditioned (``vae.unknown_decile: unconditioned``)."""
    out = np.zeros(n, dtype=np.float32)
    if decile >= 0:
        out[int(decile)] = 1.0
    return out


def _rng() -> np.random.Generator:
    """A numpy generator seeded from torch's global stream (seeded + checkpointed by fit)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


def _rotate(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    from matdisc.voxel.augment import random_rot90

    return tuple(np.ascontiguousarray(a) for a in random_rot90(_rng(), *arrays))


@dataclass(frozen=True)
class Substitution:
    """Species substitution: the training maps re-rendered with other elements on the sites.

    With ``probability`` an item's cell is drawn again (:func:`density_and_species`, the
    voxelizer's own rendering, ~1 ms at 32³) after every element of it is replaced by a
    random class element whose radius lies within a factor ``radius_ratio`` of its own
    (the element itself included; distinct elements stay distinct). The geometry stays
    the real crystal's and the Gaussians stay (Z, σ) of real elements, but each element
    is seen in many more contexts than the few cells that hold it, and next to the
    elements of similar σ it must be told apart from (a departure from the seed, whose
    78,588 maps cover the elements without it).
    """

    lattice: np.ndarray  # (n, 3) Å
    frac: list[np.ndarray]  # per item (sites, 3)
    numbers: list[np.ndarray]  # per item (sites,)
    classes: np.ndarray  # (K,) atomic numbers that may be substituted in
    radii: np.ndarray  # (119,) Å by atomic number (NaN = none), the voxelizer's table
    probability: float
    radius_ratio: float
    grid_size: int
    padding: float
    label_fraction: float
    min_label_radius_voxels: float

    def draw(self, numbers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``numbers`` with each element replaced by a random one of similar radius."""
        elements = np.unique(numbers)
        taken: set[int] = set()
        mapping: dict[int, int] = {}
        log_ratio = np.log(self.radius_ratio)
        for z in rng.permutation(elements):
            near = np.abs(np.log(self.radii[self.classes] / self.radii[z])) <= log_ratio
            pool = [int(c) for c in self.classes[near] if int(c) not in taken]
            mapping[int(z)] = int(rng.choice(pool)) if pool else int(z)
            taken.add(mapping[int(z)])
        return np.array([mapping[int(z)] for z in numbers], dtype=np.int64)

    def render(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Density (d, d, d) float32 and species (d, d, d) uint8 of item ``i`` substituted."""
        from matdisc.voxel.core import density_and_species

        numbers = self.draw(self.numbers[i], rng)
        return density_and_species(
            self.lattice[i],
            self.frac[i],
            numbers,
            self.radii[numbers],
            grid_size=self.grid_size,
            padding=self.padding,
            label_fraction=self.label_fraction,
            min_label_radius_voxels=self.min_label_radius_voxels,
        )


def substitution_for(
    store: Any, data: VoxelSplit, classes: Sequence[int], *, probability: float, radius_ratio: float
) -> Substitution:
    """The :class:`Substitution` of ``data`` (items of ``store``) with the store's rendering
    settings (grid, padding, label radii, radius table)."""
    from matdisc.errors import UserError
    from matdisc.voxel.cell import arrays_from_structure
    from matdisc.voxel.radii import DEFAULT_TABLE, radius_lookup, table_sha256

    if store.attrs.get("radius_table_sha256") != table_sha256(DEFAULT_TABLE):
        raise UserError(
            f"the voxel store {store.path} was drawn with another radius table than "
            f"{DEFAULT_TABLE.name} of this checkout, so substituted maps would not match it; "
            "re-run the voxelize_structures rule or set unet.substitution_probability: 0."
        )
    radii = radius_lookup(DEFAULT_TABLE)
    frac, numbers = [], []
    for index in data.index:
        _, f, z = arrays_from_structure(store.structure(int(index)))
        frac.append(f)
        numbers.append(np.asarray(z, dtype=np.int64))
    usable = np.array([int(z) for z in classes if np.isfinite(radii[int(z)])], dtype=np.int64)
    return Substitution(
        lattice=np.asarray(data.lattice, dtype=np.float64),
        frac=frac,
        numbers=numbers,
        classes=usable,
        radii=radii,
        probability=float(probability),
        radius_ratio=float(radius_ratio),
        grid_size=data.grid_size,
        padding=data.padding,
        label_fraction=float(store.attrs["label_fraction"]),
        min_label_radius_voxels=float(store.attrs["min_label_radius_voxels"]),
    )


class UNetDataset(Dataset):
    """Items (density (1, d, d, d) float32, class index (d, d, d) int64, mask (d, d, d) float32).

    Class indices follow ``classes`` (index k + 1 = element ``classes[k]``); elements
    without a class get :data:`IGNORE_INDEX` (the cross-entropy skips them).
    ``substitution``: re-render a share of the items with substituted species (training).
    """

    def __init__(
        self,
        data: VoxelSplit,
        classes: Sequence[int],
        *,
        augment: bool,
        substitution: Substitution | None = None,
    ) -> None:
        self.data = data
        self.lut = class_lookup(classes)
        self.augment = augment
        self.substitution = substitution
        unknown = np.setdiff1d(np.unique(data.species), [0, *classes])
        if unknown.size:
            log.info(
                "UNet data: elements %s have no class (not in the training split); their "
                "voxels are ignored by the loss and count as misses in the metrics",
                unknown.tolist(),
            )

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        density = self.data.density[i]
        species = self.data.species[i]
        sub = self.substitution
        if sub is not None and sub.probability > 0:
            rng = _rng()
            if rng.random() < sub.probability:
                density, species = sub.render(i, rng)
        if self.augment:
            density, species = _rotate(density, species)
        target = self.lut[species]
        return (
            torch.from_numpy(np.ascontiguousarray(density, dtype=np.float32))[None],
            torch.from_numpy(target),
            torch.from_numpy((species > 0).astype(np.float32)),
        )


def coords_of(lattice: np.ndarray, grid_size: int, padding: float) -> np.ndarray:
    """Cartesian voxel-centre grid (3, d, d, d) Å of one cell with lengths ``lattice`` (3,)."""
    from matdisc.voxel import coordinate_grid

    grid = coordinate_grid(np.asarray(lattice, dtype=np.float32)[None], grid_size, padding)
    return np.asarray(grid, dtype=np.float32)[0]


#: What the VAE does with maps whose formation-energy decile is unknown (``vae.unknown_decile``).
UNKNOWN_DECILE = ("skip", "unconditioned")


def known_deciles(data: VoxelSplit, unknown: str = "skip") -> np.ndarray:
    """Indices of the maps of ``data`` the VAE trains on: those with a known decile
    (``unknown="skip"``) or all of them (``"unconditioned"``: an unknown decile is the
    all-zero condition)."""
    if unknown not in UNKNOWN_DECILE:
        raise ValueError(f"unknown must be one of {UNKNOWN_DECILE}, got {unknown!r}")
    if unknown == "unconditioned":
        return np.arange(len(data))
    return np.flatnonzero(data.decile >= 0)


def vae_batch(
    data: VoxelSplit, start: int, stop: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Maps ``start:stop`` of ``data`` as the VAE takes them: density (B, d, d, d), coords
    (B, 3, d, d, d) Å, one-hot deciles (B, 10) (zeros for an unknown decile) and the
    species channels (B, 1 + k, d, d, d) or None."""
    idx = range(start, min(stop, len(data)))
    coords = np.stack([coords_of(data.lattice[i], data.grid_size, data.padding) for i in idx])
    cond = np.stack([onehot(data.decile[i]) for i in idx])
    density, coords, cond = (
        torch.from_numpy(np.ascontiguousarray(a)).to(device)
        for a in (data.density[idx.start : idx.stop], coords, cond)
    )
    species = None
    if data.channels is not None:
        species = torch.from_numpy(data.channels[idx.start : idx.stop]).to(device)
    return density, coords, cond, species


class VAEDataset(Dataset):
    """Items (density (1, d, d, d), coords (3, d, d, d) Å, one-hot decile (10,), lattice (3,) Å
    [, species channels (1 + k, d, d, d) when ``data`` has them] [, sites (m, 4) when
    ``data`` has them, rotated with the maps]).

    Items whose formation-energy decile is unknown (-1) are left out (their number is
    logged), or with ``unknown="unconditioned"`` kept with an all-zero condition.
    ``augment`` rotates each item by a random 90° rotation: any of the 24 for a store in the
    source's setting, one of the 12 that keep the tetrahedral holes in place
    (:data:`matdisc.voxel.augment.TETRAHEDRAL_ROTATIONS`) for a store in the canonical
    setting, whose maps all have a half-Heusler's empty holes at the same place.
    """

    def __init__(
        self, data: VoxelSplit, *, augment: bool, name: str = "", unknown: str = "skip"
    ) -> None:
        from matdisc.voxel.augment import TETRAHEDRAL_ROTATIONS

        keep = known_deciles(data, unknown)
        skipped = len(data) - keep.size
        if skipped:
            log.info(
                "VAE %s data: %d of %d structures skipped: formation-energy decile unknown",
                name,
                skipped,
                len(data),
            )
        self.data = data.subset(keep)
        self.augment = augment
        self.rotations = TETRAHEDRAL_ROTATIONS if data.setting == "canonical" else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        d = self.data
        # species channels rotate one by one, as scalar maps (not as a coordinate field)
        grids = [d.density[i], coords_of(d.lattice[i], d.grid_size, d.padding)]
        if d.channels is not None:
            grids.extend(d.channels[i])
        sites = None if d.sites is None else d.sites[i].copy()
        if self.augment:
            from matdisc.voxel.augment import apply_rotation, draw_rotation, rotate_fractions

            turn = draw_rotation(_rng(), self.rotations)
            grids = [np.ascontiguousarray(a) for a in apply_rotation(turn, *grids)]
            if sites is not None:
                sites[:, :3] = rotate_fractions(sites[:, :3], turn) % 1.0
        density, coords, *species = grids
        item = (
            torch.from_numpy(np.ascontiguousarray(density, dtype=np.float32))[None],
            torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32)),
            torch.from_numpy(onehot(d.decile[i])),
            torch.from_numpy(d.lattice[i].astype(np.float32)),
        )
        if species:
            item = (*item, torch.from_numpy(np.stack(species).astype(np.float32)))
        if sites is not None:
            item = (*item, torch.from_numpy(sites))
        return item
