"""Streamlit caches around the service layer (the only module with caching decorators).

Big inputs are never hashed: each function takes a content key (``emb_key``: the
EmbeddingSet's own key, which covers model, data and interventions) plus the small
parameters, and receives the EmbeddingSet itself as an unhashed ``_emb`` argument.
The EmbeddingSet is a read-only resource (``cache_resource``): ``cache_data`` would
pickle and copy its arrays on every rerun.

What every page run reads again (the selection, the model choices and their summaries, the shared
figures and views) is a ``cache_resource``: one object for every session, handed out as it is, which
nobody changes in place; a ``cache_data`` value is unpickled afresh on each read (the model choices,
with their tables, seven times a page run that way: bench/RESULTS.md, "A classroom, round 3 session 6").

The heavy ones (the selection grid, the model choice and its overview, sweeps, the open-class table, the
playground) pass service.heavy_jobs, the server's cap on heavy jobs at once: a cached value comes at
once, a missing one waits its turn with its place in the queue on the page (``_heavy``). What a slider
move recomputes (fit, accuracy, predictions, confusions) is light and does not wait.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import streamlit as st

from clip_icm import choice, defaults, evaluation, figures, service
from clip_icm.embeddings import EmbeddingSet
from clip_icm.store import EmbeddingStore
from dashboard import demo_store, texts


class _NeedsSlot(Exception):
    """Raised by a heavy cached function's body run without a slot: nothing is cached, and ``_heavy``
    calls it again once it holds one. The wait happens outside the cached function, where the page may
    draw (an element a cached function updates must be its own, for Streamlit to replay it)."""


def _slot_held() -> None:
    if not service.heavy_jobs().holds():
        raise _NeedsSlot


def _heavy(cached_function: Callable) -> Callable:
    """``cached_function`` (whose body starts with ``_slot_held()``) called as is when its value is cached,
    else again inside a slot of the server's gate, the page showing its place while it waits."""
    @functools.wraps(cached_function)
    def call(*args, **kwargs):
        try:
            return cached_function(*args, **kwargs)
        except _NeedsSlot:
            with queue_place() as on_wait, service.heavy_jobs().slot(on_wait):
                return cached_function(*args, **kwargs)
    return call


def build_once(slot: dict, notes: list[str], build: Callable[[], EmbeddingSet]) -> EmbeddingSet:
    """The embeddings of ``slot`` (an ``embedding_slot``): ``build()`` inside a slot of the gate, unless
    another session filled it while this one waited (then its notes are added to ``notes``): a class that
    opens the page at once embeds, or reads the store, once rather than once a student."""
    with queue_place() as on_wait, service.heavy_jobs().slot(on_wait):
        if "emb" in slot:
            notes.extend(slot["notes"])
            return slot["emb"]
        return build()


@contextlib.contextmanager
def queue_place() -> Iterator[Callable[[int], None]]:
    """A callback that shows the wait's place in the queue (a box made on its first call, removed after).
    Redrawn on every poll: that is also where Streamlit stops a session that left or reruns, so its place
    is given up (service.gate)."""
    box = None

    def show(ahead: int) -> None:
        nonlocal box
        if box is None:
            box = st.empty()
        box.info(texts.queue_place(ahead, service.heavy_jobs().cap), icon=texts.PENDING_ICON)

    try:
        yield show
    finally:
        if box is not None:
            box.empty()


@st.cache_resource(show_spinner=False, max_entries=4)
def embedding_slot(request_key: str) -> dict:
    """A shared holder per request: the page fills it outside this function, so that it can
    show progress (a cached function may not update elements created outside it)."""
    return {}


@st.cache_data(show_spinner=False, max_entries=64)
def fit(emb_key: str, target: str, method: str, config: evaluation.EvalConfig, _emb: EmbeddingSet) -> service.Fit:
    return service.fit(_emb, target, method, config)


@st.cache_data(show_spinner=False, max_entries=256)
def evaluate(emb_key: str, target: str, config: evaluation.EvalConfig, _emb: EmbeddingSet) -> pd.DataFrame:
    return service.evaluate(_emb, target, config, store=store())


@st.cache_data(show_spinner=False, max_entries=32)
def _evaluate_open_class(emb_key: str, target: str, config: evaluation.EvalConfig, _emb: EmbeddingSet) -> pd.DataFrame:
    _slot_held()
    return service.evaluate_open_class(_emb, target, config)


evaluate_open_class = _heavy(_evaluate_open_class)


@st.cache_resource(show_spinner=False, max_entries=32)
def _choose(emb_key: str, target: str, method: str, config: evaluation.EvalConfig, Ks: tuple, lams: tuple,
            scoring: str, protocol: str, _emb: EmbeddingSet) -> tuple[int, float, pd.DataFrame]:
    _slot_held()
    return service.choose_hyperparameters(_emb, target, method, config, Ks, lams, scoring, protocol,
                                          store=store())


choose = _heavy(_choose)


@st.cache_resource(show_spinner=False, max_entries=64)
def _evaluate_and_choose(emb_key: str, target: str, config: evaluation.EvalConfig, _emb: EmbeddingSet,
                         mode: str = defaults.CHOICE):
    _slot_held()
    return service.evaluate_and_choose(_emb, target, config, store=store(), mode=mode)


evaluate_and_choose = _heavy(_evaluate_and_choose)


@st.cache_resource(show_spinner=False, max_entries=32)
def _full_space_score(emb_key: str, target: str, config: evaluation.EvalConfig, scoring: str, protocol: str,
                      _emb: EmbeddingSet) -> float:
    _slot_held()
    return service.full_space_score(_emb, target, config, scoring, protocol, store=store())


full_space_score = _heavy(_full_space_score)


@st.cache_data(show_spinner=False, max_entries=32)
def target_confusions(emb_key: str, target: str, method: str, config: evaluation.EvalConfig, protocol: str,
                      _emb: EmbeddingSet) -> dict[str, np.ndarray]:
    return service.target_confusions(_emb, target, method, config, protocol, store=store())


@st.cache_data(show_spinner=False, max_entries=32)
def pair_examples(emb_key: str, request_key: str, pair_set: str, _request: service.EmbeddingRequest,
                  _emb: EmbeddingSet) -> list[service.PairExample]:
    return service.pair_examples(_request, _emb, pair_set)


@st.cache_data(show_spinner=False, max_entries=16)
def _sweep(emb_key: str, target: str, method: str, config: evaluation.EvalConfig, Ks: tuple, lams: tuple,
           _emb: EmbeddingSet) -> pd.DataFrame:
    _slot_held()
    return service.sweep(_emb, target, method, config, Ks, lams)


sweep = _heavy(_sweep)


@st.cache_data(show_spinner=False, max_entries=16)
def predictions(emb_key: str, fit_key: str, method: str, _emb: EmbeddingSet, _fit: service.Fit | None) -> np.ndarray:
    return service.predictions(_emb, None if _fit is None else _fit.projection, method)


@st.cache_data(show_spinner=False, max_entries=8)
def true_factor(request_key: str, factor: str, _request: service.EmbeddingRequest, _emb: EmbeddingSet) -> np.ndarray | None:
    return service.true_factor(_request, _emb, factor)


@st.cache_data(show_spinner=False, max_entries=8)
def example_rows(emb_key: str, domains: tuple[str, ...], _emb: EmbeddingSet) -> dict:
    return service.example_rows(_emb, list(domains))


@st.cache_data(show_spinner=False, max_entries=32)
def neighbour_agreement(emb_key: str, fit_key: str, _emb: EmbeddingSet, _fit: service.Fit | None,
                        _factor: np.ndarray | None = None) -> dict[str, float]:
    """How much a space (CLIP's, or a fit's when ``_fit``) groups images by class, by domain and, where
    the world knows it, by the shortcut factor: service.neighbour_agreement of each."""
    X = _emb.features if _fit is None else _fit.transform(_emb.features)
    values = {"class": _emb.labels, "domain": _emb.domains}
    if _factor is not None:
        values["colour"] = _factor
    return {name: service.neighbour_agreement(X, v) for name, v in values.items()}


MAP_FIGURES = 48  # about 1 MB each at 1,280 points: a class of 30 on its own settings, their full maps and stale ones


@st.cache_resource(show_spinner=False, max_entries=MAP_FIGURES)
def map_figure(content: str, colour: str, title: str, colours: tuple, layout: tuple, _xy: np.ndarray,
               _points: pd.DataFrame):
    """figures.scatter_layout of ``_xy`` and ``_points`` (``content``: a digest of both,
    common.map_content) with ``layout`` applied, built once for every session that draws the same map:
    plotly's sixteen traces cost a rerun more than its numbers (bench/RESULTS.md). One object shared by
    the sessions (a figures.SharedFigure, serialised once), so nobody changes it in place
    (figures.with_highlight copies)."""
    fig = figures.scatter_layout(_xy, _points, colour, title, dict(colours) or None)
    return figures.shared(fig.update_layout(**dict(layout)))


@st.cache_resource(show_spinner=False, max_entries=MAP_FIGURES)
def stale_map_figure(content: str, colour: str, title: str, stale_title: str, _xy: np.ndarray,
                     _points: pd.DataFrame):
    """map_figure's map faded and titled ``stale_title`` (figures.as_stale): what a session shows of a
    space while its new layout is pending, made once rather than on each of its reruns."""
    return figures.shared(figures.as_stale(map_figure(content, colour, title, (), (), _xy, _points), stale_title))


# The views below are built once per server for every session on the same setting, as map_figure is:
# a class moves the same sliders, and building a chart and its tables cost a rerun more than its numbers
# (bench/RESULTS.md, "A classroom"). Shared objects: nobody changes them in place.
SHARED_VIEWS = 64


@st.cache_resource(show_spinner=False, max_entries=SHARED_VIEWS)
def accuracy_view(emb_key: str, target: str, configs: tuple[evaluation.EvalConfig, ...], K: int, lam: float,
                  title: str, focus: tuple[str, ...], _emb: EmbeddingSet) -> tuple[pd.DataFrame, object, pd.DataFrame]:
    """The accuracy table of ``configs`` (the method and its baselines) at (K, lam), its chart
    (figures.accuracy_bars) and its wide form (service.accuracy_wide)."""
    frames = [evaluate(emb_key, target, config, _emb).assign(K=K, lam=lam) for config in configs]
    table = service.accuracy_table(frames)
    chart = figures.shared(figures.accuracy_bars(table, target, title, focus=focus))
    return table, chart, service.accuracy_wide(table, target)


@st.cache_resource(show_spinner=False, max_entries=SHARED_VIEWS)
def confusion_figure(emb_key: str, target: str, method: str, config: evaluation.EvalConfig, protocol: str,
                     titles: tuple[tuple[str, str], ...], _emb: EmbeddingSet):
    """figures.confusion_heatmaps of target_confusions(...), titled by ``titles`` (method -> title)."""
    matrices = target_confusions(emb_key, target, method, config, protocol, _emb)
    return figures.shared(figures.confusion_heatmaps(matrices, _emb.class_names, dict(titles)))


@st.cache_resource(show_spinner=False, max_entries=SHARED_VIEWS)
def targets_overview(emb_key: str, config: evaluation.EvalConfig, mode: str) -> dict:
    """A holder, one for every session, of the every-target overview's rows (``"rows"``: a frame of
    target_summary's, one per target) of the data set ``emb_key`` under ``config`` and ``mode``: filled by
    the first page that has every target's model choice, read by the others (each run made the four
    summaries again: about 3 ms of every page run). A holder, as embedding_slot is: the page fills it
    where it can show its progress."""
    return {}


@st.cache_resource(show_spinner=False, max_entries=64)
def target_summary(emb_key: str, target: str, config: evaluation.EvalConfig, mode: str, _frame: pd.DataFrame,
                   _made: choice.Choice) -> dict:
    """choice.target_summary of evaluate_and_choose(emb_key, target, config, mode)'s result, once per server
    (the Explorer's lead and overview redo it for every target on every rerun otherwise)."""
    return choice.target_summary(_frame, _made)


@st.cache_resource(show_spinner=False)
def store() -> EmbeddingStore:
    """The on-disk store of the embeddings, and also of the layouts, the chosen K and lam with CLIP's
    score, accuracy tables and confusion matrices, so that a restarted server redraws at once. Seeded
    with the bundled demo's first views (dashboard/demo_store.py), so that a fresh clone's does too."""
    return EmbeddingStore(seed=demo_store.folder())


@st.cache_data(show_spinner=False, max_entries=8)
def plot_ids(emb_key: str, max_points: int, _emb: EmbeddingSet) -> np.ndarray:
    """The rows on the maps (the layouts themselves come from service.layout_worker, not from here:
    a Streamlit cache would make the page wait for them)."""
    return service.plot_ids(_emb, max_points)


@st.cache_data(show_spinner=False, max_entries=8)
def _playground(config: object, shifts: tuple, lam: float, n_components: int | None) -> pd.DataFrame:
    _slot_held()
    return service.playground(config, shifts, lam, n_components)


playground = _heavy(_playground)


@st.cache_data(show_spinner=False)
def open_clip_architectures() -> list[str]:
    return service.open_clip_architectures()


@st.cache_data(show_spinner=False)
def open_clip_tags(arch: str) -> list[str]:
    return service.open_clip_tags(arch)


@st.cache_data(show_spinner=False, ttl=30)
def cache_info(folder: str) -> dict:
    """clip_icm.cache.info of ``folder``; walking it on every rerun would cost more than it tells."""
    from clip_icm import cache

    return cache.info(folder)


def clear() -> None:
    """Empty every cache and forget the background workers' layouts and the numbers they made (tests call this
    between runs: a finished job of another store's would stand for numbers this one lacks)."""
    st.cache_data.clear()
    st.cache_resource.clear()
    service.layout_worker().forget()
    service.ahead_worker().forget()
