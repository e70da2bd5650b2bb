"""Explorer: the model to deploy, accuracy per domain, the two maps, confusions, interventions, export."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st

from clip_icm import choice, evaluation, figures, methods, reduce, report, service
from clip_icm.embeddings import EmbeddingSet
from dashboard import cached, controls, texts
from dashboard.screens.common import (Context, choice_config, choice_status, every_target_choice_job, fit_key, fitted,
                                    invariant_label, layout_failure, layout_status, map_content, map_figure,
                                    settings_context, target_summary)

THUMBS = 12
# seconds from a page drawn from the store to the layout processes' warm-up: about what a restart's browser takes
# to draw the page after the server sent it on 2 cores (bench/RESULTS.md, "The warm restart")
WARM_LAYOUTS_AFTER_S = 5.0


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
    # accuracy chart (which a K or lam change must update quickly), in these places, from the background
    # choice worker's results: never computed in a rerun while it has room for them.
    lead, overview = st.container(), st.container()
    K, lam = ctx.K, ctx.lam
    early_layouts = _early_layout_jobs(ctx, K, lam)
    evaluating = _numbers_job(ctx, K, lam)
    table = _accuracy_section(ctx, K, lam, evaluating)
    choosing = every_target_choice_job(ctx)
    choosing_now = choosing is not None and choosing.pending  # read once: the status that polls, or both parts
    with lead:
        if choosing_now:
            choice_status(choosing, controls.CHOICE_MODE_LABELS[ctx.choice.choice_mode])
        else:
            _model_choice_lead(ctx, table)
    fit = fitted(ctx, K, lam)
    if fit is None:
        return
    # which class becomes which: the picture a stakeholder reads at once, above the maps (it was ~1,900 px down)
    _confusion_section(ctx, K, lam, evaluating)
    layouts = _umap_section(ctx, fit, K, lam, early_layouts or _layout_jobs(ctx, fit, K, lam))
    _evaluate_ahead(ctx, K, lam)
    _gallery_section(ctx)
    if table is not None:
        _export_section(ctx, fit, table, layouts)
    if not choosing_now:
        with overview:
            _targets_overview(ctx)


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
    # an icon given, not looked for: looking for a leading emoji in text that is not ASCII ("λ") made Streamlit
    # compile its emoji pattern, 0.3-0.4 s of a new process's first page, before the accuracy chart
    st.info(text, icon=":material/tune:")


def _model_choice_lead(ctx: Context, table: pd.DataFrame | None) -> None:
    """The model to deploy on the selected target, chosen without its labels, in a sentence; then how it
    did against CLIP (with the labels: a description), and the sliders' setting beside the rule's."""
    config, c = choice_config(ctx), ctx.choice
    if config is None:
        st.caption("The model choice runs under this project's protocol on the domain-shift task.")
        return
    try:
        with st.spinner(f"Choosing the model to deploy on {c.target} (no target label)…"):
            frame, made = cached.evaluate_and_choose(ctx.emb.key, c.target, config, ctx.emb, c.choice_mode)
    except service.ServiceError as e:
        st.warning(f"No model choice for {c.target}: {e}")
        return
    row = cached.target_summary(ctx.emb.key, c.target, config, c.choice_mode, frame, made)
    st.success(f"**For {c.target}, deploy {row['chosen']}** ({row['chosen_accuracy']:.1%} on {c.target}). "
               f"{made.why}")
    if made.shortfall:
        st.caption(made.shortfall)
    against = "; ".join(f"{v.difference * 100:+.1f} points vs {v.versus} (95 % interval {v.low * 100:+.1f} to "
                        f"{v.high * 100:+.1f}, McNemar p = {v.p_value:.2g})" for v in made.versus_clip.itertuples())
    st.caption(f"{choice.rule_sentence(made.mode)} (scores on Diagnostics). With {c.target}'s labels, "
               f"afterwards: {against}.")
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
    (st.warning if yours < theirs - 0.05 else st.info)(text)
    if st.session_state.get(controls.HAND_SET_FROM):
        st.button("Back to the chosen K and λ", key="back_to_rule", on_click=controls.back_to_the_rule)
    else:
        st.caption("Set “Choose K and λ by” (Advanced) back to a rule to return.")


def _targets_overview(ctx: Context) -> None:
    """Every domain held out in turn (the others as sources): each candidate's accuracy and the model
    chosen for it, so where the projection helps and where it does not shows without a control."""
    config = choice_config(ctx)
    if config is None:
        return
    emb = ctx.every_domain
    made = cached.targets_overview(emb.key, config, ctx.choice.choice_mode)  # one for every session
    if "rows" not in made:
        rows = []
        bar = st.progress(0.0, text="every target at a glance")
        try:
            for i, target in enumerate(emb.domain_names):
                bar.progress(i / len(emb.domain_names), text=f"every target at a glance: {target} "
                                                              f"({i + 1}/{len(emb.domain_names)})")
                rows.append(target_summary(ctx, target, config))
        except service.ServiceError as e:
            bar.empty()
            st.caption(f"No overview of every target: {e}")
            return
        bar.empty()
        made["rows"] = pd.DataFrame(rows)
    st.markdown("**Every target at a glance**: each domain held out in turn, the others as sources")
    st.dataframe(_overview_table(made["rows"]), hide_index=True)
    st.caption(f"Deploy: chosen without the target's labels, from {controls.CHOICE_MODE_LABELS[ctx.choice.choice_mode]}. "
               "The accuracies use the labels, to show the result.")


def _overview_table(frame: pd.DataFrame):
    """Accuracies as percentages, the chosen candidate's cell marked in each row."""
    candidates = [c.label for c in choice.candidates()]
    shown = frame[["target", *candidates, "chosen"]].rename(columns={"chosen": "deploy"})

    def mark(row: pd.Series) -> list[str]:
        return ["background-color: rgba(44, 160, 44, 0.25); font-weight: bold" if name == row["deploy"] else ""
                for name in row.index]

    return shown.style.apply(mark, axis=1).format("{:.1%}", subset=candidates)


def _summary(ctx: Context) -> None:
    """The data in words; the pair sets (pipeline names) are under Advanced > Interventions."""
    info = service.describe(ctx.emb)
    st.caption(f"{info['images']:,} images of {info['classes']} classes in {info['domains']} domains · "
               f"model: {ctx.request.model_label} · target (held out): **{texts.plain(ctx.choice.target)}**")


def _accuracy_section(ctx: Context, K: int, lam: float, evaluating: service.LayoutJob | None):
    """The accuracy chart and table of the sliders' setting, and the headline above them; the table, or None
    where there is none of this setting (yet: ``evaluating``, _numbers_job's, shows the last numbers marked)."""
    c, emb = ctx.choice, ctx.emb
    _protocol_note(ctx)
    if c.task == "open_class":
        return _open_class_section(ctx, K, lam)
    st.subheader("Accuracy per domain")
    if evaluating is not None:
        _pending_numbers(ctx, K, lam, evaluating)
        return None
    try:
        title = f"Accuracy per domain ({service.method_label(c.method)}, K = {K}, lam = {lam:g})"
        table, figure, wide = cached.accuracy_view(emb.key, c.target, _table_configs(ctx, K, lam), K, lam, title,
                                                   (evaluation.FULL_SPACE, c.method), emb)
    except service.ServiceError as e:
        st.error(str(e))
        return None
    st.session_state["last_numbers"] = (_numbers_space(ctx), K, lam, figure, wide)
    _headline(table, c)
    _selection_note(ctx)
    _accuracy_tabs(ctx, figure, wide)
    return table


def _accuracy_tabs(ctx: Context, figure, wide: pd.DataFrame) -> None:
    chart, numbers = st.tabs(["Chart", "Table"])
    chart.plotly_chart(figure, key="accuracy_chart")
    if ctx.choice.baselines:
        chart.caption("Solid: CLIP and the method; pale: the baselines beside them (Advanced).")
    # percentages by the table's column formats, not a pandas Styler: Streamlit renders a Styler's every cell
    # again on each page run (about 8 ms of a run the numbers of which are cached)
    numbers.dataframe(wide, column_config={col: st.column_config.NumberColumn(format="percent") for col in wide.columns})
    st.caption("Source columns score each source domain's validation rows; the target column scores the whole "
               "held-out domain. The target change is against CLIP in the full space with the same protocol.")


def _table_configs(ctx: Context, K: int, lam: float) -> tuple[evaluation.EvalConfig, ...]:
    """The configs of the accuracy table at (K, lam): the method's, then its baselines'; a baseline that reads
    neither K nor lam is evaluated once for every slider position."""
    c = ctx.choice
    return tuple(service.with_unused_fixed(m, controls.eval_config(c, K, lam, (m,))) for m in (c.method, *c.baselines))


def _protocol_note(ctx: Context) -> None:
    """Name the protocol above every table, and say when the embeddings do not match the released fp32."""
    from clip_icm.protocols import PROTOCOLS

    spec = PROTOCOLS.get(ctx.choice.eval_protocol)
    rows = "the target's 20% holdout" if spec.target_rows == "holdout" else "the whole target domain"
    scale = (f" λ is read as {spec.lam_mode} under this protocol." if spec.lam_mode
             and spec.lam_mode != ctx.choice.lam_mode else "")
    shown = (ctx.choice.method, *ctx.choice.baselines)
    # said only where an Orth-Cali row is in the table (the tour read it as jargon on every page)
    orth_cali = (" Orth-Cali calibrates class text only: zero-shot, its probe is n/a."
                 if any(methods.spec(m).text_only for m in shown) else "")
    st.caption(f"Protocol: **{spec.label}** (target scored on {rows}).{orth_cali}{scale}")
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
    wide = service.open_class_wide(frame, c.target)
    # the target's three columns first, the sources' below: one table of every domain's was wider than the page
    on_target = [col for col in wide.columns if col[0] == f"{c.target} (target)"]
    st.dataframe(wide[on_target].style.format("{:.1%}", na_rep="n/a"))
    st.markdown("On the source domains' validation rows")
    st.dataframe(wide.drop(columns=on_target).style.format("{:.1%}", na_rep="n/a"))
    st.caption("A seeded half of the classes (base) is all any fit sees, from the source domains only; zero-shot "
               "then names every class. HM: harmonic mean of base and new accuracy.")
    return None


def _headline(table, choice: controls.ProjectionChoice) -> None:
    target = table[table["role"] == "target"].set_index(["method", "protocol"])["accuracy"]
    label = service.method_label(choice.method)
    for col, protocol in zip(st.columns(2), ("linear probe", "zero-shot")):
        clip = target.get((evaluation.FULL_SPACE, protocol), np.nan)
        ours = target.get((choice.method, protocol), np.nan)
        col.metric(f"{label} {protocol} on {texts.plain(choice.target)}", f"{ours:.1%}",
                   f"{ours - clip:+.1%} vs CLIP's {clip:.1%}")


def _early_layout_jobs(ctx: Context, K: int, lam: float) -> tuple | None:
    """_layout_jobs at the top of the run when the full space's layout is at hand (a K or lam change): the
    worker lays out the invariant space while the run draws the numbers (asked for beside the maps, a K
    change's layout at 10,000 images started 0.4-1.2 s after the change; bench/RESULTS.md). Else None: a
    data set's first page asks for its pair beside its maps, after its numbers, which the pair would slow."""
    emb = ctx.emb
    ids = cached.plot_ids(emb.key, controls.map_points(len(emb.labels)), emb)
    if service.ready_full_layout_job(emb, ids, store=cached.store()) is None:
        return None
    fit = fitted(ctx, K, lam, say_why=False)  # (if it fails, fitted() says why in its place, below the numbers)
    return None if fit is None else _layout_jobs(ctx, fit, K, lam)


def _layout_jobs(ctx: Context, fit: service.Fit, K: int, lam: float) -> tuple:
    """The points of the maps and their two layout jobs (full, invariant)."""
    emb, c = ctx.emb, ctx.choice
    ids = cached.plot_ids(emb.key, controls.map_points(len(emb.labels)), emb)
    store = cached.store()
    full_job = service.full_layout_job(emb, ids, store=store)
    inv_job = service.invariant_layout_job(emb, ids, fit_key(ctx, K, lam), lambda: fit,
                                           invariant_label(c.method, K, lam), store=store)
    previous = st.session_state.get("invariant_layout_job")  # a slider dragged on: its last stop can wait
    if previous is not None and previous is not inv_job:
        service.layout_worker().demote(previous)
    st.session_state["invariant_layout_job"] = inv_job
    return ids, full_job, inv_job


def _umap_section(ctx: Context, fit: service.Fit, K: int, lam: float, jobs: tuple) -> dict:
    """The two layouts side by side, then the selection; returns the figures drawn (for export).
    The layouts come from the background worker (``jobs``: _layout_jobs'): the page never waits for one. A
    pending layout shows the last map of that space (marked stale) or a placeholder, and a status that
    redraws the page once it is ready."""
    emb, c = ctx.emb, ctx.choice
    st.subheader("Full CLIP space vs invariant space (UMAP)")
    colour = controls.colour_ui()
    max_points = controls.map_points_ui(len(emb.labels))  # the value that chose the points of ``jobs`` (controls.map_points)
    ids, full_job, inv_job = jobs
    this_fit = fit_key(ctx, K, lam)
    label = service.method_label(fit.method)
    note = service.sample_note(len(ids), len(emb.labels))
    inv_title = f"Invariant space ({label}, K = {K}, lam = {lam:g})"
    _speculate(ctx, ids, K, lam)
    full_points = service.point_table(emb, ids, c.target,
                                      cached.predictions(emb.key, "", evaluation.FULL_SPACE, emb, None))
    space = (emb.key, id(emb) if not emb.key else "", max_points)  # "that space": the same points, another fit
    # Which jobs are pending is read once, before their maps: a job that finishes after this read
    # draws its map, with one status poll to spare; read after the maps, a job finishing between the
    # two reads left a stale map or a placeholder with no status to poll for it, for good.
    pending = [job for job in (full_job, inv_job) if job.pending]
    if not pending:  # drawn from what the worker or the store holds: the layout processes start for the next one,
        # once the browser has drawn this page (spawning one and importing umap beside it delayed a restart's chart)
        service.layout_worker().warm(after_s=WARM_LAYOUTS_AFTER_S)
    full_fig = map_figure(full_job, full_points, colour, f"Full CLIP space{note}")
    inv_fig = None
    if service.layout_ready(inv_job):
        # the hover data of a map drawn now only: the zero-shot predictions of every row took 0.2-0.3 s of a
        # K change's rerun at 50,000 images, whose layout is still pending then (bench/RESULTS.md)
        predicted = cached.predictions(emb.key, this_fit, fit.method, emb, fit)
        inv_points = service.point_table(emb, ids, c.target, predicted)
        inv_fig = map_figure(inv_job, inv_points, colour, inv_title + note)
        st.session_state["last_invariant_map"] = (space, inv_job.result(), inv_points, inv_title)
    elif inv_job in pending:
        inv_fig = _stale_map(space, colour, K, lam, note)
    if pending:
        layout_status(pending)
    _maps_and_selection(emb, ids, fit, full_fig, inv_fig,
                        {"umap_full": layout_failure(full_job), "umap_invariant": layout_failure(inv_job)})
    drawn = {"umap_full": (full_fig, full_job), "umap_invariant": (inv_fig, inv_job)}
    return {name: fig for name, (fig, job) in drawn.items() if fig is not None and service.layout_ready(job)}





def _stale_map(space: tuple, colour: str, K: int, lam: float, note: str):
    """The last invariant map this session drew of the same points, dimmed and titled as stale; None if none."""
    last = st.session_state.get("last_invariant_map")
    if last is None or last[0] != space:
        return None
    _, xy, points, title = last
    # a faded copy of the map drawn last (the figures' cache holds both), not one built again
    return cached.stale_map_figure(map_content(xy, points), colour, title + note,
                                   f"Stale: {title}; laying out K = {K}, lam = {lam:g}{note}", xy, points)





def _speculate(ctx: Context, ids: np.ndarray, K: int, lam: float) -> None:
    """Queue, at the lowest priority, the invariant layouts of the K and lam cells the selection rule
    considered, nearest to the sliders' position first, so that a slider move often lands on a stored
    layout. Bounded: at most the worker's MAX_SPECULATIVE wait at once, never more than the rule's grid
    (20 cells at D = 512), each kept in the store; dropped when a page asks for another data set."""
    s, c = ctx.selection, ctx.choice
    if s is None:
        return
    # queued once per setting and not on each of its reruns (a map's arrival, a poll): making the grid's
    # jobs again took 6 ms of every page run, which a classroom's sessions queue behind one another for
    asked = (fit_key(ctx, K, lam), ids.size)
    if st.session_state.get("speculated") == asked:
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
        job = service.invariant_layout_job(ctx.emb, ids, fit_key(ctx, cell_K, cell_lam),
                                           lambda config=config: service.fit(ctx.emb, c.target, c.method, config),
                                           invariant_label(c.method, cell_K, cell_lam),
                                           store=cached.store(), priority=service.SPECULATIVE)
        if job is None:  # the worker has enough waiting: the next run asks again
            return
    st.session_state["speculated"] = asked





# Images from which a setting's numbers are made off the page, in the server's evaluation process: the slider
# positions next to the page's ahead of a move, and a move's own when it lands on one not made yet. At 20,000
# images a move's table took 0.8 s of its rerun, at 10,000 0.1 s, less than handing it over costs (bench/RESULTS.md).
EVALUATE_AHEAD_FROM = 20_000
NUMBERS_POLL_S = 1.0
CONFUSION_PROTOCOL = "confusion_protocol"  # the confusions' radio (its value of the last run, read before it is drawn)


def _evaluates_ahead(ctx: Context) -> bool:
    return (len(ctx.emb.labels) >= EVALUATE_AHEAD_FROM and ctx.choice.task == "domain_shift"
            and service.keeps(cached.store(), ctx.emb))


def _numbers_space(ctx: Context) -> tuple:
    """What the last numbers drawn must share with the page to stand in for its own while they are made."""
    return ctx.emb.key, ctx.choice.target, ctx.choice.method


def _numbers_key(ctx: Context, configs: tuple, protocol: str) -> str:
    return service.content_key("numbers", ctx.emb.key, ctx.choice.target, ctx.choice.method, configs, protocol)


def _numbers_job(ctx: Context, K: int, lam: float) -> service.LayoutJob | None:
    """From EVALUATE_AHEAD_FROM images, once the page has drawn numbers of this data set, target and method: the
    background job that makes the sliders' setting's numbers (accuracy tables and confusions) while the store
    lacks them, asked for once per setting, before anything else (service.evaluate_ahead, in the evaluation
    process). The rerun then returns at once with the last numbers, marked, and the status polls until they
    land. None where the page reads or computes them itself: below that size, when the store holds them, on a
    data set's first page (it has nothing else to show), or when a finished job left the store without them."""
    if not _evaluates_ahead(ctx):
        return None
    last = st.session_state.get("last_numbers")
    if last is None or last[0] != _numbers_space(ctx):
        return None
    emb, c = ctx.emb, ctx.choice
    configs = _table_configs(ctx, K, lam)
    protocol = st.session_state.get(CONFUSION_PROTOCOL, evaluation.LINEAR_PROBE)
    store, worker = cached.store(), service.ahead_worker()
    key = _numbers_key(ctx, configs, protocol)
    held = st.session_state.get("numbers_job")
    if held is not None and held.key == key and worker.get(key) is held:  # a poll, or the rerun once it landed
        job = held
    else:
        if service.evaluated(emb, c.target, c.method, configs, protocol, store):
            return None
        job = worker.submit(key, lambda: service.evaluate_ahead(emb, c.target, c.method, [configs], protocol, store)
                            or np.empty(0), label=f"K = {K}, λ = {lam:g}", group=emb.key, priority=service.NOW)
        if held is not None and held is not job:
            worker.demote(held)  # a slider dragged on: its last stop can wait (and is dropped with the neighbours)
        st.session_state["numbers_job"] = job
    if job.pending or job.error() is not None:
        return job
    return None  # landed: read from the store (or, should it not hold them, computed here)


def _pending_numbers(ctx: Context, K: int, lam: float, job: service.LayoutJob) -> None:
    """In the accuracy section while ``job`` makes the setting's numbers: the reason it failed (and a retry), or
    a status that polls and the last numbers drawn, under their own setting."""
    failure = job.error()
    if failure is not None:
        what = service.message(failure) if isinstance(failure, service.USER_ERRORS) else f"{type(failure).__name__}: {failure}"
        st.error(f"Could not evaluate K = {K}, λ = {lam:g}: {texts.plain(what)}")
        if st.button("Evaluate again", key="evaluate_again"):
            service.ahead_worker().forget_failed()
            st.rerun()
        return
    _, last_K, last_lam, figure, wide = st.session_state["last_numbers"]
    _numbers_status(job, f"K = {last_K}, λ = {last_lam:g}")
    _accuracy_tabs(ctx, figure, wide)


@st.fragment(run_every=NUMBERS_POLL_S)
def _numbers_status(job: service.LayoutJob, shown: str) -> None:
    """While a setting's numbers are made in the background: where that stands, polled every NUMBERS_POLL_S;
    once they landed, the whole page reruns (and draws them), which no longer draws this: polling stops."""
    if not job.pending:
        st.rerun()
    stands = "queued" if job.started_at is None else f"running for {time.monotonic() - job.started_at:.0f} s"
    st.info(f"Evaluating {job.label} in the background ({stands}). The chart and table below are {shown}'s "
            "until then; the page redraws by itself.", icon="⏳")


def _evaluate_ahead(ctx: Context, K: int, lam: float) -> None:
    """From EVALUATE_AHEAD_FROM images: the numbers of the slider positions next to this one (K one up and down,
    λ one step either way), one background job each at the lowest priority (run while nothing else does), so
    that a move there reads them from the store. Asked for once per setting: on a new one, what waits for a
    setting left behind (its neighbours, a stop the slider passed) is dropped, a data set's or target's too."""
    emb, c = ctx.emb, ctx.choice
    if not _evaluates_ahead(ctx):
        return
    protocol = st.session_state.get(CONFUSION_PROTOCOL, evaluation.LINEAR_PROBE)
    asked = _numbers_key(ctx, _table_configs(ctx, K, lam), protocol)
    if st.session_state.get("evaluated_ahead") == asked:
        return
    steps = list(controls.LAMS)
    at = steps.index(lam) if lam in steps else None
    cells = [(k, lam) for k in (K + 1, K - 1) if 1 <= k <= emb.features.shape[1]]
    if at is not None:
        cells += [(K, steps[i]) for i in (at + 1, at - 1) if 0 <= i < len(steps)]
    store, worker = cached.store(), service.ahead_worker()
    held = st.session_state.get("numbers_job")
    if held is not None and held.key != asked:
        worker.demote(held)
    worker.drop_speculative()
    for k, x in cells:
        configs = _table_configs(ctx, k, x)
        worker.submit(_numbers_key(ctx, configs, protocol),
                      lambda configs=configs: service.evaluate_ahead(emb, c.target, c.method, [configs], protocol, store)
                      or np.empty(0), label=f"K = {k}, λ = {x:g}", group=emb.key, priority=service.SPECULATIVE)
    st.session_state["evaluated_ahead"] = asked


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
    # linked brushing: what is selected on one map is highlighted on the other
    chosen = {key: figures.selected_ids(st.session_state.get(key)) for key in ("umap_full", "umap_invariant")}
    brushed = {"umap_full": chosen["umap_invariant"], "umap_invariant": chosen["umap_full"]}
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
                fig = figures.with_highlight(fig, brushed[key]) if brushed[key] else fig
                selections.append(st.plotly_chart(fig, key=key, on_select="rerun", selection_mode=("points", "box", "lasso")))
    st.caption("Circles: source domains, crosses: the target domain. Hover shows the class, the domain and the "
               "zero-shot prediction in that space; **click a point to see its image** and its nearest neighbours in "
               "each space (a plotly map cannot show an image on hover). Layouts share an initialisation so that the "
               "two pictures are comparable. Dragging on a map lasso-selects points (the toolbar switches to box "
               "select, zoom or pan), highlights them on the other map and shows their images.")
    picked = sorted(set().union(*(figures.selected_ids(selection) for selection in selections)))
    if picked:
        _selection_view(emb, ids, picked, fit)


def _selection_view(emb: EmbeddingSet, ids: np.ndarray, picked: list[int], fit: service.Fit) -> None:
    shown = service.sample_rows(picked, THUMBS)
    sample = f" (a seeded sample of {len(shown)})" if len(shown) < len(picked) else ""
    st.markdown(f"**{len(picked)} selected**{sample}")
    _thumbs(emb, shown)
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


def _confusion_section(ctx: Context, K: int, lam: float, evaluating: service.LayoutJob | None) -> None:
    c, emb = ctx.choice, ctx.emb
    st.subheader(f"Which class becomes which on {c.target}")
    protocol = st.radio("Predictions of the", [evaluation.LINEAR_PROBE, evaluation.ZERO_SHOT], horizontal=True,
                        key=CONFUSION_PROTOCOL)
    if evaluating is not None:  # the last matrices drawn, under their own titles, while this setting's are made
        last = st.session_state.get("last_confusions")
        if evaluating.error() is None and last is not None and last[0] == _numbers_space(ctx):
            st.plotly_chart(last[1], key="confusions")
            st.caption(f"These are the last matrices drawn (their titles say their setting); K = {K}, λ = {lam:g}'s "
                       "follow with the numbers above.")
        return
    try:
        titles = ((evaluation.FULL_SPACE, f"CLIP, full space ({protocol})"),
                  (c.method, f"{service.method_label(c.method)}, K = {K} ({protocol})"))
        figure = cached.confusion_figure(emb.key, c.target, c.method, controls.eval_config(c, K, lam, (c.method,)),
                                         protocol, titles, emb)
    except service.ServiceError as e:
        st.error(str(e))
        return
    st.session_state["last_confusions"] = (_numbers_space(ctx), figure)
    st.plotly_chart(figure, key="confusions")
    st.caption("Rows: the true class; columns: the predicted one. Each cell shows a count of images; its colour is "
               "that count's share of the row's class. Off the "
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
        # every file is made on the click (a callable), not on each page run
        c1.download_button("Projection (.npz)", lambda: service.projection_npz(fit, ctx.emb, ctx.request.model_label),
                           file_name=f"projection_{fit.method}_K{fit.K}_lam{fit.lam:g}.npz", key="dl_npz")
        c2.download_button("Accuracy table (.csv)", lambda: service.accuracy_csv(table), file_name="accuracy.csv",
                           key="dl_csv")
        config = controls.eval_config(ctx.choice, fit.K, fit.lam, (ctx.choice.method, *ctx.choice.baselines))
        c3.download_button("Embeddings table (.parquet)", lambda: embeddings_parquet(ctx.emb, fit.target, config),
                           file_name=f"embeddings_{fit.target}.parquet", mime="application/vnd.apache.parquet",
                           key="dl_parquet", help="One row per image: path, domain, class, split, the maps' "
                           "coordinates (ICM's for the invariant map), each method's predictions and the vectors; "
                           "columns: docs/EXPORT.md")
        st.download_button("Report (one .html file)", _report_maker(ctx, fit), file_name=f"report_{fit.target}.html",
                           mime="text/html", key="dl_report",
                           help="One self-contained file to hand out (opens offline): the world, both maps, the "
                           "confusions, the interventions, the projection, the model to deploy on every target "
                           "and the provenance, at these settings (docs/REPORT.md). Takes a few seconds.")
        # built on every rerun the chart's export cost as much as the chart above
        figs = {"accuracy": lambda: figures.accuracy_bars(table, ctx.choice.target,
                                                          focus=(evaluation.FULL_SPACE, ctx.choice.method)),
                **{name: (lambda fig=fig: fig) for name, fig in layouts.items()}}
        cols = st.columns(len(figs))
        for col, (name, fig) in zip(cols, figs.items()):
            col.download_button(f"{name} (.html)", lambda fig=fig: figures.figure_html(fig()),
                                file_name=f"{name}.html", mime="text/html", key=f"dl_html_{name}")
        if service.png_available():
            for col, (name, fig) in zip(cols, figs.items()):
                col.download_button(f"{name} (.png)", lambda fig=fig: service.figure_png(fig()) or b"",
                                    file_name=f"{name}.png", mime="image/png", key=f"dl_png_{name}")
        else:
            st.caption("PNG export needs kaleido and a browser for it; not installed here, so only the "
                       "interactive HTML is offered (it opens offline, plotly.js is inlined).")


def _report_maker(ctx: Context, fit: service.Fit):
    """Makes the one-file report (clip_icm.report) at the page's settings when the button asks for it:
    the rule's K and lam when a rule chose them, the sliders' otherwise; its layouts and results come
    from the page's store. The settings are read now, in the page's run; the file is built on a click."""
    c = ctx.choice
    config = controls.eval_config(c, fit.K, fit.lam, c.baselines)
    settings = report.Settings(method=c.method, scoring=None if ctx.selection is None else c.selection,
                               select_for=c.protocol, model=ctx.request.model_label,
                               interventions=service.intervention_config(ctx.request.interventions),
                               max_points=st.session_state.get("ctl_map_points", service.MAP_POINTS),
                               choice_mode=c.choice_mode)
    store, request, emb = cached.store(), ctx.request, ctx.emb
    # its maps coloured by the shortcut where the world knows it, as the Story's
    return lambda: report.build(emb, c.target, config, settings, store=store,
                                shortcut=service.true_factor(request, emb)).html


def embeddings_parquet(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig) -> bytes:
    """The export table (service.embedding_table), made on the click: with the maps' coordinates when
    the maps draw every row (their layouts are in the store then), else without (UMAP of every row)."""
    coordinates = len(emb.labels) <= service.MAP_POINTS
    table = service.embedding_table(emb, target, config, coordinates=coordinates, store=cached.store())
    return service.table_bytes(table, "parquet")
