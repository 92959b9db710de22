"""Periodic geometry shared by the inverse, its metrics and the filters.

* :func:`min_image`: fractional separations wrapped to the nearest periodic image.
* :func:`squared_distances` / :func:`distances`: periodic distances (Å² / Å) between two
  sets of fractional positions, in an orthorhombic cell given by its lengths (the
  minimum image is then exact) or in any cell given by its vectors, with the lattice
  translations of :func:`lattice_translations` searched.
* :func:`nearest_sites`: each point's nearest site in an orthorhombic cell (a periodic
  k-d tree: n log m where the dense distances cost n m).
* :func:`shortest_distance`: the shortest distance of a crystal, between two sites or a
  site and its own image.
* :func:`components`: connected components of a small dense graph (images of one atom,
  atoms to fuse, orbits).
* :func:`close_groups`: the same components for points within a distance of each other in
  an orthorhombic cell, from a k-d tree's pairs (the thousands of images of an orbit
  closure, where the dense graph costs n²).
"""

from __future__ import annotations

import itertools

import numpy as np


def min_image(delta: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Fractional separations (..., 3) wrapped to [-0.5, 0.5] (the nearest image along
    each axis); ``out=delta`` wraps them in place."""
    return np.subtract(delta, np.rint(delta), out=out)


def lattice_translations(matrix: np.ndarray, cutoff: float) -> np.ndarray:
    """Integer translations (M, 3) that can bring two sites within ``cutoff`` Å once their
    separation is wrapped by :func:`min_image`; at least the home cell and its 26
    neighbours (``cutoff`` 0). matrix: (3, 3) lattice vectors as rows (Å).

    A translation n moves two wrapped sites at least (|n_k| - 0.5) plane spacings apart
    along axis k.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    volume = abs(float(np.linalg.det(matrix)))
    counts = []
    for k in range(3):
        other = np.cross(matrix[(k + 1) % 3], matrix[(k + 2) % 3])
        spacing = volume / float(np.linalg.norm(other))  # distance between lattice planes
        counts.append(max(1, int(np.ceil(cutoff / spacing + 0.5))))
    ranges = [range(-n, n + 1) for n in counts]
    return np.array(list(itertools.product(*ranges)), dtype=np.float64)


def squared_distances(
    a: np.ndarray, b: np.ndarray, cell: np.ndarray, translations: np.ndarray | None = None
) -> np.ndarray:
    """(..., n, m) squared periodic distances (Å²) from fractional positions a (..., n, 3)
    to b (m, 3).

    cell: (3,) lengths of an orthorhombic cell or (3, 3) lattice vectors as rows (Å).
    translations: None for the minimum image (exact in an orthorhombic cell), or (M, 3)
    lattice translations added to the minimum image, the least distance over them
    returned (skewed cells: :func:`lattice_translations`).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    matrix = np.diag(cell) if cell.shape == (3,) else cell.reshape(3, 3)
    shape = (*a.shape[:-1], len(b))
    if translations is not None:
        translations = np.asarray(translations, dtype=np.float64).reshape(-1, 3)
        shape += (len(translations),)
    # Axis by axis on (..., n, m[, M]) arrays, several times faster than on (..., 3) ones;
    # zero cell entries are skipped, so an orthorhombic cell costs one product per axis.
    # The products are taken in place: this runs on the large arrays of the orbit closure.
    out = np.zeros(shape)
    for k in range(3):
        cartesian = None
        for j in np.flatnonzero(matrix[:, k]):
            u = b[:, j] - a[..., :, None, j]
            min_image(u, out=u)
            if translations is not None:
                u = u[..., None] + translations[:, j]
            u *= matrix[j, k]
            cartesian = u if cartesian is None else cartesian + u
        cartesian *= cartesian
        out += cartesian
    return out if translations is None else out.min(axis=-1)


def distances(
    a: np.ndarray, b: np.ndarray, cell: np.ndarray, translations: np.ndarray | None = None
) -> np.ndarray:
    """(..., n, m) periodic distances (Å): the square root of :func:`squared_distances`."""
    return np.sqrt(squared_distances(a, b, cell, translations))


def nearest_sites(
    points: np.ndarray, sites: np.ndarray, cell: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Squared periodic distance (Å²) to, and index of, the nearest of ``sites`` (m, 3) for
    each of ``points`` (..., 3); fractional positions in an orthorhombic cell of lengths
    ``cell`` (3,) Å, where the minimum image is exact. The same as the minimum and argmin
    of :func:`squared_distances` over the sites (ties apart), in O(n log m)."""
    from scipy.spatial import cKDTree

    cell = np.asarray(cell, dtype=np.float64).reshape(3)
    points = np.asarray(points, dtype=np.float64)
    shape = points.shape[:-1]
    if len(sites) == 0:
        return np.full(shape, np.inf), np.zeros(shape, dtype=np.int64)
    tree = cKDTree(_in_box(sites, cell), boxsize=cell)
    d, i = tree.query(_in_box(points.reshape(-1, 3), cell), k=1)
    return (d * d).reshape(shape), i.reshape(shape).astype(np.int64)


def close_groups(points: np.ndarray, cell: np.ndarray, distance: float) -> np.ndarray:
    """Component id per point (numbered by its smallest point, as :func:`components`) of
    the graph linking fractional ``points`` (n, 3) at most ``distance`` Å apart in an
    orthorhombic cell of lengths ``cell`` (3,) Å: ``components(squared_distances(points,
    points, cell) <= distance**2)`` without the n² matrix."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    cell = np.asarray(cell, dtype=np.float64).reshape(3)
    n = len(points)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    tree = cKDTree(_in_box(points, cell), boxsize=cell)
    pairs = tree.query_pairs(float(distance), output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs), dtype=bool), (pairs[:, 0], pairs[:, 1])), (n, n))
    _, labels = connected_components(graph, directed=False)
    # number the components by their smallest point
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[labels]


def _in_box(frac: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Cartesian positions in [0, cell) of fractional ones (x % 1 may round up to 1)."""
    x = (np.asarray(frac, dtype=np.float64) % 1.0) * cell
    return np.where(x >= cell, x - cell, x)


def shortest_distance(frac: np.ndarray, matrix: np.ndarray, cutoff: float = 3.0) -> float:
    """Shortest distance (Å) between any two sites or a site and its own image.

    frac: (n, 3) fractional coordinates; matrix: (3, 3) lattice vectors as rows (Å).
    cutoff: translations are searched far enough to find every distance below this (Å)
    exactly, so any cell shape is handled; above it, the value is the minimum over the
    searched translations (at least the 26 neighbouring cells). NaN without sites.
    """
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    matrix = np.asarray(matrix, dtype=np.float64)
    if len(frac) == 0:
        return float("nan")
    translations = lattice_translations(matrix, cutoff)
    d2 = squared_distances(frac, frac, matrix, translations)
    # A site's distance to itself without translation is no distance: its nearest own image
    # lies at the shortest nonzero translation searched.
    origin = np.zeros((1, 3))
    moved = translations[np.any(translations != 0, axis=1)]
    np.fill_diagonal(d2, squared_distances(origin, origin, matrix, moved)[0, 0])
    return float(np.sqrt(d2.min()))


def components(adjacency: np.ndarray) -> np.ndarray:
    """Connected-component id (0..c-1, numbered by their smallest node) per node of a
    dense symmetric boolean adjacency (n, n).

    Minimum-label propagation: each pass gives every node the smallest id among its
    neighbours and itself; the graphs here are small (regions of one grid, atoms of one
    cell) and their components shallow, so a few passes over the dense matrix beat
    building a sparse one.
    """
    m = len(adjacency)
    ids = np.arange(m)
    if m == 0:
        return ids.astype(np.int64)
    linked = adjacency | np.eye(m, dtype=bool)
    while True:
        new = np.where(linked, ids[None, :], m).min(axis=1)
        new = new[new]  # pointer jumping: follow the new ids once more
        if np.array_equal(new, ids):
            break
        ids = new
    return np.unique(ids, return_inverse=True)[1].astype(np.int64)
