"""Each orbit's element read with everything the chain knows: the UNet's class
probabilities summed over the orbit's voxels, and the composition's charge balance.

:func:`invert` given the UNet's :class:`~matdisc.segment.invert.ClassScores` returns
``soft`` votes per site: the class probabilities of the site's voxels summed (after
orbit completion every site of an orbit carries the orbit's sum). Here:

* :func:`orbit_alternatives`: the sites grouped into orbits (equal soft votes) and each
  orbit's ``top`` elements with their probabilities (the soft votes normalised).
* :func:`charge_aware` (``sample.species_choice: charge_aware``): a crystal whose
  composition fails the validity rule (``strict``, the filter's charge-balance rule) takes the most
  probable combination of the orbits' alternatives whose composition passes, trying the
  combinations best first (product of the orbits' probabilities) and at most
  ``max_tries`` of them; a valid crystal keeps its elements. The composition read
  before the choice and its validity are kept beside it, so the validity of the argmax
  read stays measurable.
* :func:`sampled` (``sample.species_choice: sampled``): each orbit's element drawn from
  its alternatives in proportion to their probabilities, redrawn until the composition
  passes the rule.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Composition, Element, Structure


@dataclass(frozen=True)
class Orbit:
    """Sites (indices into the structure) that share soft votes, and the orbit's most
    probable elements (atomic numbers, most probable first) with their probabilities."""

    sites: tuple[int, ...]
    numbers: tuple[int, ...]
    probabilities: tuple[float, ...]

    def as_dict(self) -> dict:
        return {
            "sites": len(self.sites),
            "elements": [Element.from_Z(z).symbol for z in self.numbers],
            "probabilities": [round(p, 4) for p in self.probabilities],
        }


def orbit_alternatives(soft: np.ndarray, top: int = 3) -> list[Orbit]:
    """Orbits (sites with equal soft votes, in order of their first site) and their
    ``top`` elements. soft: (n_sites, 256) summed class probabilities."""
    soft = np.asarray(soft, dtype=np.float64)
    _, first, group = np.unique(soft, axis=0, return_index=True, return_inverse=True)
    group = np.asarray(group).reshape(-1)
    orbits = []
    for g in np.argsort(first):
        row = soft[first[g]]
        total = row.sum()
        if total <= 0:
            continue
        best = np.argsort(-row, kind="stable")[:top]
        best = best[row[best] > 0]
        orbits.append(
            Orbit(
                sites=tuple(int(i) for i in np.flatnonzero(group == g)),
                numbers=tuple(int(z) for z in best),
                probabilities=tuple(float(row[z] / total) for z in best),
            )
        )
    return orbits


def combinations(orbits: list[Orbit]) -> Iterator[tuple[tuple[int, ...], float]]:
    """(choice per orbit as indices into its alternatives, log probability), most
    probable first (a best-first walk over the grid of choices)."""
    logp = [np.log(np.maximum(o.probabilities, 1e-300)) for o in orbits]
    start = (0,) * len(orbits)
    heap = [(-float(sum(lp[0] for lp in logp)), start)]
    seen = {start}
    while heap:
        neg, choice = heapq.heappop(heap)
        yield choice, -neg
        for k, i in enumerate(choice):
            if i + 1 < len(logp[k]):
                nxt = (*choice[:k], i + 1, *choice[k + 1 :])
                if nxt not in seen:
                    seen.add(nxt)
                    heapq.heappush(heap, (neg - logp[k][i + 1] + logp[k][i], nxt))


@dataclass(frozen=True)
class Choice:
    """The read-back of one crystal: its structure (elements possibly changed), the
    formula and validity before the choice, the rank of the combination taken (0: the
    crystal as read, valid or not changed; k: the k-th most probable combination; -1:
    none of the combinations tried passes) and the orbits' alternatives (JSON)."""

    structure: Structure
    formula_unconstrained: str
    valid_unconstrained: bool
    rank: int
    alternatives_json: str

    @property
    def valid(self) -> bool:
        """Does the structure returned pass the rule (a changed one always does)?"""
        return self.rank > 0 or (self.rank == 0 and self.valid_unconstrained)


def charge_aware(
    structure: Structure,
    soft: np.ndarray,
    *,
    valid: Callable[[str], bool],
    top: int = 3,
    max_tries: int = 32,
    choose: bool = True,
) -> Choice:
    """The crystal's read-back (see the module). valid: the validity rule, reduced
    formula -> bool (:func:`matdisc.stability.validity.is_valid` with a rule);
    ``choose=False`` only records the alternatives and the validity (the argmax read is
    kept)."""
    orbits = orbit_alternatives(soft, top)
    formula = structure.composition.reduced_formula
    passes = valid(formula)
    alternatives = json.dumps([o.as_dict() for o in orbits])
    if passes or not choose or not orbits:
        return Choice(structure, formula, passes, 0, alternatives)
    numbers = np.asarray(structure.atomic_numbers)
    for rank, (choice, _) in enumerate(combinations(orbits), start=1):
        if rank > max_tries:
            break
        trial = _assigned(numbers, orbits, choice)
        if valid(_reduced_formula(trial)):
            chosen = Structure(structure.lattice, trial.tolist(), structure.frac_coords)
            return Choice(chosen, formula, passes, rank, alternatives)
    return Choice(structure, formula, passes, -1, alternatives)


def sampled(
    structure: Structure,
    soft: np.ndarray,
    *,
    valid: Callable[[str], bool],
    rng: np.random.Generator,
    top: int = 3,
    max_tries: int = 32,
) -> Choice:
    """The crystal with each orbit's element drawn from its ``top`` alternatives in
    proportion to their probabilities (``sample.species_choice: sampled``), until a
    composition passes ``valid`` (at most ``max_tries`` draws): the chain's own
    uncertainty about the elements, where the argmax read keeps only its mode. The rank
    is the draw taken (0 when it equals the crystal as read, -1 when no draw passes: the
    crystal is kept as read)."""
    orbits = orbit_alternatives(soft, top)
    formula = structure.composition.reduced_formula
    passes = valid(formula)
    alternatives = json.dumps([o.as_dict() for o in orbits])
    if not orbits:
        return Choice(structure, formula, passes, 0 if passes else -1, alternatives)
    numbers = np.asarray(structure.atomic_numbers)
    weights = [np.asarray(o.probabilities) / np.sum(o.probabilities) for o in orbits]
    for draw in range(1, max_tries + 1):
        choice = tuple(int(rng.choice(len(w), p=w)) for w in weights)
        trial = _assigned(numbers, orbits, choice)
        if valid(_reduced_formula(trial)):
            if np.array_equal(trial, numbers):
                return Choice(structure, formula, passes, 0, alternatives)
            chosen = Structure(structure.lattice, trial.tolist(), structure.frac_coords)
            return Choice(chosen, formula, passes, draw, alternatives)
    return Choice(structure, formula, passes, -1, alternatives)


def _assigned(numbers: np.ndarray, orbits: list[Orbit], choice: tuple[int, ...]) -> np.ndarray:
    """Atomic numbers with each orbit's sites at its ``choice``-th alternative."""
    trial = numbers.copy()
    for orbit, i in zip(orbits, choice, strict=True):
        trial[list(orbit.sites)] = orbit.numbers[i]
    return trial


def _reduced_formula(numbers: np.ndarray) -> str:
    counts: dict[str, float] = {}
    for z in numbers:
        symbol = Element.from_Z(int(z)).symbol
        counts[symbol] = counts.get(symbol, 0) + 1
    return Composition(counts).reduced_formula
