"""Crystal graphs (matdisc.graphs) and the CGCNN network (matdisc.models.cgcnn)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from matdisc.graphs import GraphStore, build_graph, element_feature_table, parse_structures
from matdisc.models.cgcnn import CGCNN


def srtio3() -> Structure:
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def nacl() -> Structure:
    fcc = 0.5 * 5.64 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    return Structure(Lattice(fcc), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def silicon() -> Structure:
    return Structure(
        Lattice.from_parameters(3.87, 3.87, 3.87, 60, 60, 60),
        ["Si", "Si"],
        [[0, 0, 0], [0.25, 0.25, 0.25]],
    )


def random_structure(rng: np.random.Generator, n: int) -> Structure:
    """A low-symmetry triclinic cell with sites at least 1.5 Å apart."""
    while True:
        a, b, c = rng.uniform(3.5, 7.0, 3)
        lat = Lattice.from_parameters(a, b, c, *rng.uniform(70, 110, 3))
        s = Structure(lat, rng.choice(["Li", "O", "Fe", "Sr", "Ti", "Cl"], n), rng.random((n, 3)))
        if n == 1 or s.distance_matrix[np.triu_indices(n, 1)].min() > 1.5:
            return s


STRUCTURES = [srtio3(), nacl(), silicon()]


@pytest.fixture(scope="module")
def model() -> CGCNN:
    torch.manual_seed(0)
    m = CGCNN(
        element_features=element_feature_table().tolist(),
        node_features=16,
        hidden_features=16,
        n_conv=2,
    )
    # non-trivial batch-norm statistics, so eval mode is not the identity
    m.train()
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for _ in range(3):
            m(build_graph([random_structure(rng, 4) for _ in range(8)]))
    return m.eval()


def _predict(model: CGCNN, structures: list[Structure]) -> np.ndarray:
    with torch.no_grad():
        return model(build_graph(structures)).numpy()


def test_neighbours_match_pymatgen_brute_force():
    rng = np.random.default_rng(0)
    structures = [random_structure(rng, n) for n in (1, 2, 3, 5, 8)] + STRUCTURES
    graph = build_graph(structures, cutoff=8.0, max_neighbors=12, tie_tolerance=1e-6)
    offset = 0
    for s in structures:
        for i in range(len(s)):
            node = offset + i
            mine = np.sort(graph.edge_distance[graph.edge_center == node].numpy())
            ref = np.sort([nb.nn_distance for nb in s.get_neighbors(s[i], 8.0)])
            kth = ref[11]
            expected = ref[ref <= kth + 1e-6]  # the 12 nearest, plus any tied with the 12th
            np.testing.assert_allclose(mine, expected, atol=1e-5)
            weight = graph.edge_weight[graph.edge_center == node].sum().item()
            assert weight == pytest.approx(12.0, abs=1e-5)
        offset += len(s)


def test_tied_shell_gets_fractional_weights():
    # O in SrTiO3: 2 Ti at a/2, then 12 sites (4 Sr + 8 O) tied at a/√2 for 10 slots
    graph = build_graph([srtio3()])
    o_edges = graph.edge_center == 2
    assert int(o_edges.sum()) == 14
    weights = np.sort(graph.edge_weight[o_edges].numpy())
    np.testing.assert_allclose(weights, [10 / 12] * 12 + [1.0, 1.0], rtol=1e-6)


def test_fewer_than_k_neighbours_within_cutoff():
    s = Structure(Lattice.cubic(5.0), ["Na"], [[0, 0, 0]])
    graph = build_graph([s], cutoff=5.5, max_neighbors=12)
    assert graph.edge_center.shape[0] == 6  # only the 6 face neighbours are within 5.5 Å
    assert torch.all(graph.edge_weight == 1)


def test_rotation_translation_permutation_invariance(model):
    rng = np.random.default_rng(3)
    base = [*STRUCTURES, random_structure(rng, 6)]
    ref = _predict(model, base)
    rotated, shifted, permuted = [], [], []
    for s in base:
        r = s.copy()
        r.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
        rotated.append(r)
        t = s.copy()
        t.translate_sites(list(range(len(t))), [0.31, -0.72, 0.45], frac_coords=True)
        shifted.append(t)
        perm = rng.permutation(len(s))
        permuted.append(Structure(s.lattice, [s[i].specie for i in perm], s.frac_coords[perm]))
    for variant in (rotated, shifted, permuted):
        np.testing.assert_allclose(_predict(model, variant), ref, rtol=1e-5, atol=1e-5)


def test_supercell_predicts_same_as_primitive(model):
    rng = np.random.default_rng(4)
    base = [*STRUCTURES, random_structure(rng, 3)]
    supers = []
    for s in base:
        sc = s.copy()
        sc.make_supercell([[2, 0, 0], [0, 1, 1], [0, -1, 1]])
        supers.append(sc)
    np.testing.assert_allclose(_predict(model, supers), _predict(model, base), rtol=1e-5, atol=1e-5)


def test_batching_does_not_change_predictions(model):
    rng = np.random.default_rng(5)
    structures = [random_structure(rng, n) for n in (2, 5, 5, 3, 7)] + STRUCTURES
    together = _predict(model, structures)
    alone = np.concatenate([_predict(model, [s]) for s in structures])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    store = GraphStore(build_graph(structures))
    order = [4, 0, 7, 2]
    with torch.no_grad():
        subset = model(store.batch(order)).numpy()
    np.testing.assert_allclose(subset, together[order], rtol=1e-5, atol=1e-6)


def test_parse_structures_reads_json_and_reports_bad_items():
    s = srtio3()
    disordered = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    arrays, ok, bad = parse_structures([s, json.dumps(s.as_dict()), s.as_dict(), disordered])
    assert ok == [0, 1, 2]
    assert list(bad) == [3] and "disordered" in bad[3]
    for z in arrays.numbers:
        assert z.tolist() == [38, 22, 8, 8, 8]


def test_element_table_is_one_hot_per_descriptor():
    table = element_feature_table()
    assert table.shape == (101, 91)
    assert not table[0].any()
    # each element has at most 9 ones (one per descriptor), H..Fm all have at least 7
    assert table[1:].sum(axis=1).max() == 9
    assert table[1:].sum(axis=1).min() >= 7


def test_gaussian_expansion_has_no_subnormal_tails():
    """The far tails are exact zeros, not float32 subnormals (which slow CPU matrix products
    up to 70x); the rest is the Gaussian itself."""
    from matdisc.graphs import GaussianExpansion

    expansion = GaussianExpansion(cutoff=8.0, step=0.2, width=0.2)
    distance = torch.linspace(0.5, 8.0, 2001)
    got = expansion(distance)
    exact = torch.exp(-(((distance[:, None].double() - expansion.centers.double()) / 0.2) ** 2))
    assert not ((got > 0) & (got < torch.finfo(torch.float32).tiny)).any()
    assert (got == 0).any()  # the tails were there to cut
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-25)
