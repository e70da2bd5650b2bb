"""2-D layouts of embeddings for the dashboard (UMAP behind one small function).

Comparable layouts of the full and the invariant space come from a *shared
initialisation*: the invariant layout starts from the full-space layout and is
then rotated/scaled onto it (orthogonal Procrustes). AlignedUMAP would also
work, but it recomputes both layouts together, whereas this way the full-space
layout is computed once and stays cached while K and lam change; only the
invariant layout follows. umap-learn builds the neighbour graph and the start; the
epochs are umap's descent in a faster kernel of our own (layout_epochs; umap_graph_layout
feeds it from umap's pieces). umap-learn is imported lazily: the import costs seconds and its
first call pays numba compilation (in the first process only: umap_cache keeps the compiled
kernels on disk, and compile_in_background() fills that cache from another process).
"""
from __future__ import annotations

import functools
import os
import subprocess
import threading
import warnings
from typing import Callable

import numpy as np

from clip_icm import background
from clip_icm.embeddings import unit_rows
from clip_icm.errors import InvalidInput

# Epochs of a layout: 200 take 1.1 s at 10,000 points with layout_epochs' kernel at load 2 (umap's
# 3.0-4.0 s beside it; 2.0 s against 5.1 s at load 5; bench/RESULTS.md). Fewer lose part of the
# picture: with 100 (full) or 100 and 50 (invariant, started from the full layout) each point keeps
# fewer of today's 2-D neighbours than a reseeded layout does, and fewer of its neighbours in the
# embedding space; 150 for the invariant layout lost too (python -m bench.bench_umap; bench/RESULTS.md).
DEFAULT_EPOCHS = 200
# The layouts' version: bumped whenever layout_2d draws other layouts of the same input (a new epoch
# kernel). The layout store's keys carry it, so layouts of an older version are never mixed in.
LAYOUT_VERSION = "clip_icm epochs 1"
# Neighbours are found exactly, from blocks of matrix products, up to this many points (every map
# the dashboard draws by default); pynndescent's approximate search beyond. Both take 1-2 s at
# 10,000 x 512, but the descent's numba code cannot be cached and compiles for 40-70 s in every
# new process, and the products grow as n^2 (bench/RESULTS.md).
BLAS_KNN_LIMIT = 20_000
# Opt-in: "1" runs umap's own epochs on every core (numba threads; umap then takes no seed). A layout
# then changes from run to run (the threads race on the points they move; its picture keeps today's
# as well as a reseeded one does), and the layout process takes the cores a page's rerun would use.
# Slower than layout_epochs' single-threaded kernel on the shared 2-core machine (a 10,000-point pair
# 11.6 s against 6.3-6.7 s under load 5.7; bench/RESULTS.md): it can pay only with many free cores.
PARALLEL_VAR = "CLIP_ICM_PARALLEL_LAYOUTS"


def parallel_layouts() -> bool:
    """Whether ``$CLIP_ICM_PARALLEL_LAYOUTS`` asks for the parallel, non-deterministic layouts (read
    at each layout, in the process that computes it: the dashboard's layout process inherits it)."""
    return os.environ.get(PARALLEL_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def _pca_2d(X: np.ndarray) -> np.ndarray:
    centred = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out = np.zeros((len(X), 2), dtype=np.float32)
    k = min(2, vt.shape[0])
    out[:, :k] = centred @ vt[:k].T
    return out


def _standardise(xy: np.ndarray) -> np.ndarray:
    """Centre and scale to unit spread, the range UMAP expects of an initial layout."""
    xy = xy - xy.mean(axis=0)
    return (xy / max(float(np.abs(xy).max()), 1e-12) * 10.0).astype(np.float32)


def procrustes_align(xy: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rotate/reflect/scale ``xy`` onto ``reference`` (same rows) so two layouts read alike."""
    a = xy - xy.mean(axis=0)
    b = reference - reference.mean(axis=0)
    u, s, vt = np.linalg.svd(a.T @ b)
    rotation = u @ vt
    scale = s.sum() / max(float((a**2).sum()), 1e-12)
    return (a @ rotation * scale + reference.mean(axis=0)).astype(np.float32)


def warm_up() -> None:
    """Run tiny layouts so that numba compiles the layouts' kernels (umap's, our epochs), or loads them from its on-disk
    cache (``umap_cache``: 8-15 s to compile, about a second to load); compile_in_background()
    runs this in a separate process while the dashboard computes its embeddings. Covers every
    layout up to BLAS_KNN_LIMIT rows, from a spectral start or a given one. (Layouts of more rows
    also compile pynndescent's neighbour descent, about 40 s in every process that draws one:
    numba cannot cache it.)"""
    from clip_icm import umap_cache

    gen = np.random.default_rng(0)
    layout_2d(gen.normal(size=(64, 8)), parallel=False)
    layout_2d(gen.normal(size=(64, 8)), init=gen.normal(size=(64, 2)), parallel=False)
    if parallel_layouts():  # and the parallel epochs' kernel, cached too, though not needed by default
        layout_2d(gen.normal(size=(64, 8)), init=gen.normal(size=(64, 2)), parallel=True)
    umap_cache.mark_filled()


_compiler: subprocess.Popen | None = None
_compiler_started = False
_compiler_lock = threading.Lock()
# How long a layout waits for the background compilation before compiling in its own process.
COMPILE_WAIT_S = 300


def compile_in_background() -> None:
    """Start warm_up() in a separate, low-priority process (once per process): it compiles UMAP's
    kernels into numba's on-disk cache (``umap_cache``) on a core the caller leaves idle, and the
    first layout here then loads them (about a second) instead of compiling them (8-15 s).

    A process, not a thread: numba's compilation holds the GIL, and in a thread it delayed the
    dashboard's first page by the length of the compilation (bench/RESULTS.md). Nothing is
    imported here, so a page whose layouts all come from the store never imports umap; and no
    process starts once the cache holds every kernel (``umap_cache.filled``)."""
    from clip_icm import umap_cache

    global _compiler, _compiler_started
    with _compiler_lock:
        if not _compiler_started:
            _compiler_started = True
            if not umap_cache.filled():  # else even loading them there would only compete with the page
                _compiler = background.start("from clip_icm import reduce\nreduce.warm_up()", low_priority=True)


def wait_for_compilation() -> None:
    """Wait (up to COMPILE_WAIT_S) for compile_in_background()'s process, if this process started one:
    compiling the same kernels meanwhile, here or in a layout process, would only share the cores with it."""
    background.wait(_compiler, COMPILE_WAIT_S)


def layout_2d(
    X: np.ndarray,
    *,
    init: np.ndarray | None = None,
    seed: int = 0,
    n_neighbors: int = 15,
    n_epochs: int = DEFAULT_EPOCHS,
    parallel: bool | None = None,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """A 2-D UMAP layout (cosine geometry) of the rows of ``X``.

    ``init`` (n, 2) starts the optimisation from a given layout, and the result is
    Procrustes-aligned to it: pass the full-space layout when laying out the
    invariant space to get comparable pictures. Fewer than 5 rows fall back to PCA
    (UMAP needs a neighbourhood). The seed makes it reproducible: the same input gives the
    same layout, bit for bit, on one core. ``parallel`` (None: parallel_layouts()) uses every
    core instead, ignores the seed and is not reproducible. ``neighbours``: what
    layout_neighbours(X, n_neighbors) returns, found beforehand (the layout worker searches
    them in parts, in two processes); None: searched here.
    """
    X = _layout_rows(X)
    if init is not None and init.shape != (len(X), 2):
        raise InvalidInput(f"init must have shape ({len(X)}, 2), got {init.shape}")
    if len(X) < 5:
        xy = _pca_2d(X)
    else:
        xy = _umap(X, init, seed, n_neighbors, n_epochs, parallel=parallel_layouts() if parallel is None else parallel,
                   neighbours=neighbours)
    return procrustes_align(xy, init) if init is not None else xy


def _layout_rows(X: np.ndarray) -> np.ndarray:
    """The rows a layout works on: unit rows, float32."""
    X = np.asarray(X)
    if X.ndim != 2 or len(X) == 0:
        raise InvalidInput(f"layout_2d needs a non-empty 2-D array, got shape {X.shape}")
    return unit_rows(np.asarray(X, dtype=np.float32))


def searches_exactly(n_rows: int) -> bool:
    """Whether a layout of ``n_rows`` rows takes exact neighbours (layout_neighbours) rather than
    pynndescent's descent or, below 5 rows, none."""
    return 5 <= n_rows <= BLAS_KNN_LIMIT


def layout_neighbours(X: np.ndarray, n_neighbors: int = 15, rows: range | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact neighbours that layout_2d(X, n_neighbors=...) hands to UMAP (searches_exactly(len(X))),
    of the rows ``rows`` only (every row by default): parts that start at multiples of EXACT_BLOCK are
    the same matrix products, so their rows are the whole search's, bit for bit."""
    X = _layout_rows(X)
    return exact_neighbours(X, min(n_neighbors, len(X) - 1), rows=rows)


# Rows per matrix product of exact_neighbours (a 512 x 10,000 block of similarities is 20 MB).
EXACT_BLOCK = 512


def exact_neighbours(X: np.ndarray, k: int, block: int = EXACT_BLOCK, chunk: int = 32,
                     rows: range | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of each row of ``X`` (unit rows) by cosine distance, itself
    first, as (indices int32, distances float32) sorted by distance (equal ones by index): what
    pynndescent would return, but exact, from blocks of matrix products (1.4 s at 10,000 x 512 on
    one core, 0.5 s at 10,000 x 64, under load 3).

    Each row's similarities are cut into runs of ``chunk`` columns and only the ``k`` runs with the
    largest maxima are searched: every one of the ``k`` nearest lies in one of them (a run that holds
    one has at most k - 1 runs with a larger maximum), so the result is exact, and the partial sort
    reads k * chunk candidates instead of every column (the partial sorts of every column took half
    of the time at 10,000 x 512, most of it at 10,000 x 64; bench/RESULTS.md).

    ``rows`` (step 1): only those rows' neighbours, from blocks starting at ``rows.start``."""
    n = len(X)
    k = min(k, n)
    rows = range(n) if rows is None else rows
    if rows.step != 1 or not 0 <= rows.start <= rows.stop <= n:
        raise InvalidInput(f"rows must be a range of steps of 1 within 0-{n}, got {rows}")
    indices = np.empty((len(rows), k), dtype=np.int32)
    distances = np.empty((len(rows), k), dtype=np.float32)
    n_chunks = n // chunk
    runs = min(k, n_chunks)
    rest = np.arange(n_chunks * chunk, n)  # the last columns, fewer than a chunk: always candidates
    for start in range(rows.start, rows.stop, block):
        similarity = X[start:min(start + block, rows.stop)] @ X.T
        here = np.arange(len(similarity))
        similarity[here, here + start] = np.inf  # itself first, whatever the rounding
        maxima = similarity[:, :n_chunks * chunk].reshape(len(here), n_chunks, chunk).max(axis=2)
        best = np.argpartition(maxima, n_chunks - runs, axis=1)[:, n_chunks - runs:]
        columns = (best[:, :, None] * chunk + np.arange(chunk)).reshape(len(here), runs * chunk)
        columns = np.concatenate([columns, np.broadcast_to(rest, (len(here), len(rest)))], axis=1)
        candidates = np.take_along_axis(similarity, columns, axis=1)
        top = np.argpartition(candidates, candidates.shape[1] - k, axis=1)[:, candidates.shape[1] - k:]
        top_columns = np.take_along_axis(columns, top, axis=1)
        top_similarity = np.take_along_axis(candidates, top, axis=1)
        order = np.lexsort((top_columns, -top_similarity), axis=-1)
        at = slice(start - rows.start, start - rows.start + len(similarity))
        indices[at] = np.take_along_axis(top_columns, order, axis=1)
        distances[at] = np.clip(1.0 - np.take_along_axis(top_similarity, order, axis=1), 0.0, 2.0)
    return indices, distances


@functools.cache
def _curve_float32() -> tuple[np.float32, np.float32]:
    """umap's a and b (of its default spread 1 and min_dist 0.1) as float32, the precision of
    layout_epochs' kernel (its tables are built from them). In umap's own epoch kernel (the opt-in
    parallel mode) they keep most powers of distances in single precision: a sixth faster there, for a
    picture that keeps the float64 one as well as a reseeded one does (python -m bench.bench_umap; bench/RESULTS.md)."""
    from umap.umap_ import find_ab_params

    a, b = find_ab_params(1.0, 0.1)
    return np.float32(a), np.float32(b)


def _umap(X: np.ndarray, init: np.ndarray | None, seed: int, n_neighbors: int, n_epochs: int,
          search: str | None = None, parallel: bool = False,
          neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``search``, how the neighbours are found: "exact" (exact_neighbours, handed to umap),
    "descent" (pynndescent's approximate search); None: exact up to BLAS_KNN_LIMIT rows.
    ``parallel``: umap's epochs on every core, no seed; else layout_epochs' kernel, one thread, seeded.
    ``neighbours``: the exact ones, found beforehand (layout_2d)."""
    wait_for_compilation()
    import umap  # lazy: seconds to import, numba compilation on first use
    from sklearn.utils import check_random_state

    from clip_icm import umap_cache

    umap_cache.enable()  # before the first layout compiles anything
    # umap-learn warns on every fit with precomputed neighbours that transform (never used here)
    # is unavailable. A standing filter for that message only, added (idempotently) and never
    # removed: catch_warnings() around the call would swap the process-wide filters while another
    # thread (the page, during the dashboard's background warm-up) records its own.
    warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning, module=r"umap\.")
    if search is None:
        search = "exact" if len(X) <= BLAS_KNN_LIMIT else "descent"
    if search not in ("exact", "descent"):
        raise InvalidInput(f"search must be 'exact' or 'descent', got {search!r}")
    k = min(n_neighbors, len(X) - 1)
    if neighbours is not None and (search != "exact" or any(part.shape != (len(X), k) for part in neighbours)):
        raise InvalidInput(f"neighbours given for a layout of {len(X)} rows must be its {k} exact ones per row, "
                           f"got shapes {[part.shape for part in neighbours]} ({search} search)")
    a, b = _curve_float32()
    random_state = check_random_state(None if parallel else seed)  # what umap makes of its random_state
    # umap builds the fuzzy neighbour graph (transform_mode "graph": no layout), and umap_graph_layout lays it
    # out. umap's own exact search (below 4,096 rows) calls a numba metric once per pair from Python, or takes
    # a distance matrix and compiles a parallel sort of it for 5-8 s in a new process: hence exact_neighbours.
    graph = umap.UMAP(
        n_components=2,
        n_neighbors=k,
        metric="cosine",
        n_epochs=n_epochs,
        a=a,
        b=b,
        random_state=None if parallel else random_state,  # a seed makes umap run on one thread
        n_jobs=-1 if parallel else 1,  # what a fixed random_state forces anyway; saying so spares the warning
        force_approximation_algorithm=search == "descent",
        precomputed_knn=(exact_neighbours(X, k) if neighbours is None else neighbours) if search == "exact" else (None, None, None),
        transform_mode="graph",
    ).fit(X).graph_
    if parallel:
        from umap.layouts import optimize_layout_euclidean

        def epochs(embedding, head, tail, n_epochs, epochs_per_sample, a, b, rng_state):
            return optimize_layout_euclidean(embedding, embedding, head, tail, n_epochs, len(embedding), epochs_per_sample,
                                             a, b, rng_state, parallel=True, move_other=True)
    else:
        from clip_icm.layout_epochs import optimize_layout as epochs
    return umap_graph_layout(X, graph, None if init is None else _standardise(init), random_state, n_epochs, a, b, epochs)


def umap_graph_layout(X: np.ndarray, graph, init: np.ndarray | None, random_state: np.random.RandomState,
                      n_epochs: int, a: np.float32, b: np.float32, epochs: Callable) -> np.ndarray:
    """umap's layout of its fuzzy neighbour ``graph`` of ``X`` (``umap.UMAP(...).fit(X)`` with ``init``, its
    ``random_state`` as it stands after building the graph, its defaults otherwise), its descent done by
    ``epochs`` (a function with layout_epochs.optimize_layout's arguments). Step for step what umap's
    simplicial_set_embedding does for a 2-D Euclidean output (the weakest edges dropped, the spectral start
    or ``init``, the edges' sampling rates, the generator's seeds, the start scaled to 0-10, and, as umap's
    fit, NaN for points without an edge): with umap's own epochs the layout is umap's, bit for bit
    (tests/test_layout_epochs.py), so only the epochs differ."""
    from umap.spectral import spectral_layout
    from umap.umap_ import INT32_MAX, INT32_MIN, make_epochs_per_sample, noisy_scale_coords

    graph = graph.tocoo()
    graph.sum_duplicates()
    # umap drops the edges too weak to be sampled once in n_epochs (with its default epochs below 11)
    cutoff = n_epochs if n_epochs > 10 else (500 if graph.shape[0] <= 10_000 else 200)
    graph.data[graph.data < graph.data.max() / float(cutoff)] = 0.0
    graph.eliminate_zeros()
    if init is None:
        embedding = spectral_layout(X, graph, 2, random_state, metric="cosine", metric_kwds={})
        embedding = noisy_scale_coords(embedding, random_state, max_coord=10, noise=0.0001)
    elif len(np.unique(init, axis=0)) < len(init):
        from sklearn.neighbors import KDTree

        # points that start on one spot are moved apart, by a thousandth of the mean nearest-neighbour distance
        nearest = KDTree(init).query(init, k=2)[0][:, 1].mean()
        embedding = init + random_state.normal(scale=0.001 * nearest, size=init.shape).astype(np.float32)
    else:
        embedding = init
    epochs_per_sample = make_epochs_per_sample(graph.data, n_epochs)
    rng_state = random_state.randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
    span = embedding.max(axis=0) - embedding.min(axis=0)
    embedding = (10.0 * (embedding - embedding.min(axis=0)) / span).astype(np.float32, order="C")
    embedding = epochs(embedding, graph.row, graph.col, n_epochs, epochs_per_sample, a, b, rng_state)
    embedding[np.asarray(graph.sum(axis=1)).ravel() == 0] = np.nan  # points left without an edge, as umap's fit marks them
    return embedding.astype(np.float32)
