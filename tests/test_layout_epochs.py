"""layout_epochs: our kernel for umap's epochs, fed by umap's own pieces (reduce.umap_graph_layout)."""
import numpy as np
import pytest

from clip_icm import layout_epochs, reduce
from clip_icm.embeddings import unit_rows
from clip_icm.errors import InvalidInput


def _rows(n: int = 300, dim: int = 12, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    centres = g.normal(size=(4, dim)) * 3
    return unit_rows((centres[np.arange(n) % 4] + g.normal(size=(n, dim))).astype(np.float32))


def _graph(X: np.ndarray, seed: int, n_epochs: int):
    """umap's fuzzy graph of X and its random state after building it, as reduce._umap makes them."""
    import umap
    from sklearn.utils import check_random_state

    state = check_random_state(seed)
    a, b = reduce._curve_float32()
    graph = umap.UMAP(n_components=2, n_neighbors=15, metric="cosine", n_epochs=n_epochs, a=a, b=b, random_state=state,
                      n_jobs=1, precomputed_knn=reduce.exact_neighbours(X, 15), transform_mode="graph").fit(X).graph_
    return graph, state


@pytest.mark.parametrize("start", ["spectral", "given", "given, two points on one spot"])
def test_umap_graph_layout_with_umaps_own_epochs_is_umaps_layout_bit_for_bit(start):
    """Everything around the epochs is umap's: with umap's epoch function in place of ours, the layout equals
    umap.UMAP(...).fit_transform's, bit for bit (from the spectral start and from a given one, with the
    jitter umap gives points that start on one spot). So our kernel is the only change."""
    import umap
    from umap.layouts import optimize_layout_euclidean

    X = _rows()
    init = None
    if start != "spectral":
        init = reduce._standardise(np.random.default_rng(1).normal(size=(len(X), 2)))
        if "one spot" in start:
            init[1] = init[0]
    a, b = reduce._curve_float32()
    expected = umap.UMAP(n_components=2, n_neighbors=15, metric="cosine", n_epochs=30, a=a, b=b, random_state=4, n_jobs=1,
                         precomputed_knn=reduce.exact_neighbours(X, 15), init="spectral" if init is None else init,
                         ).fit_transform(X)

    def umaps_epochs(embedding, head, tail, n_epochs, epochs_per_sample, a, b, rng_state):
        return optimize_layout_euclidean(embedding, embedding, head, tail, n_epochs, len(embedding), epochs_per_sample,
                                         a, b, rng_state, move_other=True)

    graph, state = _graph(X, 4, 30)
    got = reduce.umap_graph_layout(X, graph, init, state, 30, a, b, umaps_epochs)
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    graph, state = _graph(X, 4, 30)
    ours = reduce.umap_graph_layout(X, graph, init, state, 30, a, b, layout_epochs.optimize_layout)
    assert np.isfinite(ours).all() and not np.array_equal(ours, expected)  # the kernel is ours


def test_the_kernel_is_the_same_descent_as_umaps():
    """Run side by side from one start for two epochs (the first samples no edge: each is due after a whole
    epoch or more; too few for rounding to grow), our epochs and umap's move every point by nearly the same
    step: the same edges, negative samples and gradients, only rounding and the tables' interpolation apart."""
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import make_epochs_per_sample

    X = _rows(400)
    graph, state = _graph(X, 0, 200)
    graph = graph.tocoo()
    eps = make_epochs_per_sample(graph.data, 200)
    start = (np.random.default_rng(0).uniform(0, 10, size=(len(X), 2))).astype(np.float32)
    rng_state = np.array([11, 22, 33], dtype=np.int64)
    a, b = reduce._curve_float32()
    theirs = start.copy()
    optimize_layout_euclidean(theirs, theirs, graph.row, graph.col, 2, len(X), eps, a, b, rng_state, move_other=True)
    ours = layout_epochs.optimize_layout(start.copy(), graph.row, graph.col, 2, eps, a, b, rng_state)
    step = np.linalg.norm(theirs - start, axis=1)
    assert step.mean() > 0.1  # the points moved
    assert np.abs(ours - theirs).max() < 1e-3 * step.max()


def test_coefficient_tables_match_the_formulas():
    """The tables' interpolated coefficients stay within 3e-6 of the gradients' formulas over their range."""
    from numba import njit

    a, b = reduce._curve_float32()
    attraction, repulsion = layout_epochs.coefficient_tables(a, b)

    @njit
    def looked_up(table, d):
        return np.array([layout_epochs._coefficient(table, x) for x in d])

    d = np.exp(np.random.default_rng(0).uniform(np.log(2.0 ** -29.9), np.log(2.0 ** 15.9), 20_000)).astype(np.float32)
    a64, b64, d64 = float(a), float(b), d.astype(np.float64)
    curve = a64 * d64**b64 + 1.0
    np.testing.assert_allclose(looked_up(attraction, d), -2 * a64 * b64 * d64 ** (b64 - 1) / curve, rtol=3e-6)
    np.testing.assert_allclose(looked_up(repulsion, d), 2 * b64 / ((0.001 + d64) * curve), rtol=3e-6)


def test_the_kernel_is_deterministic_and_rejects_a_layout_it_cannot_move():
    from umap.umap_ import make_epochs_per_sample

    X = _rows(200)
    graph, _ = _graph(X, 0, 50)
    graph = graph.tocoo()
    eps = make_epochs_per_sample(graph.data, 50)
    a, b = reduce._curve_float32()
    start = np.random.default_rng(0).uniform(0, 10, size=(len(X), 2)).astype(np.float32)
    runs = [layout_epochs.optimize_layout(start.copy(), graph.row, graph.col, 50, eps, a, b, np.array([1, 2, 3]))
            for _ in range(2)]
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], start)
    other = layout_epochs.optimize_layout(start.copy(), graph.row, graph.col, 50, eps, a, b, np.array([1 + 2**20, 2, 3]))
    assert not np.array_equal(other, runs[0])  # the generator's seeds matter (its lowest bits do not)
    for bad in (start.astype(np.float64), np.asfortranarray(start), start[:, :1].copy()):
        with pytest.raises(InvalidInput, match="float32"):
            layout_epochs.optimize_layout(bad, graph.row, graph.col, 50, eps, a, b, np.array([1, 2, 3]))
