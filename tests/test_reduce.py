"""reduce: UMAP layouts, shared initialisation, Procrustes alignment, bad input, numba's cache."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_icm.embeddings import unit_rows
from clip_icm.reduce import layout_2d, procrustes_align


def _blobs(n_per: int = 30, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    centres = g.normal(size=(3, dim)) * 4
    labels = np.repeat(np.arange(3), n_per)
    return centres[labels] + g.normal(size=(len(labels), dim)), labels


def test_layout_is_2d_seeded_and_keeps_clusters():
    X, labels = _blobs()
    a, b = layout_2d(X, seed=3), layout_2d(X, seed=3)
    assert a.shape == (len(X), 2) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b)
    centroids = np.stack([a[labels == k].mean(axis=0) for k in range(3)])
    spread = max(np.linalg.norm(a[labels == k] - centroids[k], axis=1).mean() for k in range(3))
    gaps = [np.linalg.norm(centroids[i] - centroids[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 2 * spread  # the three blobs stay apart


def test_default_layouts_are_identical_run_to_run(monkeypatch):
    """The default mode is deterministic: the same rows (more than one block of exact_neighbours'
    products) give the same layouts, bit for bit, full and started from it, whatever
    CLIP_ICM_PARALLEL_LAYOUTS says when parallel=False is asked for."""
    X, _ = _blobs(n_per=200, dim=24)
    full = [layout_2d(X, seed=2, n_epochs=50) for _ in range(2)]
    invariant = [layout_2d(X[:, :10], init=full[0], seed=2, n_epochs=50) for _ in range(2)]
    monkeypatch.setenv("CLIP_ICM_PARALLEL_LAYOUTS", "1")
    forced = layout_2d(X, seed=2, n_epochs=50, parallel=False)
    assert np.array_equal(full[0], full[1]) and np.array_equal(invariant[0], invariant[1])
    assert np.array_equal(forced, full[0])
    assert not np.array_equal(layout_2d(X, seed=3, n_epochs=50, parallel=False), full[0])  # the seed matters


@pytest.mark.parametrize("value, parallel", [("1", True), ("on", True), ("0", False), ("", False), (None, False)])
def test_the_parallel_mode_is_opt_in_by_environment(monkeypatch, value, parallel):
    from clip_icm import reduce

    if value is None:
        monkeypatch.delenv(reduce.PARALLEL_VAR, raising=False)
    else:
        monkeypatch.setenv(reduce.PARALLEL_VAR, value)
    asked = []
    monkeypatch.setattr(reduce, "_umap", lambda X, *args, parallel, neighbours: asked.append(parallel) or np.zeros((len(X), 2)))
    layout_2d(np.random.default_rng(0).normal(size=(10, 3)))
    layout_2d(np.random.default_rng(0).normal(size=(10, 3)), parallel=False)
    assert reduce.parallel_layouts() is parallel and asked == [parallel, False]


def test_shared_init_gives_a_layout_aligned_to_the_reference():
    X, _ = _blobs()
    full = layout_2d(X)
    again = layout_2d(X[:, :12], init=full)  # a "projected" space that keeps the blobs
    # aligned to the reference: same centre, no flip or rotation away from it
    assert np.allclose(again.mean(axis=0), full.mean(axis=0), atol=1e-3)
    corr = [np.corrcoef(again[:, d], full[:, d])[0, 1] for d in range(2)]
    assert min(corr) > 0.8


def test_procrustes_undoes_rotation_reflection_and_scale():
    g = np.random.default_rng(0)
    ref = g.normal(size=(40, 2))
    theta = 1.1
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ np.diag([1, -1])
    moved = 3.0 * ref @ rot + np.array([5.0, -2.0])
    np.testing.assert_allclose(procrustes_align(moved, ref), ref, atol=1e-4)


def test_few_points_fall_back_to_pca():
    out = layout_2d(np.eye(4, 6))
    assert out.shape == (4, 2) and np.isfinite(out).all()


@pytest.mark.parametrize("X", [np.zeros(5), np.zeros((0, 3))])
def test_bad_input_is_a_value_error(X):
    with pytest.raises(ValueError, match="non-empty 2-D"):
        layout_2d(X)


def test_init_of_the_wrong_shape_is_rejected():
    X, _ = _blobs(n_per=4)
    with pytest.raises(ValueError, match="init must have shape"):
        layout_2d(X, init=np.zeros((3, 2)))


def test_the_approximate_neighbour_path_keeps_clusters_too():
    """Layouts above the exact-search limit take umap's nearest-neighbour descent; the warm-up
    can compile it ahead. Forced here on a small set: the clusters must survive it."""
    from clip_icm.reduce import _umap

    X, labels = _blobs(n_per=60)
    xy = _umap(unit_rows(np.asarray(X, dtype=np.float32)), None, 0, 15, 50, search="descent")
    assert xy.shape == (len(X), 2) and np.isfinite(xy).all()
    centroids = np.stack([xy[labels == k].mean(axis=0) for k in range(3)])
    spread = max(np.linalg.norm(xy[labels == k] - centroids[k], axis=1).mean() for k in range(3))
    gaps = [np.linalg.norm(centroids[i] - centroids[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 2 * spread


_LAYOUTS = r"""
import json, sys
from pathlib import Path
import numpy as np
from numba.core import event
from clip_icm import reduce, umap_cache
from clip_icm.embeddings import unit_rows

warm_up = []
if sys.argv[1] == "plain":  # umap as installed: enable() finds itself done and leaves numba alone
    umap_cache._enabled["off"] = Path()
    with event.install_recorder("numba:compile") as rec:
        reduce.warm_up()
    warm_up = sorted({e.data["dispatcher"].py_func.__qualname__ for _, e in rec.buffer})
gen = np.random.default_rng(0)
X = gen.normal(size=(40, 6))
with event.install_recorder("numba:compile") as rec:
    full = reduce.layout_2d(X, n_epochs=20)
    invariant = reduce.layout_2d(X[:, :4], init=full, n_epochs=20)
    exact = reduce._umap(unit_rows(np.asarray(X, dtype=np.float32)), None, 0, 10, 20, search="exact")
compiled = sorted({e.data["dispatcher"].py_func.__qualname__ for _, e in rec.buffer})
print(json.dumps({"layouts": [a.tolist() for a in (full, invariant, exact)], "compiled": compiled,
                  "warm_up": warm_up}))
"""


def _in_a_fresh_process(code: str, cache: Path, *args: str) -> dict:
    """Run ``code`` in a new interpreter on the store ``cache``; the JSON it prints last."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "CLIP_ICM_CACHE": str(cache), "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=root, capture_output=True,
                         text=True, timeout=600, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_cached_umap_kernels_load_in_a_new_process_and_give_the_same_layouts(tmp_path):
    """umap_cache turns numba's on-disk cache on for umap's kernels: a second process loads
    them instead of compiling, and the layouts equal (bit for bit) those of umap as installed.
    Without the cache, warm_up() compiles every kernel that layouts by both exact neighbour
    searches (distance matrix, matrix products) and from a given start then need."""
    from clip_icm.umap_cache import KERNELS

    plain = _in_a_fresh_process(_LAYOUTS, tmp_path, "plain")
    first = _in_a_fresh_process(_LAYOUTS, tmp_path, "cached")
    second = _in_a_fresh_process(_LAYOUTS, tmp_path, "cached")
    kernels = {name.replace("_nb_", "_") for _, name in KERNELS}
    assert kernels <= set(plain["warm_up"]) and not kernels & set(plain["compiled"])  # the warm-up did
    assert kernels <= set(first["compiled"])
    assert not kernels & set(second["compiled"])  # the second process loaded them
    assert (tmp_path / "numba").is_dir()
    assert plain["layouts"] == first["layouts"] == second["layouts"]


_BACKGROUND = r"""
import json, sys
import numpy as np
from numba.core import event
from clip_icm import reduce

reduce.compile_in_background()
reduce.compile_in_background()  # once per process
started = reduce._compiler
imported = "umap" in sys.modules
with event.install_recorder("numba:compile") as rec:
    reduce.layout_2d(np.random.default_rng(0).normal(size=(40, 6)), n_epochs=20)
compiled = sorted({e.data["dispatcher"].py_func.__qualname__ for _, e in rec.buffer})
print(json.dumps({"compiled": compiled, "imported_at_start": imported,
                  "exit": None if started is None else started.returncode, "same_process": started is reduce._compiler}))
"""


def test_background_compilation_fills_the_cache_that_the_first_layout_loads(tmp_path):
    """compile_in_background() compiles UMAP's kernels in another process (started once, importing
    nothing here); the first layout waits for it and then loads every kernel from numba's cache.
    Once the cache is filled, no such process is started."""
    from clip_icm import umap_cache
    from clip_icm.umap_cache import KERNELS

    kernels = {name.replace("_nb_", "_") for _, name in KERNELS}
    first = _in_a_fresh_process(_BACKGROUND, tmp_path)
    assert first["exit"] == 0 and first["same_process"] and not first["imported_at_start"]
    assert not kernels & set(first["compiled"])
    assert any((tmp_path / "numba").rglob("*.nbi")) and umap_cache.filled(tmp_path / "numba")
    second = _in_a_fresh_process(_BACKGROUND, tmp_path)  # the cache holds every kernel: no process starts, and the layout loads them
    assert second["exit"] is None and not kernels & set(second["compiled"])


@pytest.mark.parametrize("chunk", [1, 7, 32, 400])  # runs that do not divide the rows; more columns than rows
def test_exact_neighbours_match_a_full_sort_of_cosine_distances(chunk):
    from clip_icm.reduce import exact_neighbours

    X = unit_rows(np.random.default_rng(1).normal(size=(300, 12)).astype(np.float32))
    indices, distances = exact_neighbours(X, 8, block=64, chunk=chunk)  # blocks that do not divide the rows
    D = 1.0 - X @ X.T
    np.fill_diagonal(D, -1.0)  # itself first
    expected = np.argsort(D, axis=1, kind="stable")[:, :8]
    np.testing.assert_array_equal(indices, expected)
    assert (indices[:, 0] == np.arange(300)).all() and np.all(distances[:, 0] == 0.0)
    np.testing.assert_allclose(distances[:, 1:], np.take_along_axis(D, expected, axis=1)[:, 1:], atol=1e-6)
    assert np.all(np.diff(distances, axis=1) >= 0)


@pytest.mark.parametrize("chunk", [1, 5, 32])
def test_exact_neighbours_of_equal_distance_come_in_index_order(chunk):
    """Rows equal to one of 4 unit vectors (distances exactly 0 or 1): each row's 9 neighbours after
    itself are rows equal to it (any of them: all are as near), in index order; from run to run the same."""
    from clip_icm.reduce import exact_neighbours

    which = np.random.default_rng(2).integers(0, 4, size=90)  # about 22 rows of each
    X = np.eye(4, 6, dtype=np.float32)[which]
    indices, distances = exact_neighbours(X, 10, block=16, chunk=chunk)
    assert (indices[:, 0] == np.arange(90)).all() and (which[indices] == which[:, None]).all()
    assert (np.diff(indices[:, 1:], axis=1) > 0).all() and not distances.any()
    np.testing.assert_array_equal(exact_neighbours(X, 10, block=16, chunk=chunk)[0], indices)
