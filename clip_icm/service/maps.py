"""The maps: which rows are drawn, their hover metadata, the two UMAP layouts (kept in the on-disk
store; computed by the background worker of ``layout_worker`` for the page), nearest neighbours and
thumbnails."""
from __future__ import annotations

import functools
from concurrent.futures import CancelledError
from typing import Callable

import numpy as np
import pandas as pd

from clip_icm import evaluation, methods, reduce
from clip_icm.embeddings import EmbeddingSet, unit_rows
from clip_icm.errors import InvalidInput
from clip_icm.hashing import digest
from clip_icm.seeding import rng, seed_hash
from clip_icm.service.fitting import Fit
from clip_icm.service.layout_worker import NOW, Job, LayoutWorker, ready, shared

# Every point on the maps up to MAP_POINTS by default, a stratified subsample above (the user may raise
# it up to DRAW_LIMIT). The layouts bound the default, not the browser: on the 2-core machine the UMAP
# pair of 20,000 points took about a minute, of 50,000 about three, with umap's own epochs (python -m
# bench.bench_refit --umap; less since layout_epochs' kernel, not re-measured at those sizes).
MAP_POINTS = 20_000
# The points one map draws in headless Chromium (software WebGL, no GPU) with a draw of at most 3 s and
# a zoom of at most 1.5 s: 100,000 (200,000: 4.5 s and 2 s; python -m bench.bench_webgl). Above it a
# map always draws a stratified subsample.
DRAW_LIMIT = 100_000


def plot_ids(emb: EmbeddingSet, max_points: int = MAP_POINTS, seed: int = 0) -> np.ndarray:
    """Row ids to plot (sorted): all of them, or ``max_points`` (at most DRAW_LIMIT) drawn so that every
    (domain, class) group keeps its share of the rows (largest remainders; seeded)."""
    n = len(emb.labels)
    if max_points < 1:
        raise InvalidInput(f"max_points must be at least 1, got {max_points}")
    max_points = min(max_points, DRAW_LIMIT)
    if n <= max_points:
        return np.arange(n)
    groups = {}
    for i, key in enumerate(zip(emb.domains.tolist(), emb.labels.tolist())):
        groups.setdefault(key, []).append(i)
    shares = {key: len(rows) * max_points / n for key, rows in groups.items()}
    counts = {key: int(share) for key, share in shares.items()}
    by_remainder = sorted(groups, key=lambda key: counts[key] - shares[key])  # largest remainder first
    for key in by_remainder[:max_points - sum(counts.values())]:
        counts[key] += 1
    gen = rng("plot sample", seed)
    picked = [gen.choice(rows, size=counts[key], replace=False) for key, rows in groups.items() if counts[key]]
    return np.sort(np.concatenate(picked))


def sample_note(drawn: int, total: int, seed: int = 0) -> str:
    """What a map's title adds when it draws a subsample (plot_ids above MAP_POINTS), so that it is never
    silent (short: the title is one line; the caption under the sliders says how it is drawn): "" when
    every row is drawn."""
    if drawn >= total:
        return ""
    return f" · {drawn:,} of {total:,} images (stratified sample, seed {seed})"


def predictions(emb: EmbeddingSet, projection: object = None, method: str = "icm") -> np.ndarray:
    """Zero-shot class index per row in the full space (no projection) or a projected one
    (a text-only method, Orth-Cali, calibrates the class text and leaves the images as they are)."""
    spec = methods.spec(method)
    if spec.text_only:
        return evaluation.zero_shot_predict_text_only(emb.features, emb.text_features, projection)
    renormalise = spec.zero_shot == "cosine"
    return evaluation.zero_shot_predict(emb.features, emb.text_features, projection, renormalise)


def point_table(emb: EmbeddingSet, ids: np.ndarray, target: str, predicted: np.ndarray) -> pd.DataFrame:
    """The hover/selection metadata of the plotted rows (columns of figures.POINT_COLUMNS)."""
    names = np.asarray(emb.class_names, dtype=object)
    return pd.DataFrame({
        "id": ids,
        "class": names[emb.labels[ids]],
        "domain": emb.domains[ids],
        "role": np.where(emb.domains[ids] == target, "target", "source"),
        "prediction": names[predicted[ids]],
        "correct": predicted[ids] == emb.labels[ids],
    })


def _store_key(emb: EmbeddingSet, key_parts: tuple) -> str:
    from clip_icm.store import make_key

    return make_key("layout", reduce.LAYOUT_VERSION, emb.key, *key_parts)


def _stored_layout(store, key_parts: tuple, compute: Callable[[], np.ndarray], emb: EmbeddingSet) -> np.ndarray:
    """A layout from the on-disk store when ``store`` is given and the embeddings have a content
    key (a restarted server redraws at once), else computed. Stored as float16, so a computed
    layout is returned rounded the same way: both runs draw the same picture."""
    if store is None or not emb.key:
        return compute()
    meta = {"kind": "layouts", **emb.origin}
    return np.asarray(store.get_or_compute(_store_key(emb, key_parts), compute, meta), dtype=np.float32)


def _full_parts(ids: np.ndarray, seed: int) -> tuple:
    return ("full", ids.tolist(), seed)


def _invariant_parts(ids: np.ndarray, fitted: Fit, full_xy: np.ndarray, seed: int) -> tuple:
    components = digest(np.ascontiguousarray(fitted.projection.components_).tobytes())
    start = digest(np.ascontiguousarray(full_xy, dtype=np.float32).tobytes())
    return ("invariant", ids.tolist(), components, start, seed)


def full_layout(emb: EmbeddingSet, ids: np.ndarray, seed: int = 0, store=None,
                lay_out: Callable[..., np.ndarray] | None = None) -> np.ndarray:
    """``lay_out``: what computes it (reduce.layout_2d here by default; a worker's process for a job)."""
    lay_out = lay_out or reduce.layout_2d
    return _stored_layout(store, _full_parts(ids, seed), lambda: lay_out(emb.features[ids], seed=seed), emb)


def invariant_layout(emb: EmbeddingSet, ids: np.ndarray, fitted: Fit, full_xy: np.ndarray, seed: int = 0,
                     store=None, lay_out: Callable[..., np.ndarray] | None = None) -> np.ndarray:
    """Layout of the projected rows, started from (and aligned to) the full-space layout."""
    lay_out = lay_out or reduce.layout_2d
    return _stored_layout(store, _invariant_parts(ids, fitted, full_xy, seed),
                          lambda: lay_out(fitted.transform(emb.features[ids]), init=full_xy, seed=seed), emb)


# ---------------------------------------------------------------- the same layouts, in the background

def _job_key(emb: EmbeddingSet, *parts: object) -> str:
    """The content key of a layout job: the layout store's, with the fit's content key in place of
    its components and start (a speculative job knows only what it will fit), plus ``id(emb)``
    for embeddings without a content key (nothing else tells them apart)."""
    from clip_icm.store import make_key

    return make_key("layout job", emb.key or f"object {id(emb)}", *parts)


def _stored_or_none(store, emb: EmbeddingSet, key_parts: tuple) -> np.ndarray | None:
    if store is None or not emb.key:
        return None
    found = store.get(_store_key(emb, key_parts))
    return None if found is None else np.asarray(found, dtype=np.float32)


def full_layout_job(emb: EmbeddingSet, ids: np.ndarray, seed: int = 0, store=None,
                    worker: LayoutWorker | None = None) -> Job:
    """The full-space layout as a job of the background ``worker`` (the process's by default): done
    when the worker or the store has it, else computed there while the page goes on."""
    worker = worker or shared()
    job = ready_full_layout_job(emb, ids, seed, store, worker)
    if job is not None:
        return job
    return worker.submit(_job_key(emb, *_full_parts(ids, seed)), lambda: full_layout(emb, ids, seed, store, worker.lay_out),
                         label="full space", group=emb.key)


def ready_full_layout_job(emb: EmbeddingSet, ids: np.ndarray, seed: int = 0, store=None,
                          worker: LayoutWorker | None = None) -> Job | None:
    """full_layout_job's job when the worker or the store has the layout already, else None (nothing queued)."""
    worker = worker or shared()
    key, parts = _job_key(emb, *_full_parts(ids, seed)), _full_parts(ids, seed)
    job = worker.get(key)
    if ready(job):
        return job
    stored = _stored_or_none(store, emb, parts)
    return None if stored is None else worker.finished(key, stored, label="full space", group=emb.key)


def invariant_layout_job(emb: EmbeddingSet, ids: np.ndarray, fit_key: str, make_fit: Callable[[], Fit], label: str,
                         seed: int = 0, store=None, worker: LayoutWorker | None = None,
                         priority: int = NOW) -> Job | None:
    """The invariant layout of the fit that ``make_fit`` returns (``fit_key``: its content key) as a
    job of ``worker``, after the full-space layout it starts from (queued first, at NOW: waited for while
    another of the worker's threads lays it out, meanwhile this space's neighbours are searched in this
    thread's process; run here if no thread has taken it up; computed here if it was cancelled).
    ``priority`` SPECULATIVE: a layout the page may show next (None: refused, the worker has enough)."""
    worker = worker or shared()
    full = full_layout_job(emb, ids, seed, store, worker)

    def compute() -> np.ndarray:
        fitted = neighbours = None
        if full.started_at is not None and full.pending:  # laid out in another lane: meanwhile, its neighbours,
            fitted = make_fit()                                # and umap loaded in this one
            neighbours = worker.neighbours(fitted.transform(emb.features[ids]))
            worker.warm_lane()
        try:
            full_xy = worker.outcome(full)  # raises why the full layout failed: the reason here too
        except CancelledError:
            full_xy = full_layout(emb, ids, seed, store, worker.lay_out)
        fitted = make_fit() if fitted is None else fitted
        lay_out = functools.partial(worker.lay_out, neighbours=neighbours) if neighbours is not None else worker.lay_out
        return invariant_layout(emb, ids, fitted, full_xy, seed, store, lay_out)

    key = _job_key(emb, "invariant", ids.tolist(), fit_key, seed)
    if priority == NOW and ready(full) and not ready(worker.get(key)):
        stored = _stored_or_none(store, emb, _invariant_parts(ids, make_fit(), full.result(), seed))
        if stored is not None:
            return worker.finished(key, stored, label=label, group=emb.key)
    return worker.submit(key, compute, label=label, group=emb.key, priority=priority, after=full)


def nearest_neighbours(X: np.ndarray, ids: np.ndarray, query: list[int], k: int = 5) -> dict[int, list[int]]:
    """For each queried id, the ``k`` most cosine-similar other ids among ``ids`` (rows of X are all rows)."""
    if k < 1:
        raise InvalidInput(f"k must be at least 1, got {k}")
    pool = np.asarray(ids)
    unit = unit_rows(X[pool])
    out = {}
    for q in query:
        v = unit_rows(X[q])
        order = [int(pool[i]) for i in np.argsort(-(unit @ v), kind="stable") if pool[i] != q]
        out[int(q)] = order[:k]
    return out


def neighbour_agreement(X: np.ndarray, values: np.ndarray, k: int = 10, max_rows: int = 2000, seed: int = 0) -> float:
    """The share of each row's ``k`` most cosine-similar other rows that have its value (its class, its
    domain, its colour): how much a space groups images by that value (chance: the value's share).
    Above ``max_rows`` rows, a seeded sample of them asks (the answer is a mean; the cost is n^2)."""
    if k < 1 or len(X) <= k:
        raise InvalidInput(f"k must be between 1 and {len(X) - 1}, got {k}")
    rows = np.asarray(sample_rows(np.arange(len(X)), max_rows, seed))
    unit = unit_rows(X[rows])
    similar = unit @ unit.T
    np.fill_diagonal(similar, -np.inf)
    nearest = np.argpartition(-similar, k, axis=1)[:, :k]
    values = np.asarray(values)[rows]
    return float((values[nearest] == values[:, None]).mean())


def sample_rows(rows: list[int] | np.ndarray, n: int, seed: int = 0) -> list[int]:
    """At most ``n`` of ``rows``, a seeded sample in row order (the lowest row ids of a selection
    are one class of one domain: the data sets are stored class by class)."""
    rows = np.asarray(sorted(set(int(r) for r in rows)), dtype=int)
    if len(rows) <= n:
        return rows.tolist()
    return sorted(rng(seed, "sample_rows").choice(rows, size=n, replace=False).tolist())


def example_rows(emb: EmbeddingSet, domains: list[str], seed: int = 0) -> dict[tuple[str, str], int]:
    """One seeded row per (class, domain) that has any: the world at a glance, class by domain."""
    out = {}
    for domain in domains:
        for label, name in enumerate(emb.class_names):
            rows = np.flatnonzero((emb.domains == domain) & (emb.labels == label))
            if len(rows):
                out[(name, domain)] = sample_rows(rows, 1, seed_hash(seed, name, domain))[0]
    return out


def thumbnail(emb: EmbeddingSet, row: int, size: int = 96):
    """A PIL thumbnail of an image row, or None when there is no readable image."""
    if emb.paths is None or not str(emb.paths[row]):
        return None
    try:
        from clip_icm.datasets import load_image

        image = load_image(str(emb.paths[row]))
    except (OSError, ValueError):
        return None
    return image.resize((size, size))
