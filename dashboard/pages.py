"""The dashboard's pages, one function each: widgets in, service calls, figures out."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from clip_icm import choice, defaults, evaluation, figures, methods, reduce, service
from clip_icm.embeddings import EmbeddingSet
from dashboard import cached, controls, texts

THUMBS = 12


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
    """Sidebar settings, then the embeddings (with progress); None (after an error message) if they fail."""
    with st.sidebar:
        with st.expander("Data and model", expanded=True):
            data = controls.data_ui()
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
    with st.sidebar, st.expander("Domains and projection", expanded=True):
        choice = controls.projection_ui(emb, service.default_target(emb, request.source), start)
        emb = service.restrict_domains(emb, (choice.target, *choice.sources))
        selection = select_k_lam(emb, choice, start)
        K, lam = controls.k_lam_ui(emb.features.shape[1], start,
                                   None if selection is None else (selection.K, selection.lam), choice.method)
    with st.sidebar:
        controls.cache_ui(emb)
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
    return service.load_embeddings(request, StageProgress(), notes)


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


def _selection_note(ctx: Context) -> None:
    """Says in words what chose K and lam, and how the method scores against CLIP on that rule's checks
    (which model to deploy is the model choice's answer above, whose checks also hold domains out)."""
    s, c = ctx.selection, ctx.choice
    if s is None:
        st.caption(f"K = {ctx.K} and λ = {ctx.lam:g} are set by hand (sliders).")
        return
    label = service.method_label(c.method)
    verdict = "above" if s.score > s.full_space_score else "not above"
    text = (f"K = {s.K} and λ = {s.lam:g} chosen by **{evaluation.SCORING_LABELS[s.rule]}** ({s.protocol}); "
            f"no target label. On this rule's checks {label} scores {s.score:.1%}, {verdict} CLIP's "
            f"{s.full_space_score:.1%} with the same head; which model to deploy is the choice above, whose "
            "checks also hold each source domain out.")
    if s.rule == "interventional":
        used = evaluation.intervened_val_for(ctx.emb, c.target)
        checks = ", ".join(chk.name for chk in used) or "none"
        generic = all(chk.name.startswith("val image:") for chk in used)
        text += f" Intervened validation: {checks}."
        if generic:
            text += (" These are photometric edits, the generic and weaker check: it only sees a shortcut that "
                     "those edits change.")
    st.info(text)


def fitted(ctx: Context, K: int, lam: float) -> service.Fit | None:
    """The fitted projection (cached); None after an error message."""
    c = ctx.choice
    try:
        return cached.fit(ctx.emb.key, c.target, c.method, controls.eval_config(c, K, lam, (c.method,)), ctx.emb)
    except service.ServiceError as e:
        st.error(str(e))
        return None


def _fit_key(ctx: Context, K: int, lam: float) -> str:
    """What the fit depends on (cached.fit's arguments), so that picking a baseline keeps the
    invariant layout and predictions cached."""
    c = ctx.choice
    return service.content_key(ctx.emb.key, c.target, c.method, controls.eval_config(c, K, lam, (c.method,)))


# ---------------------------------------------------------------- Explorer

def explorer_page() -> None:
    st.title("CLIP-ICM Explorer")
    # UMAP's kernels compile (or load from numba's cache) in another process, on the core that the
    # embedding pass leaves idle, rather than in this one, where compilation would hold the GIL.
    reduce.compile_in_background()
    ctx = settings_context()
    if ctx is None:
        return
    _summary(ctx)
    # The page leads with the model to deploy and every target at a glance; both are filled after the
    # accuracy chart (which a K or lam change must update quickly) and the maps, in these places.
    lead, overview = st.container(), st.container()
    K, lam = ctx.K, ctx.lam
    table = _accuracy_section(ctx, K, lam)
    with lead:
        _model_choice_lead(ctx, table)
    fit = fitted(ctx, K, lam)
    if fit is None:
        return
    layouts = _umap_section(ctx, fit, K, lam)
    _confusion_section(ctx, K, lam)
    _gallery_section(ctx)
    if table is not None:
        _export_section(ctx, fit, table, layouts)
    with overview:
        _targets_overview(ctx)


def _choice_config(ctx: Context) -> evaluation.EvalConfig | None:
    """The setting the model choice starts from (its rule picks K and lam, so the sliders are not in it);
    None where it does not apply (the released preset chose nothing; the open-class task has no probe)."""
    c = ctx.choice
    if c.task != "domain_shift" or c.eval_protocol != "ours":
        return None
    dim = ctx.emb.features.shape[1]
    return controls.eval_config(c, defaults.k(dim), defaults.LAM, ())


def _model_choice_lead(ctx: Context, table: pd.DataFrame | None) -> None:
    """The model to deploy on the selected target, chosen without its labels, in a sentence; then how it
    did against CLIP (with the labels: a description), and the sliders' setting beside the rule's."""
    config, c = _choice_config(ctx), ctx.choice
    if config is None:
        st.caption("The model choice runs under this project's protocol on the domain-shift task.")
        return
    try:
        with st.spinner(f"Choosing the model to deploy on {c.target} (source data only)…"):
            frame, made = cached.evaluate_and_choose(ctx.emb.key, c.target, config, ctx.emb)
    except service.ServiceError as e:
        st.warning(f"No model choice for {c.target}: {e}")
        return
    row = choice.target_summary(frame, made)
    st.success(f"**For {c.target}, deploy {row['chosen']}** ({row['chosen_accuracy']:.1%} on {c.target}). "
               f"{made.why}")
    if made.shortfall:
        st.caption(made.shortfall)
    against = "; ".join(f"{v.difference * 100:+.1f} points vs {v.versus} (95 % interval {v.low * 100:+.1f} to "
                        f"{v.high * 100:+.1f}, McNemar p = {v.p_value:.2g})" for v in made.versus_clip.itertuples())
    st.caption(f"Chosen on source data only: per source domain the worst of its validation rows, their intervened "
               f"copies and the domain held out; the simplest model unless a more complex one scores higher by more "
               f"than one standard error of their difference (scores on Diagnostics). With {c.target}'s labels, afterwards: {against}.")
    if table is not None and (ctx.K, ctx.lam) != (row["K"], row["lam"]) and methods.spec(c.method).tunes_k:
        _hand_setting_note(ctx, table, row)


def _hand_setting_note(ctx: Context, table: pd.DataFrame, rule: dict) -> None:
    """The sliders' K and lam next to the rule's, with the method's probe on the target at each."""
    c = ctx.choice
    mine = table[(table.role == "target") & (table.method == c.method) & (table.protocol == evaluation.LINEAR_PROBE)]
    if mine.empty or c.method != "icm":
        return
    yours, theirs = float(mine.accuracy.iloc[0]), rule["ICM probe"]
    text = (f"Your K = {ctx.K}, λ = {ctx.lam:g}: ICM probe {yours:.1%} on {c.target}. The rule chose K = {rule['K']}, "
            f"λ = {rule['lam']:g}: ICM probe {theirs:.1%}.")
    (st.warning if yours < theirs - 0.05 else st.info)(text + " Set “Choose K and λ by” back to a rule to return.")


def _targets_overview(ctx: Context) -> None:
    """Every domain held out in turn (the others as sources): each candidate's accuracy and the model
    chosen for it, so where the projection helps and where it does not shows without a control."""
    config = _choice_config(ctx)
    if config is None:
        return
    emb, rows = ctx.every_domain, []
    bar = st.progress(0.0, text="every target at a glance")
    try:
        for i, target in enumerate(emb.domain_names):
            bar.progress(i / len(emb.domain_names), text=f"every target at a glance: {target} "
                                                          f"({i + 1}/{len(emb.domain_names)})")
            rows.append(choice.target_summary(*cached.evaluate_and_choose(emb.key, target, config, emb)))
    except service.ServiceError as e:
        bar.empty()
        st.caption(f"No overview of every target: {e}")
        return
    bar.empty()
    st.markdown("**Every target at a glance**: each domain held out in turn, the others as sources")
    st.dataframe(_overview_table(pd.DataFrame(rows)), hide_index=True)
    st.caption("Deploy: chosen without the target's labels. The accuracies use them, to show the result.")


def _overview_table(frame: pd.DataFrame):
    """Accuracies as percentages, the chosen candidate's cell marked in each row."""
    candidates = [c.label for c in choice.candidates()]
    shown = frame[["target", *candidates, "chosen"]].rename(columns={"chosen": "deploy"})

    def mark(row: pd.Series) -> list[str]:
        return ["background-color: rgba(44, 160, 44, 0.25); font-weight: bold" if name == row["deploy"] else ""
                for name in row.index]

    return shown.style.apply(mark, axis=1).format("{:.1%}", subset=candidates)


def _summary(ctx: Context) -> None:
    info = service.describe(ctx.emb)
    pairs = ", ".join(f"{n} {k}" for k, n in info["pairs"].items()) or "none"
    st.caption(f"{info['images']} images · D = {info['dim']} · {info['classes']} classes · "
               f"{info['domains']} domains · pairs: {pairs} · model: {ctx.request.model_label} · "
               f"target: **{texts.plain(ctx.choice.target)}**")


def _accuracy_section(ctx: Context, K: int, lam: float):
    c, emb = ctx.choice, ctx.emb
    _protocol_note(ctx)
    if c.task == "open_class":
        return _open_class_section(ctx, K, lam)
    st.subheader("Accuracy per domain")
    try:
        # a baseline that reads neither K nor lam is evaluated once for every slider position
        configs = [service.with_unused_fixed(m, controls.eval_config(c, K, lam, (m,))) for m in (c.method, *c.baselines)]
        frames = [cached.evaluate(emb.key, c.target, config, emb).assign(K=K, lam=lam) for config in configs]
    except service.ServiceError as e:
        st.error(str(e))
        return None
    table = service.accuracy_table(frames)
    _headline(table, c)
    _selection_note(ctx)
    chart, numbers = st.tabs(["Chart", "Table"])
    title = f"Accuracy per domain ({service.method_label(c.method)}, K = {K}, lam = {lam:g})"
    chart.plotly_chart(figures.accuracy_bars(table, c.target, title), key="accuracy_chart")
    wide = service.accuracy_wide(table, c.target)
    change = "target change vs CLIP"
    numbers.dataframe(wide.style.format("{:.1%}", subset=[col for col in wide.columns if col != change], na_rep="n/a")
                      .format("{:+.1%}", subset=[change], na_rep="n/a"))
    st.caption("Source columns score each source domain's validation rows; the target column scores the whole "
               "held-out domain. The target change is against CLIP in the full space with the same protocol.")
    return table


def _protocol_note(ctx: Context) -> None:
    """Name the protocol above every table, and say when the embeddings do not match the released fp32."""
    from clip_icm.protocols import PROTOCOLS

    spec = PROTOCOLS.get(ctx.choice.eval_protocol)
    rows = "the target's 20% holdout" if spec.target_rows == "holdout" else "the whole target domain"
    scale = (f" λ is read as {spec.lam_mode} under this protocol." if spec.lam_mode
             and spec.lam_mode != ctx.choice.lam_mode else "")
    st.caption(f"Protocol: **{spec.label}** (target scored on {rows}). Orth-Cali calibrates class text only: "
               f"zero-shot, its probe is n/a.{scale}")
    if spec.precision and ctx.request.source != "synthetic":
        try:
            _, precision = service.device_and_precision(ctx.request.device, ctx.request.precision)
        except (ValueError, RuntimeError):
            return
        if precision != spec.precision:
            st.warning(f"The {spec.label} protocol runs {spec.precision} forward passes; these embeddings are "
                       f"{precision}. Set Precision to {spec.precision} under Data and model.")


def _open_class_section(ctx: Context, K: int, lam: float):
    c, emb = ctx.choice, ctx.emb
    st.subheader("Open class: zero-shot accuracy on base and new classes")
    try:
        frame = cached.evaluate_open_class(emb.key, c.target,
                                           controls.eval_config(c, K, lam, (c.method, *c.baselines)), emb)
    except service.ServiceError as e:
        st.error(str(e))
        return None
    st.dataframe(service.open_class_wide(frame, c.target).style.format("{:.1%}", na_rep="n/a"))
    st.caption("A seeded half of the classes (base) is all any fit sees, from the source domains only; zero-shot "
               "then names every class. HM: harmonic mean of base and new accuracy.")
    return None


def _headline(table, choice: controls.ProjectionChoice) -> None:
    target = table[table["role"] == "target"].set_index(["method", "protocol"])["accuracy"]
    label = service.method_label(choice.method)
    for col, protocol in zip(st.columns(2), ("linear probe", "zero-shot")):
        clip = target.get((evaluation.FULL_SPACE, protocol), np.nan)
        ours = target.get((choice.method, protocol), np.nan)
        col.metric(f"{label} {protocol} on {texts.plain(choice.target)}", f"{ours:.1%}", f"{ours - clip:+.1%} vs CLIP")


def _umap_section(ctx: Context, fit: service.Fit, K: int, lam: float) -> dict:
    """The two layouts side by side, then the selection; returns the figures drawn (for export).
    The layouts come from the background worker: the page never waits for one. A pending layout shows
    the last map of that space (marked stale) or a placeholder, and a status that redraws the page
    once it is ready."""
    emb, c = ctx.emb, ctx.choice
    st.subheader("Full CLIP space vs invariant space (UMAP)")
    colour = controls.colour_ui()
    max_points = controls.map_points_ui(len(emb.labels))
    ids = cached.plot_ids(emb.key, max_points, emb)
    store, fit_key = cached.results_store(), _fit_key(ctx, K, lam)
    label = service.method_label(fit.method)
    inv_title = f"Invariant space ({label}, K = {K}, lam = {lam:g})"
    full_job = service.full_layout_job(emb, ids, store=store)
    inv_job = service.invariant_layout_job(emb, ids, fit_key, lambda: fit, _invariant_label(c.method, K, lam),
                                           store=store)
    previous = st.session_state.get("invariant_layout_job")  # a slider dragged on: its last stop can wait
    if previous is not None and previous is not inv_job:
        service.layout_worker().demote(previous)
    st.session_state["invariant_layout_job"] = inv_job
    _speculate(ctx, ids, K, lam)
    full_points = service.point_table(emb, ids, c.target,
                                      cached.predictions(emb.key, "", evaluation.FULL_SPACE, emb, None))
    inv_points = service.point_table(emb, ids, c.target, cached.predictions(emb.key, fit_key, fit.method, emb, fit))
    space = (emb.key, id(emb) if not emb.key else "", max_points)  # "that space": the same points, another fit
    full_fig = _map_figure(full_job, full_points, colour, "Full CLIP space")
    inv_fig = _map_figure(inv_job, inv_points, colour, inv_title)
    if inv_fig is not None:
        st.session_state["last_invariant_map"] = (space, inv_job.result(), inv_points, inv_title)
    elif inv_job.pending:
        inv_fig = _stale_map(space, colour, K, lam)
    pending = [job for job in (full_job, inv_job) if job.pending]
    if pending:
        _layout_status(pending)
    _maps_and_selection(emb, ids, fit, full_fig, inv_fig,
                        {"umap_full": _layout_failure(full_job), "umap_invariant": _layout_failure(inv_job)})
    drawn = {"umap_full": (full_fig, full_job), "umap_invariant": (inv_fig, inv_job)}
    return {name: fig for name, (fig, job) in drawn.items() if fig is not None and service.layout_ready(job)}


def _map_figure(job: service.LayoutJob, points: pd.DataFrame, colour: str, title: str):
    """The map of a finished layout job; None while it is pending or when it failed."""
    xy = job.result()
    return None if xy is None else figures.scatter_layout(xy, points, colour, title)


def _stale_map(space: tuple, colour: str, K: int, lam: float):
    """The last invariant map this session drew of the same points, dimmed and titled as stale; None if none."""
    last = st.session_state.get("last_invariant_map")
    if last is None or last[0] != space:
        return None
    _, xy, points, title = last
    fig = figures.scatter_layout(xy, points, colour, f"Stale: {title}; laying out K = {K}, lam = {lam:g}")
    return fig.update_traces(opacity=0.35)


def _layout_failure(job: service.LayoutJob) -> str | None:
    error = job.error()
    if error is None:
        return None
    what = service.message(error) if isinstance(error, service.USER_ERRORS) else f"{type(error).__name__}: {error}"
    return f"The {job.label} layout failed: {texts.plain(what)}"


LAYOUT_POLL_S = 1.0


@st.fragment(run_every=LAYOUT_POLL_S)
def _layout_status(jobs: list) -> None:
    """While layouts are pending: where each stands, polled every LAYOUT_POLL_S; once none is, the
    whole page reruns (and draws the maps and their exports), which no longer draws this: polling stops."""
    pending = [job for job in jobs if job.pending]
    if not pending:
        st.rerun()
    worker = service.layout_worker()
    stands = "; ".join(f"{job.label}, {job.progress(worker.ahead_of(job))}" for job in pending)
    st.info(f"Maps laying out in the background ({stands}). The numbers above are already for this setting; "
            "the maps follow by themselves.", icon="⏳")


def _speculate(ctx: Context, ids: np.ndarray, K: int, lam: float) -> None:
    """Queue, at the lowest priority, the invariant layouts of the K and lam cells the selection rule
    considered, nearest to the sliders' position first, so that a slider move often lands on a stored
    layout. Bounded: at most the worker's MAX_SPECULATIVE wait at once, never more than the rule's grid
    (20 cells at D = 512), each kept in the store; dropped when a page asks for another data set."""
    s, c = ctx.selection, ctx.choice
    if s is None:
        return
    Ks, lams = sorted(set(s.scores.K)), sorted(set(s.scores.lam))
    here = (_nearest(Ks, K), _nearest(lams, lam))
    cells = sorted(((k, x) for k in Ks for x in lams),
                   key=lambda cell: abs(Ks.index(cell[0]) - here[0]) + abs(lams.index(cell[1]) - here[1]))
    for cell_K, cell_lam in [(s.K, s.lam), *cells]:
        if (cell_K, cell_lam) == (K, lam):
            continue
        cell_K, cell_lam = int(cell_K), float(cell_lam)
        config = controls.eval_config(c, cell_K, cell_lam, (c.method,))
        job = service.invariant_layout_job(ctx.emb, ids, _fit_key(ctx, cell_K, cell_lam),
                                           lambda config=config: service.fit(ctx.emb, c.target, c.method, config),
                                           _invariant_label(c.method, cell_K, cell_lam),
                                           store=cached.results_store(), priority=service.SPECULATIVE)
        if job is None:  # the worker has enough waiting
            return


def _invariant_label(method: str, K: int, lam: float) -> str:
    return f"invariant space ({service.method_label(method)}, K = {K}, λ = {lam:g})"


def _nearest(values: list, value: float) -> int:
    return min(range(len(values)), key=lambda i: abs(values[i] - value))


@st.fragment
def _maps_and_selection(emb: EmbeddingSet, ids: np.ndarray, fit: service.Fit, full_fig, inv_fig,
                        failures: dict) -> None:
    """The two maps and what is selected on them: a fragment, so that a box or lasso selection
    reruns only this part (the figures are made outside it), not the accuracy and the layouts.
    A map not laid out yet is a placeholder; one whose layout failed, the reason and a retry."""
    left, right = st.columns(2)
    selections = []
    for column, fig, key, space in ((left, full_fig, "umap_full", "full space"),
                                    (right, inv_fig, "umap_invariant", "invariant space")):
        with column:
            if failures[key] is not None:
                st.error(failures[key])
                if st.button("Lay it out again", key=f"relayout_{key}"):
                    service.layout_worker().forget_failed()
                    st.rerun()
            elif fig is None:
                st.info(f"The {space} map is laying out in the background; it appears here when ready.")
            else:
                selections.append(st.plotly_chart(fig, key=key, on_select="rerun", selection_mode=("box", "lasso")))
    st.caption("Circles: source domains, crosses: the target domain. Hover shows the zero-shot prediction in that "
               "space. Layouts share an initialisation so that the two pictures are comparable. Select points "
               "(box or lasso) to see their images and nearest neighbours.")
    picked = sorted(set().union(*(figures.selected_ids(selection) for selection in selections)))
    if picked:
        _selection_view(emb, ids, picked, fit)


def _selection_view(emb: EmbeddingSet, ids: np.ndarray, picked: list[int], fit: service.Fit) -> None:
    st.markdown(f"**{len(picked)} selected**")
    _thumbs(emb, picked[:THUMBS])
    query = st.selectbox("Nearest neighbours of", picked, format_func=lambda i: _caption(emb, i), key="nn_query")
    for title, X in (("full space", emb.features), ("invariant space", fit.transform(emb.features))):
        st.markdown(f"Nearest in the **{title}**")
        _thumbs(emb, service.nearest_neighbours(X, ids, [query], k=6)[query])


def _caption(emb: EmbeddingSet, row: int) -> str:
    return f"#{row} {emb.class_names[emb.labels[row]]} / {emb.domains[row]}"


def _thumbs(emb: EmbeddingSet, rows: list[int]) -> None:
    images = [service.thumbnail(emb, r) for r in rows]
    if all(im is not None for im in images) and images:
        st.image(images, caption=[_caption(emb, r) for r in rows], width=88)
    else:
        st.write(texts.plain(", ".join(_caption(emb, r) for r in rows)))


def _confusion_section(ctx: Context, K: int, lam: float) -> None:
    c, emb = ctx.choice, ctx.emb
    st.subheader(f"Which class becomes which on {c.target}")
    protocol = st.radio("Predictions of the", [evaluation.LINEAR_PROBE, evaluation.ZERO_SHOT], horizontal=True,
                        key="confusion_protocol")
    try:
        matrices = cached.target_confusions(emb.key, c.target, c.method, controls.eval_config(c, K, lam, (c.method,)),
                                            protocol, emb)
    except service.ServiceError as e:
        st.error(str(e))
        return
    titles = {evaluation.FULL_SPACE: f"CLIP, full space ({protocol})",
              c.method: f"{service.method_label(c.method)}, K = {K} ({protocol})"}
    st.plotly_chart(figures.confusion_heatmaps(matrices, emb.class_names, titles), key="confusions")
    st.caption("Rows: the true class; columns: the predicted one; each row in shares of its class. Off the "
               "diagonal is where a shortcut sends a class: on the bundled world, to the class whose usual colour "
               "and scene it has in the target.")


def _gallery_section(ctx: Context) -> None:
    emb = ctx.emb
    # a conflict set's re-render depends on its held-out target's table: the gallery shows the others
    names = list(ctx.choice.pair_sets) + [chk.name for chk in emb.intervened_val if chk.held_out is None]
    # open once a set is chosen: choosing one reruns the page, which would fold the expander again
    chosen = st.session_state.get("gallery_set") is not None
    with st.expander("Interventions gallery: what the pairs change", expanded=chosen):
        if ctx.request.source == "synthetic":
            st.caption("The synthetic SCM has no images or captions to show: its pairs are sampled vectors.")
            return
        if not names:
            st.caption("No pair sets chosen.")
            return
        # none chosen at first: Streamlit runs a collapsed expander's code too, and the examples of
        # an image op cost a restarted server the import of torch (about 4 s)
        name = st.selectbox("Pair set", names, key="gallery_set", index=None, placeholder="Choose a pair set",
                            format_func=lambda n: n + (" (intervened validation: scored, never fitted)"
                                                       if n not in ctx.choice.pair_sets else ""))
        if name is None:
            return
        try:
            examples = cached.pair_examples(emb.key, ctx.request.key, name, ctx.request, emb)
        except service.ServiceError as e:
            st.error(str(e))
            return
        for example in examples:
            left, right = st.columns(2)
            if isinstance(example.before, str):
                left.markdown(f"`{example.before}`")
                right.markdown(f"`{example.after}`")
            else:
                left.image(example.before, caption=f"{example.caption}: as on disk", width=112)
                right.image(example.after, caption="intervened", width=112)


def _export_section(ctx: Context, fit: service.Fit, table, layouts: dict) -> None:
    with st.expander("Export"):
        c1, c2, c3 = st.columns(3)
        c1.download_button("Projection (.npz)", service.projection_npz(fit, ctx.emb, ctx.request.model_label),
                           file_name=f"projection_{fit.method}_K{fit.K}_lam{fit.lam:g}.npz", key="dl_npz")
        c2.download_button("Accuracy table (.csv)", service.accuracy_csv(table), file_name="accuracy.csv",
                           key="dl_csv")
        config = controls.eval_config(ctx.choice, fit.K, fit.lam, (ctx.choice.method, *ctx.choice.baselines))
        c3.download_button("Embeddings table (.parquet)", lambda: embeddings_parquet(ctx.emb, fit.target, config),
                           file_name=f"embeddings_{fit.target}.parquet", mime="application/vnd.apache.parquet",
                           key="dl_parquet", help="One row per image: path, domain, class, split, the maps' "
                           "coordinates (ICM's for the invariant map), each method's predictions and the vectors; "
                           "columns: docs/EXPORT.md")
        figs = {"accuracy": figures.accuracy_bars(table, ctx.choice.target), **layouts}
        cols = st.columns(len(figs))
        for col, (name, fig) in zip(cols, figs.items()):
            col.download_button(f"{name} (.html)", lambda fig=fig: figures.figure_html(fig),
                                file_name=f"{name}.html", mime="text/html", key=f"dl_html_{name}")
        if service.png_available():
            for col, (name, fig) in zip(cols, figs.items()):
                col.download_button(f"{name} (.png)", lambda fig=fig: service.figure_png(fig) or b"",
                                    file_name=f"{name}.png", mime="image/png", key=f"dl_png_{name}")
        else:
            st.caption("PNG export needs kaleido and a browser for it; not installed here, so only the "
                       "interactive HTML is offered (it opens offline, plotly.js is inlined).")


def embeddings_parquet(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig) -> bytes:
    """The export table (service.embedding_table), made on the click: with the maps' coordinates when
    the maps draw every row (their layouts are in the store then), else without (UMAP of every row)."""
    coordinates = len(emb.labels) <= service.MAP_POINTS
    table = service.embedding_table(emb, target, config, coordinates=coordinates, store=cached.results_store())
    return service.table_bytes(table, "parquet")


# ---------------------------------------------------------------- Diagnostics

def diagnostics_page() -> None:
    st.title("Diagnostics")
    ctx = settings_context()
    if ctx is None:
        return
    K, lam = ctx.K, ctx.lam
    fit = fitted(ctx, K, lam)
    if fit is None:
        return
    c1, c2 = st.columns(2)
    c1.metric("Invariance ratio ||ΔA|| / ||ZA||", f"{fit.invariance_ratio:.3f}",
              f"{fit.invariance_ratio - fit.full_ratio:+.3f} vs full space ({fit.full_ratio:.3f})", delta_color="inverse")
    c1.metric("Centred invariance ratio ||ΔA|| / ||(Z − mean Z)A||", f"{fit.centred_ratio:.3f}")
    c2.caption(f"Measured on {fit.ratio_pairs}. Small means the kept directions barely move when the variant "
               "factors are intervened on. The uncentred ratio is flattered by CLIP's large common mean (any "
               "subspace that keeps the mean direction looks invariant); the centred one compares the movement "
               "with the spread between images.")
    spectrum = methods.spec(fit.method).spectrum
    if fit.eigenvalues is not None and spectrum is not None:
        st.plotly_chart(figures.spectrum_figure(fit.eigenvalues, K, spectrum), key="spectrum")
    else:
        st.caption(f"{service.method_label(fit.method)} has no eigenvalue spectrum of M.")
    _orth_cali_caption(ctx, K, lam)
    _choice_scores_section(ctx)
    _sweep_section(ctx, K, lam)


def _choice_scores_section(ctx: Context) -> None:
    """The model choice's candidates with their scores and uncertainty (what chose the model on the Explorer)."""
    config = _choice_config(ctx)
    if config is None:
        return
    try:
        _, made = cached.evaluate_and_choose(ctx.emb.key, ctx.choice.target, config, ctx.emb)
    except service.ServiceError as e:
        st.caption(f"No model choice: {e}")
        return
    st.subheader("Which model to deploy")
    st.plotly_chart(figures.choice_scores(made.table, ctx.choice.target), key="choice_scores")
    checks = made.table.set_index("candidate")[[col for col in made.table.columns if col.endswith(" accuracy")]]
    st.dataframe(checks.style.format("{:.1%}"))
    st.caption(f"{made.why} Each check's accuracy is averaged over the source domains; the score takes, per "
               "source domain, the worst of its checks. No target label is read.")


def _orth_cali_caption(ctx: Context, K: int, lam: float) -> None:
    """What the Orth-Cali baselines' P0 removes, and a warning when it is most of the class signal."""
    c = ctx.choice
    for method in [m for m in (c.method, *c.baselines) if methods.spec(m).text_only]:
        try:
            text, warn = service.orth_cali_summary(ctx.emb, c.target, method, controls.eval_config(c, K, lam, (method,)))
        except service.ServiceError as e:
            st.caption(str(e))
            continue
        (st.warning if warn else st.caption)(text + (" Most of what tells the classes apart goes with it "
                                                      "(docs/FAITHFULNESS.md)." if warn else ""))


@st.fragment
def _sweep_section(ctx: Context, K: int, lam: float) -> None:
    """A fragment: turning the sweep on or off reruns only this section."""
    st.subheader("K x lam sweep")
    st.markdown(texts.SWEEP_NOTE)
    if not controls.sweep_ui():
        return
    c, emb = ctx.choice, ctx.emb
    Ks, lams = methods.spec(c.method).grid(emb.features.shape[1], c.lam_mode, K, lam)
    config = controls.eval_config(c, K, lam, (c.method,))
    bar, frames = st.progress(0.0, text="sweep"), []
    try:
        for i, k in enumerate(Ks):  # one K per cached call, so the bar can move between them
            bar.progress(i / len(Ks), text=f"sweep: K = {k} ({i + 1}/{len(Ks)}, {len(lams)} lam values each)")
            frames.append(cached.sweep(emb.key, c.target, c.method, config, (k,), lams, emb))
    except service.ServiceError as e:
        st.error(str(e))
        return
    bar.empty()
    frame = pd.concat(frames, ignore_index=True)
    s = ctx.selection
    if s is not None and s.protocol == evaluation.LINEAR_PROBE:  # the sweep scores the probe
        # the left map shows what chose K and lam on the Explorer: the same grid, the same scores
        frame = frame.merge(s.scores.rename(columns={"score": "selection_score"}), on=["K", "lam"])
        rule = evaluation.SCORING_LABELS[s.rule]
        fig = figures.sweep_heatmaps(frame, (s.K, s.lam), "selection_score", f"{rule} (honest)")
        star = f"Star: chosen by {rule} (K = {s.K}, lam = {s.lam:g})"
    else:
        best = frame.loc[frame["source_val_accuracy"].idxmax()]
        fig = figures.sweep_heatmaps(frame, (int(best.K), float(best.lam)))
        star = f"Star: best on source validation (K = {int(best.K)}, lam = {best.lam:g})"
    st.plotly_chart(fig, key="sweep")
    st.caption(f"{star}. The right map uses target labels and is shown only to illustrate the gap; never "
               "choose from it.")


# ---------------------------------------------------------------- Causal playground and About

def playground_page() -> None:
    from clip_icm.scm import SCMConfig

    st.title("Causal playground")
    st.markdown(texts.PLAYGROUND_INTRO)
    c1, c2, c3 = st.columns(3)
    corr = c1.slider("Spurious correlation in training", 0.5, 1.0, 0.9, 0.05, key="pg_corr")
    top_shift = c1.slider("Largest test-time shift", 0.25, 1.0, 1.0, 0.25, key="pg_shift",
                          help="1 = the shortcut points to the wrong class every time")
    noise = c2.slider("Observation noise", 0.0, 2.0, 0.0, 0.1, key="pg_noise")
    n_inv = c2.slider("Invariant dimensions", 1, 16, 8, key="pg_inv")
    n_var = c3.slider("Variant dimensions", 1, 16, 8, key="pg_var")
    extra = c3.slider("Extra embedding dimensions", 0, 48, 0, 4, key="pg_extra")
    lam = c3.select_slider("lam", [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6], defaults.PLAYGROUND_LAM, key="pg_lam")
    config = SCMConfig(n_invariant=n_inv, n_variant=n_var, dim=n_inv + n_var + extra, spurious_correlation=corr,
                       noise=noise)
    shifts = tuple(float(x) for x in np.linspace(0.0, top_shift, 5))
    try:
        with st.spinner("Sampling the world and fitting…"):
            table = cached.playground(config, shifts, lam, None)
    except service.ServiceError as e:
        st.error(str(e))
        return
    shown = table.assign(predictor=table["method"].map(service.method_label))
    left, right = st.columns(2)
    left.plotly_chart(figures.playground_accuracy(shown, "shift", "ood_accuracy", "predictor",
                                                  "Accuracy on the shifted environment"), key="pg_acc")
    right.plotly_chart(figures.playground_recovery(shown.assign(method=shown["predictor"])), key="pg_rec")
    angles = table.drop_duplicates("method").set_index("method")["max_angle"]
    st.markdown(texts.playground_angles(angles.get("icm", np.nan), angles.get("icm_as_released", np.nan)))
    st.dataframe(table, hide_index=True)


def about_page() -> None:
    st.title("About the method")
    st.markdown(texts.ABOUT)
