"""Periodic geometry shared by the inverse, its metrics and the filters (matdisc.geometry)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from matdisc.geometry import (
    components,
    distances,
    lattice_translations,
    min_image,
    shortest_distance,
    squared_distances,
)

SKEWED = np.array([[4.0, 0, 0], [3.8, 0.5, 0], [0, 0, 4.0]])


def brute_force(a: np.ndarray, b: np.ndarray, matrix: np.ndarray, reach: int) -> np.ndarray:
    """(n, m) least distances (Å) over every translation within ``reach`` cells."""
    shifts = np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)))
    cartesian = (b[None, :, None, :] + shifts - a[:, None, None, :]) @ matrix
    return np.linalg.norm(cartesian, axis=-1).min(axis=-1)


def test_min_image_wraps_to_half_a_cell_and_in_place():
    delta = np.array([0.7, -0.6, 2.2])
    assert np.allclose(min_image(delta), [-0.3, 0.4, 0.2])
    out = delta.copy()
    min_image(out, out=out)
    assert np.array_equal(out, min_image(delta))


def test_the_minimum_image_is_exact_in_an_orthorhombic_cell():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 3)) * 4 - 2, rng.random((7, 3))
    lengths = np.array([3.0, 4.5, 6.0])
    assert np.allclose(distances(a, b, lengths), brute_force(a, b, np.diag(lengths), 3))
    assert np.array_equal(distances(a, b, np.diag(lengths)), distances(a, b, lengths))
    # a batch of position sets (c, n, 3) against one (m, 3)
    moved = rng.random((2, 5, 3))
    assert squared_distances(moved, b, lengths).shape == (2, 5, 7)
    assert np.allclose(
        squared_distances(moved, b, lengths)[1], distances(moved[1], b, lengths) ** 2
    )


def test_skewed_cells_are_exact_below_the_cutoff_of_the_searched_translations():
    rng = np.random.default_rng(1)
    a, b = rng.random((6, 3)), rng.random((6, 3))
    exact = brute_force(a, b, SKEWED, 10)
    searched = distances(a, b, SKEWED, lattice_translations(SKEWED, 4.0))
    assert np.allclose(np.minimum(searched, 4.0), np.minimum(exact, 4.0))
    # the minimum image alone is only an upper bound there
    minimum_image = distances(a, b, SKEWED)
    assert (minimum_image >= exact - 1e-12).all() and (minimum_image > exact + 0.1).any()


def test_shortest_distance_counts_a_site_and_its_own_images():
    assert shortest_distance(np.zeros((1, 3)), np.eye(3) * 0.3) == pytest.approx(0.3)
    assert shortest_distance(np.zeros((1, 3)), SKEWED) == pytest.approx(
        np.linalg.norm(SKEWED[1] - SKEWED[0])
    )
    frac = np.array([[0.0, 0.0, 0.0], [0.98, 0.5, 0.5]])
    assert shortest_distance(frac, np.eye(3) * 5.0) == pytest.approx(np.hypot(0.1, 3.5355339))
    assert np.isnan(shortest_distance(np.zeros((0, 3)), np.eye(3)))


def test_components_of_chains_in_any_order_and_isolated_nodes():
    adjacency = np.zeros((6, 6), dtype=bool)
    for i, j in [(0, 4), (4, 2), (2, 5)]:
        adjacency[i, j] = adjacency[j, i] = True
    assert components(adjacency).tolist() == [0, 1, 0, 2, 0, 0]
    assert components(np.zeros((0, 0), dtype=bool)).tolist() == []
    # a long path visited in a random order is still one component
    order = np.random.default_rng(2).permutation(50)
    path = np.zeros((50, 50), dtype=bool)
    path[order[:-1], order[1:]] = path[order[1:], order[:-1]] = True
    assert components(path).tolist() == [0] * 50


def test_nearest_sites_agree_with_the_dense_distances():
    from matdisc.geometry import nearest_sites

    rng = np.random.default_rng(3)
    cell = np.array([5.0, 6.5, 7.25])
    sites = rng.random((23, 3))
    # points on the cell's faces and just outside them (x % 1 can round up to 1.0)
    points = np.concatenate([rng.random((4, 40, 3)) * 3 - 1, np.full((4, 2, 3), -1e-17)], axis=1)
    points[0, 0] = [1.0, 0.0, 0.999999999999]
    d2, index = nearest_sites(points, sites, cell)
    dense = squared_distances(points, sites, cell)
    assert d2.shape == index.shape == (4, 42)
    np.testing.assert_allclose(d2, dense.min(axis=-1), atol=1e-12)
    assert np.array_equal(index, dense.argmin(axis=-1))
    empty_d2, _ = nearest_sites(points[0], np.zeros((0, 3)), cell)
    assert np.isinf(empty_d2).all()


def test_close_groups_are_the_components_of_the_dense_graph():
    from matdisc.geometry import close_groups

    rng = np.random.default_rng(5)
    cell = np.array([6.0, 6.0, 6.0])
    # clusters of images straddling the cell's faces, chains and isolated points
    centres = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.999], [0.25, 0.75, 0.5]])
    points = np.concatenate(
        [c + rng.normal(0, 0.01, (7, 3)) for c in centres] + [rng.random((30, 3))]
    )
    points = points[rng.permutation(len(points))]
    for distance in (0.05, 0.3, 1.0, 2.5):
        dense = components(squared_distances(points, points, cell) <= distance**2)
        assert np.array_equal(close_groups(points, cell, distance), dense)
    assert close_groups(np.zeros((0, 3)), cell, 1.0).tolist() == []
