"""What the pages share: the sidebar settings and embeddings (a Context), the fit, the model
choice's setting, and the maps drawn from the background layout worker."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from clip_icm import defaults, evaluation, methods, service
from clip_icm.embeddings import EmbeddingSet
from dashboard import cached, controls, texts, url


@dataclass(frozen=True)
class Selection:
    """What a selection rule chose, and its score for the chosen setting and for CLIP."""

    K: int
    lam: float
    rule: str
    protocol: str
    score: float
    full_space_score: float
    scores: pd.DataFrame  # the rule's score of every grid setting (columns K, lam, score)


@dataclass(frozen=True)
class Context:
    request: service.EmbeddingRequest
    emb: EmbeddingSet  # the chosen target and sources
    choice: controls.ProjectionChoice
    K: int
    lam: float
    selection: Selection | None
    every_domain: EmbeddingSet  # before the domain choice: each domain held out in turn for the overview


# ---------------------------------------------------------------- shared: settings and embeddings

def settings_context() -> Context | None:
    """Sidebar settings, then the embeddings (with progress); None (after an error message) if they fail.
    Progressive disclosure: the few settings a demo needs (data, target, K and λ) on top, the rest in
    folded groups under "Advanced"."""
    with st.sidebar:
        essentials = st.container()
        st.markdown("**Advanced**")
        with essentials:
            data = controls.data_ui()
        with st.expander("Model"):
            model = controls.model_ui() if data is None or data["source"] != "synthetic" else {}
        if data is None:  # the folder picker said why; nothing is scanned
            return None
        interventions = service.InterventionChoice()
        if data["source"] != "synthetic":
            with st.expander("Interventions"):
                world = service.has_true_factors(data["source"], data.get("root", ""), data.get("dataset"))
                interventions = controls.interventions_ui(bundled_world=world)
    request = service.EmbeddingRequest(**data, **model, interventions=interventions)
    emb = load_embeddings(request)
    if emb is None:
        return None
    start = service.projection_defaults(request.source, emb.features.shape[1])
    every_domain = emb
    with st.sidebar:
        with st.expander("Domains, method and selection"):
            choice = controls.projection_ui(emb, service.default_target(emb, request.source), start, essentials)
        emb = service.restrict_domains(emb, (choice.target, *choice.sources))
        with essentials:
            selection = select_k_lam(emb, choice, start)
            K, lam = controls.k_lam_ui(emb.features.shape[1], start,
                                       None if selection is None else (selection.K, selection.lam), choice.method)
        controls.cache_ui(emb)
    url.write_settings(request.source, request.root, request.dataset, choice.target, choice.method, choice.baselines,
                       K, lam, by_hand=selection is None)
    return Context(request, emb, choice, K, lam, selection, every_domain)


def load_embeddings(request: service.EmbeddingRequest) -> EmbeddingSet | None:
    """From the resource cache, or built here with a progress bar (counts and time left)."""
    slot = cached.embedding_slot(request.key)
    if "emb" not in slot:
        box, notes = st.empty(), []
        try:
            with box.status("Preparing embeddings…", expanded=True):
                emb = cached.build_once(slot, notes, lambda: _build(request, notes))
        except service.ServiceError as e:
            box.error(texts.plain(str(e)))  # in place of the status box: the reason, in full, at the top of the page
            return None
        box.empty()
        slot.update(emb=emb, notes=notes)
    for note in slot["notes"]:
        st.warning(texts.plain(note))  # notes quote folder names
    return slot["emb"]


def _build(request: service.EmbeddingRequest, notes: list[str]) -> EmbeddingSet:
    return service.load_embeddings(request, StageProgress(), notes, store=cached.store())


class StageProgress:
    """The embedding pass's progress: a bar for the running stage (its count and the time left at
    that stage's own rate) above a line naming the stages done, with their sizes and times, so that
    a pass of ten stages does not look like one bar starting over. A stage's first report counts
    the items served from the cache (pipeline.Progress): a stage served whole says so, with no time."""

    def __init__(self) -> None:
        self.bar, self.log = st.progress(0.0, text="starting"), st.empty()
        self.stage: str | None = None
        self.since, self.first_done, self.total = time.monotonic(), 0, 0
        self.finished: list[str] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage:
            if self.stage is not None:
                self.finished.append(stage_summary(self.stage, self.total, now - self.since, self._served_whole))
                self.log.caption("Done: " + " · ".join(self.finished))
            self.stage, self.since, self.first_done = stage, now, done  # rows found in the store come first
        self.total = total
        if self._served_whole:
            text = f"{stage}: served from cache ({total:,} items)"
        else:
            left = seconds_left(now - self.since, done - self.first_done, total - done)
            eta = f", about {left:.0f} s left" if left is not None else ""
            text = f"{stage}: {done}/{total}{eta}"
        self.bar.progress(min(done / total, 1.0) if total else 1.0, text=text)

    @property
    def _served_whole(self) -> bool:
        return bool(self.total) and self.first_done >= self.total


def stage_summary(stage: str, total: int, seconds: float, served_from_cache: bool = False) -> str:
    if served_from_cache:  # no time: reading the store is not the stage's work
        return f"{stage} served from cache ({total:,} items)"
    size = f" {total:,}" if total > 1 else ""
    return f"{stage}{size} ({seconds:.1f} s)"


def seconds_left(elapsed: float, done: int, remaining: int) -> float | None:
    """At the rate of the ``done`` items computed in ``elapsed`` seconds; None before the first."""
    return elapsed / done * remaining if done > 0 else None


def select_k_lam(emb: EmbeddingSet, c: controls.ProjectionChoice, start: dict) -> Selection | None:
    """Run the chosen selection rule on source data (cached); None when it is off or fails
    (after an error message: the sliders then decide)."""
    if c.selection == "off":
        return None
    config = controls.eval_config(c, start["K"], start["lam"], (c.method,))
    Ks, lams = methods.spec(c.method).grid(emb.features.shape[1], c.lam_mode, start["K"], start["lam"])
    try:
        with st.spinner(f"Choosing K and λ ({len(Ks) * len(lams)} settings, source data only)…"):
            K, lam, scores = cached.choose(emb.key, c.target, c.method, config, Ks, lams, c.selection, c.protocol, emb)
            full = cached.full_space_score(emb.key, c.target, config, c.selection, c.protocol, emb)
    except service.ServiceError as e:
        st.error(f"{e} Selection is off; the sliders decide.")
        return None
    return Selection(K, lam, c.selection, c.protocol, float(scores.score.max()), full, scores)


def fitted(ctx: Context, K: int, lam: float, *, say_why: bool = True) -> service.Fit | None:
    """The fitted projection (cached); None after an error message (``say_why`` False: without one)."""
    c = ctx.choice
    try:
        return cached.fit(ctx.emb.key, c.target, c.method, controls.eval_config(c, K, lam, (c.method,)), ctx.emb)
    except service.ServiceError as e:
        if say_why:
            st.error(str(e))
        return None


def fit_key(ctx: Context, K: int, lam: float) -> str:
    """What the fit depends on (cached.fit's arguments), so that picking a baseline keeps the
    invariant layout and predictions cached."""
    c = ctx.choice
    return service.content_key(ctx.emb.key, c.target, c.method, controls.eval_config(c, K, lam, (c.method,)))




def choice_config(ctx: Context) -> evaluation.EvalConfig | None:
    """The setting the model choice starts from (its rule picks K and lam, so the sliders are not in it);
    None where it does not apply (the released preset chose nothing; the open-class task has no probe)."""
    c = ctx.choice
    if c.task != "domain_shift" or c.eval_protocol != "ours":
        return None
    dim = ctx.emb.features.shape[1]
    return controls.eval_config(c, defaults.k(dim), defaults.LAM, ())



def every_target_choice_job(ctx: Context) -> service.LayoutJob | None:
    """The model choice of every target, with this page's target first, made by the background choice
    worker into the results store: at 20,000 images the four choices take minutes, and in a rerun they
    would hold up the maps and every control (a first visit to the Story's step 7 on the demo, 10-12 s).
    The worker's thread hands them to a process of its own (service.evaluate_and_choose_every_target), so
    that they take neither this process's interpreter nor its memory. The pages draw from the store once it
    is done. None where there is no choice to make, or the worker has enough waiting (then the page
    computes it itself)."""
    config = choice_config(ctx)
    if config is None:
        return None
    emb, store, mode = ctx.every_domain, cached.store(), ctx.choice.choice_mode
    targets = sorted(emb.domain_names, key=lambda target: target != ctx.choice.target)

    def compute() -> np.ndarray:
        service.evaluate_and_choose_every_target(emb, targets, config, store, mode)
        return np.empty(0)

    return service.choice_worker().submit(service.content_key("every target's model choice", emb.key, config, mode),
                                          compute, label="the model choice of every target", group=ctx.emb.key,
                                          priority=service.SPECULATIVE)


def target_summary(ctx: Context, target: str, config: evaluation.EvalConfig) -> dict:
    """choice.target_summary of ``target`` held out of every domain, the others as sources (cached)."""
    emb, mode = ctx.every_domain, ctx.choice.choice_mode
    return cached.target_summary(emb.key, target, config, mode,
                                 *cached.evaluate_and_choose(emb.key, target, config, emb, mode))


@st.fragment(run_every=1.0)
def choice_status(job: service.LayoutJob, reads: str) -> None:
    """Polls the background choice; once it is done, the page reruns and draws it (from the store)."""
    if not job.pending:
        st.rerun()
    st.info(f"Choosing the model for every target in the background, from {reads} "
            f"({job.progress(service.choice_worker().ahead_of(job))}); this part follows by itself.", icon=texts.PENDING_ICON)


def map_figure(job: service.LayoutJob, points: pd.DataFrame, colour: str, title: str,
               colours: dict[str, str] | None = None, **layout):
    """The map of a finished layout job (None while it is pending or when it failed), from the
    server's cache of figures (cached.map_figure): sessions drawing the same map share one."""
    xy = job.result()
    return None if xy is None else map_of(xy, points, colour, title, colours, **layout)


def map_of(xy: np.ndarray, points: pd.DataFrame, colour: str, title: str, colours: dict[str, str] | None = None,
           **layout):
    """figures.scatter_layout through cached.map_figure, keyed by what it draws (map_content), never
    by who asks: a figure is shared only where every point, colour and word on it is the same."""
    return cached.map_figure(map_content(xy, points), colour, title, tuple(sorted((colours or {}).items())),
                             tuple(sorted(layout.items())), xy, points)


def map_content(xy: np.ndarray, points: pd.DataFrame) -> str:
    """A digest of a map's coordinates and its points table (every column, the index, the column names)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(xy).tobytes())
    digest.update(repr((xy.shape, xy.dtype.str, list(points.columns))).encode())
    digest.update(pd.util.hash_pandas_object(points, index=True).to_numpy().tobytes())
    return digest.hexdigest()


def layout_failure(job: service.LayoutJob) -> str | None:
    error = job.error()
    if error is None:
        return None
    what = service.message(error) if isinstance(error, service.USER_ERRORS) else f"{type(error).__name__}: {error}"
    return f"The {job.label} layout failed: {texts.plain(what)}"


LAYOUT_POLL_S = 1.0


@st.fragment(run_every=LAYOUT_POLL_S)
def layout_status(jobs: list) -> None:
    """While layouts are pending: where each stands, polled every LAYOUT_POLL_S; once none is, the
    whole page reruns (and draws the maps and their exports), which no longer draws this: polling stops."""
    pending = [job for job in jobs if job.pending]
    if not pending:
        st.rerun()
    worker = service.layout_worker()
    stands = "; ".join(f"{job.label}, {job.progress(worker.ahead_of(job))}" for job in pending)
    st.info(f"Maps laying out in the background ({stands}). The numbers above are already for this setting; "
            "the maps follow by themselves.", icon=texts.PENDING_ICON)



def invariant_label(method: str, K: int, lam: float) -> str:
    return f"invariant space ({service.method_label(method)}, K = {K}, λ = {lam:g})"

