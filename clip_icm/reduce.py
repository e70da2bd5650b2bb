"""2-D layouts of embeddings for the dashboard (UMAP behind one small function).

Comparable layouts of the full and the invariant space come from a *shared
initialisation*: the invariant layout starts from the full-space layout and is
then rotated/scaled onto it (orthogonal Procrustes). AlignedUMAP would also
work, but it recomputes both layouts together, whereas this way the full-space
layout is computed once and stays cached while K and lam change; only the
invariant layout follows. umap-learn is imported lazily: the import costs
seconds and its first call pays numba compilation.
"""
from __future__ import annotations

import warnings

import numpy as np

from clip_icm.embeddings import unit_rows

# Few epochs are enough for a few thousand points and keep a layout at a second or two.
DEFAULT_EPOCHS = 200
EXACT_LIMIT = 4096  # umap-learn searches neighbours exactly below this many points


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


def warm_up(approximate: bool = False) -> None:
    """Run tiny layouts so that numba compiles UMAP's kernels (10-20 s on first use); the
    dashboard does this in a background thread while the embeddings are being computed.
    ``approximate`` also compiles the nearest-neighbour descent that layouts of more than
    EXACT_LIMIT rows take (worth it where large data sets are expected)."""
    gen = np.random.default_rng(0)
    layout_2d(gen.normal(size=(64, 8)))
    layout_2d(gen.normal(size=(64, 8)), init=gen.normal(size=(64, 2)))
    if approximate:
        _umap(unit_rows(gen.normal(size=(300, 8)).astype(np.float32)), None, 0, 15, 10, approximate=True)


def layout_2d(
    X: np.ndarray,
    *,
    init: np.ndarray | None = None,
    seed: int = 0,
    n_neighbors: int = 15,
    n_epochs: int = DEFAULT_EPOCHS,
) -> np.ndarray:
    """A 2-D UMAP layout (cosine geometry) of the rows of ``X``.

    ``init`` (n, 2) starts the optimisation from a given layout, and the result is
    Procrustes-aligned to it: pass the full-space layout when laying out the
    invariant space to get comparable pictures. Fewer than 5 rows fall back to PCA
    (UMAP needs a neighbourhood). The seed makes it reproducible (and single-threaded).
    """
    X = np.asarray(X)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"layout_2d needs a non-empty 2-D array, got shape {X.shape}")
    X = unit_rows(np.asarray(X, dtype=np.float32))
    if init is not None and init.shape != (len(X), 2):
        raise ValueError(f"init must have shape ({len(X)}, 2), got {init.shape}")
    if len(X) < 5:
        xy = _pca_2d(X)
    else:
        xy = _umap(X, init, seed, n_neighbors, n_epochs)
    return procrustes_align(xy, init) if init is not None else xy


def _umap(X: np.ndarray, init: np.ndarray | None, seed: int, n_neighbors: int, n_epochs: int,
          approximate: bool | None = None) -> np.ndarray:
    """``approximate``: the nearest-neighbour descent path (None: above EXACT_LIMIT rows)."""
    import umap  # lazy: seconds to import, numba compilation on first use

    # umap-learn warns on every fit with a precomputed metric that inverse_transform (never used
    # here) is unavailable. One standing filter for that message only, added (idempotently) and
    # never removed: catch_warnings() around the call would swap the process-wide filters while
    # another thread (the page, during the dashboard's background warm-up) records its own.
    warnings.filterwarnings("ignore", message="using precomputed metric", category=UserWarning, module=r"umap\.")
    # Below umap's own exact-search size, hand it the cosine distances: its default path calls a
    # numba metric once per pair from Python (80% of a 1,280-point layout's time).
    exact = len(X) <= EXACT_LIMIT if approximate is None else not approximate
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(n_neighbors, len(X) - 1),
        metric="precomputed" if exact else "cosine",
        n_epochs=n_epochs,
        init=_standardise(init) if init is not None else "spectral",
        random_state=seed,
        n_jobs=1,  # what a fixed random_state forces anyway; saying so spares the warning
        force_approximation_algorithm=not exact,
    )
    data = np.clip(1.0 - X @ X.T, 0.0, 2.0) if exact else X
    if exact:
        np.fill_diagonal(data, 0.0)
    return reducer.fit_transform(data).astype(np.float32)
