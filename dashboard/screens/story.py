"""The Story: eight steps from "CLIP fails under a shift" to "here the projection helps, there it
does not", each one screen with a picture first and two or three sentences computed from the live
data and the sidebar's settings, an expander with the maths and, where a step has one, a control
to try. The step lives in the address (``?step=3`` or ``?step=failure``), so every step is a link.

Adding a step is one function here and one line in texts.STORY_STEPS."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import streamlit as st

from clip_icm import choice, defaults, evaluation, figures, methods, service
from dashboard import cached, controls, texts
from dashboard.screens import registry
from dashboard.screens.common import (Context, choice_config, choice_status, every_target_choice_job, fit_key, fitted,
                                    invariant_label, layout_failure, layout_status, map_figure, settings_context,
                                    target_summary)

STEP_KEY = "story_step"  # the index shown, 0-based; the address carries it 1-based


def story_page() -> None:
    st.title(texts.STORY_TITLE)
    st.caption(texts.STORY_INTRO)
    ctx = settings_context()
    if ctx is None:
        return
    step = _current_step()
    every_target_choice_job(ctx)  # steps 7 and 8 read it: started while the reader is on the first ones
    _step_indicator(step)
    slug, _, heading = texts.STORY_STEPS[step]
    st.subheader(heading)
    STEPS[slug](ctx)
    _next_and_back(step)


# ---------------------------------------------------------------- the step: address, indicator, buttons

def step_from_address(value: str | None) -> int:
    """``?step=`` as an index: a number from 1, or a step's slug; anything else is the first step."""
    slugs = [slug for slug, _, _ in texts.STORY_STEPS]
    if value in slugs:
        return slugs.index(value)
    try:
        return min(max(int(value) - 1, 0), len(slugs) - 1)
    except (TypeError, ValueError):
        return 0


def _current_step() -> int:
    """The address decides on a session's first run (a bookmark); the buttons and the indicator after."""
    if STEP_KEY not in st.session_state:
        st.session_state[STEP_KEY] = step_from_address(st.query_params.get("step"))
    step = int(st.session_state[STEP_KEY])
    st.query_params["step"] = str(step + 1)
    return step


def _go(step: int) -> None:
    st.session_state[STEP_KEY] = step


def _step_indicator(step: int) -> None:
    """Where the reader is: a progress bar and every step by name, each a button to it."""
    n = len(texts.STORY_STEPS)
    st.progress((step + 1) / n, text=f"Step {step + 1} of {n}")
    for i, (column, (_, short, _)) in enumerate(zip(st.columns(n), texts.STORY_STEPS)):
        column.button(f"{i + 1}. {short}", key=f"story_jump_{i}", on_click=_go, args=(i,),
                      type="primary" if i == step else "tertiary", width="stretch")


def _next_and_back(step: int) -> None:
    st.divider()
    back, _, forward = st.columns([1, 4, 1])
    back.button("← Back", key="story_back", on_click=_go, args=(step - 1,), disabled=step == 0,
                width="stretch")
    if step < len(texts.STORY_STEPS) - 1:
        forward.button("Next →", key="story_next", on_click=_go, args=(step + 1,), width="stretch")
    else:
        forward.page_link(registry()["explorer"], label="Open the Explorer →")


def _maths(*names: str) -> None:
    with st.expander("The maths"):
        for name in names:
            st.latex(texts.MATHS[name])


# ---------------------------------------------------------------- what several steps read

def _accuracy(ctx: Context) -> pd.DataFrame | None:
    """CLIP's and the sidebar method's accuracy per domain (both heads) at the sidebar's K and lam."""
    c = ctx.choice
    config = service.with_unused_fixed(c.method, controls.eval_config(c, ctx.K, ctx.lam, (c.method,)))
    try:
        return cached.evaluate(ctx.emb.key, c.target, config, ctx.emb)
    except service.ServiceError as e:
        st.error(str(e))
        return None


def _accuracy_of(table: pd.DataFrame, method: str, protocol: str, role: str) -> float:
    rows = table[(table.method == method) & (table.protocol == protocol) & (table.role == role)]
    if rows.empty:
        return float("nan")
    return float(np.average(rows.accuracy, weights=rows.n)) if "n" in rows else float(rows.accuracy.mean())


def _shortcut(ctx: Context) -> np.ndarray | None:
    """Each row's true colour where the world knows it (the demo's shortcut), else None."""
    return cached.true_factor(ctx.request.key, "colour", ctx.request, ctx.emb)


def _usual_share(values: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> tuple[float, float]:
    """How often an image has its class's most common source value (its usual colour): in the
    source domains, and in the target (where a broken shortcut makes it rare)."""
    usual = {}
    for label in np.unique(labels[sources]):
        kinds, counts = np.unique(values[sources & (labels == label)], return_counts=True)
        usual[label] = kinds[np.argmax(counts)]
    has_usual = np.array([usual.get(label) == value for label, value in zip(labels, values)])
    return float(has_usual[sources].mean()), float(has_usual[~sources].mean()) if (~sources).any() else float("nan")


def _map_pair(ctx: Context, job: service.LayoutJob, predicted: np.ndarray, title: str, key: str) -> None:
    """One space's layout twice, coloured by class and by the shortcut (by domain where none is
    known), from the background worker: a pending layout is a placeholder and a polling status."""
    ids = cached.plot_ids(ctx.emb.key, service.MAP_POINTS, ctx.emb)
    note = service.sample_note(len(ids), len(ctx.emb.labels))
    points = service.point_table(ctx.emb, ids, ctx.choice.target, predicted)
    factor = _shortcut(ctx)
    second = "domain"
    if factor is not None:
        points[figures.SHORTCUT_COLUMN] = factor[ids]
        second = figures.SHORTCUT_COLUMN
    failure = layout_failure(job)
    if failure is not None:
        st.error(failure)
        return
    pending = job.pending  # read before the maps (explorer._umap_section says why)
    left, right = st.columns(2)
    for column, by in ((left, "class"), (right, second)):
        fig = map_figure(job, points, by, f"{title}, coloured by {by}{note}", figures.shortcut_colours() if by != "class" else None,
                         height=420, dragmode="pan")
        if fig is None:
            column.info(f"The {job.label} map is laying out in the background; it appears here when ready.")
        else:
            column.plotly_chart(fig, key=f"{key}_{by}")
    if pending:
        layout_status([job])


# ---------------------------------------------------------------- the steps

def world_step(ctx: Context) -> None:
    emb, c = ctx.emb, ctx.choice
    domains = [*c.sources, c.target]
    examples = cached.example_rows(emb.key, tuple(domains), emb)
    images = {cell: service.thumbnail(emb, row, 72) for cell, row in examples.items()}
    if any(image is not None for image in images.values()):
        st.plotly_chart(figures.image_grid(images, list(emb.class_names), domains, c.target,
                                           "One image of each class in each domain (a seeded sample)"),
                        key="story_world")
    else:
        st.info("These data have no images to show (the synthetic world is sampled vectors).")
    info = service.describe(emb)
    text = (f"{info['images']:,} images of {info['classes']} classes ({', '.join(emb.class_names)}) in "
            f"{info['domains']} domains. **{c.target}** is held out: nothing is fitted or chosen on it, as with "
            "a domain met only after deployment.")
    factor = _shortcut(ctx)
    if factor is not None:
        in_sources, in_target = _usual_share(factor, emb.labels, emb.domains != c.target)
        text += (f" In the source domains {texts.share(in_sources)} of a class's images have that class's usual "
                 f"colour, so colour predicts the class: a shortcut. In {c.target} only {texts.share(in_target)} do.")
    st.markdown(text)
    _maths("scm", "shift")


def clip_map_step(ctx: Context) -> None:
    emb = ctx.emb
    ids = cached.plot_ids(emb.key, service.MAP_POINTS, emb)
    job = service.full_layout_job(emb, ids, store=cached.store())
    predicted = cached.predictions(emb.key, "", evaluation.FULL_SPACE, emb, None)
    _map_pair(ctx, job, predicted, "CLIP's space", "story_full")
    agreement = cached.neighbour_agreement(emb.key, "", emb, None, _shortcut(ctx))
    text = (f"Each dot is an image, placed so that images CLIP finds similar lie close (UMAP). Of each image's 10 "
            f"nearest neighbours in CLIP's space, {texts.share(agreement['class'])} share its class and "
            f"{texts.share(agreement['domain'])} its domain")
    if "colour" in agreement:
        text += f", {texts.share(agreement['colour'])} its colour"
    text += (". CLIP's space holds both what the object is and how it looks; a classifier trained on the sources "
             "may use either.")
    st.markdown(text)
    _maths("scm")


def failure_step(ctx: Context) -> None:
    c, emb = ctx.choice, ctx.emb
    try:
        matrices = cached.target_confusions(emb.key, c.target, c.method,
                                            controls.eval_config(c, ctx.K, ctx.lam, (c.method,)),
                                            evaluation.LINEAR_PROBE, emb)
    except service.ServiceError as e:
        st.error(str(e))
        return
    clip = {evaluation.FULL_SPACE: matrices[evaluation.FULL_SPACE]}
    st.plotly_chart(figures.confusion_heatmaps(clip, emb.class_names, {
        evaluation.FULL_SPACE: f"CLIP probe on {c.target}: counts (colour: share of the class)"}), key="story_confusion")
    table = _accuracy(ctx)
    if table is None:
        return
    source = _accuracy_of(table, evaluation.FULL_SPACE, evaluation.LINEAR_PROBE, "source")
    target = _accuracy_of(table, evaluation.FULL_SPACE, evaluation.LINEAR_PROBE, "target")
    counts = matrices[evaluation.FULL_SPACE].copy()
    np.fill_diagonal(counts, 0)
    worst = np.unravel_index(np.argmax(counts), counts.shape)
    text = (f"A linear probe on CLIP's embedding, trained on the source domains, gets {texts.share(source)} of their "
            f"validation images right and {texts.share(target)} of {c.target}'s.")
    if counts[worst] > 0:
        text += (f" Off the diagonal is where a shortcut sends a class: most often a **{emb.class_names[worst[0]]}** "
                 f"is taken for a **{emb.class_names[worst[1]]}** ({int(counts[worst])} images).")
    st.markdown(text)
    _maths("probe")


def interventions_step(ctx: Context) -> None:
    emb = ctx.emb
    names = list(ctx.choice.pair_sets) or [p.name for p in emb.pairs]
    if ctx.request.source == "synthetic" or not names:
        st.info("The synthetic world has no images to show: its pairs are sampled vectors, the same point with "
                "its variant factors re-drawn.")
    else:
        try:
            examples = cached.pair_examples(emb.key, ctx.request.key, names[0], ctx.request, emb)
        except service.ServiceError as e:
            st.error(str(e))
            examples = []
        columns = st.columns(max(len(examples), 1) * 2)
        for i, example in enumerate(examples):
            if isinstance(example.before, str):
                columns[2 * i].markdown(f"x: `{example.before}`")
                columns[2 * i + 1].markdown(f"x_do: `{example.after}`")
            else:
                columns[2 * i].image(example.before, caption=f"x: {example.caption}", width=112)
                columns[2 * i + 1].image(example.after, caption="x_do", width=112)
    sizes = {p.name: len(p.z) for p in emb.pairs if p.name in names}
    listed = ", ".join(f"{name} ({n:,} pairs)" for name, n in sizes.items())
    st.markdown(f"An intervention changes how an image looks and keeps what it shows: x next to x_do. The fit reads "
                f"{listed or 'no pairs'}, from source images only. Their differences Δ = z − z_do point along "
                "the directions of CLIP's space that the changed factors move.")
    _maths("do")


def projection_step(ctx: Context) -> None:
    fit = fitted(ctx, ctx.K, ctx.lam)
    if fit is None:
        return
    spectrum = methods.spec(fit.method).spectrum
    if fit.eigenvalues is not None and spectrum is not None:
        st.plotly_chart(figures.spectrum_figure(fit.eigenvalues, ctx.K, spectrum), key="story_spectrum")
    kept = fit.invariance_ratio / fit.full_ratio if fit.full_ratio else float("nan")
    scale = " (relative to the pairs' energy)" if ctx.choice.lam_mode == "relative" else ""
    st.markdown(f"M weighs each direction of CLIP's space: its energy in the images minus λ = {ctx.lam:g}{scale} times "
                f"how much the interventions move it. The projection keeps the K = {ctx.K} directions on top (blue) "
                f"and drops the rest. On held-out pairs the kept directions move {texts.share(kept)} as much as the "
                f"whole space does (invariance ratio {fit.invariance_ratio:.3f} against {fit.full_ratio:.3f}).")
    _lam_try_it(ctx)
    _maths("M", "eig", "ratio")


def _lam_try_it(ctx: Context) -> None:
    """λ for the whole app (the sidebar's slider follows; the selection rule is then off)."""
    if not methods.spec(ctx.choice.method).tunes_lam:
        return
    st.session_state["story_lam"] = ctx.lam
    st.select_slider("Try it: λ (0 keeps the plain PCA directions; larger drops more of what the interventions "
                     "move)", controls.LAMS, key="story_lam", on_change=_lam_by_hand)


def _lam_by_hand() -> None:
    st.session_state["ctl_lam"] = st.session_state["story_lam"]
    st.session_state["ctl_selection"] = "off"


def invariant_map_step(ctx: Context) -> None:
    emb, c = ctx.emb, ctx.choice
    fit = fitted(ctx, ctx.K, ctx.lam)
    if fit is None:
        return
    ids = cached.plot_ids(emb.key, service.MAP_POINTS, emb)
    key = fit_key(ctx, ctx.K, ctx.lam)
    job = service.invariant_layout_job(emb, ids, key, lambda: fit, invariant_label(c.method, ctx.K, ctx.lam),
                                       store=cached.store())
    predicted = cached.predictions(emb.key, key, fit.method, emb, fit)
    _map_pair(ctx, job, predicted, f"Invariant space (K = {ctx.K}, λ = {ctx.lam:g})", "story_invariant")
    before = cached.neighbour_agreement(emb.key, "", emb, None, _shortcut(ctx))
    after = cached.neighbour_agreement(emb.key, key, emb, fit, _shortcut(ctx))
    moves = [f"class {texts.share(before['class'])} → {texts.share(after['class'])}",
             f"domain {texts.share(before['domain'])} → {texts.share(after['domain'])}"]
    if "colour" in after:
        moves.append(f"colour {texts.share(before['colour'])} → {texts.share(after['colour'])}")
    table = _accuracy(ctx)
    probe = ""
    if table is not None:
        ours = _accuracy_of(table, c.method, evaluation.LINEAR_PROBE, "target")
        clip = _accuracy_of(table, evaluation.FULL_SPACE, evaluation.LINEAR_PROBE, "target")
        probe = (f" A probe trained on the sources in this space gets {texts.share(ours)} of {c.target}'s images "
                 f"right, against {texts.share(clip)} in CLIP's space.")
    st.markdown(f"The same images in the kept directions only. Shares of the 10 nearest neighbours with the same "
                f"value, CLIP's space → the invariant one: {'; '.join(moves)}. "
                + _what_moved(before, after) + probe)
    _lam_try_it(ctx)
    _maths("predict")


def _what_moved(before: dict, after: dict) -> str:
    """A plain reading of the neighbour shares, true for these numbers (never a fixed claim)."""
    nuisance = "colour" if "colour" in after else "domain"
    dropped = before[nuisance] - after[nuisance]
    if dropped > 0.02:
        return (f"Images now group less by {nuisance}: the projection removed part of it. Where islands per "
                "domain stay, the domain's style is still there: no pair changed it.")
    return (f"Images group by {nuisance} about as much as before: at this K and λ the projection removed little of "
            "it (try a larger λ, or see the Explorer).")


def choice_step(ctx: Context) -> None:
    rows = _every_target(ctx)
    if rows is None:
        return
    candidates = [candidate.label for candidate in choice.candidates()]
    st.plotly_chart(figures.targets_overview(rows, candidates), key="story_targets")
    clip_zero_shot = candidates[0]
    chosen = rows.chosen.value_counts()
    icm = [label for label in candidates if label.startswith("ICM")]
    wins = rows[rows.chosen.isin(icm)].target.tolist()
    text = (f"For each domain held out in turn, the model to deploy is chosen from {_reads(ctx)} (the worst of "
            f"validation, intervened validation and a held-out source domain, the simplest model unless another "
            f"beats it by more than the noise). **{clip_zero_shot}** is chosen on {int(chosen.get(clip_zero_shot, 0))} "
            f"of {len(rows)} targets: with plain class-name prompts it learns nothing from the sources, so it has no "
            "shortcut to lose, and it is usually the model to deploy.")
    if wins:
        text += f" ICM is chosen on {', '.join(wins)}."
    gains = rows[icm[-1]] - rows[candidates[1]] if len(icm) and len(candidates) > 1 else pd.Series(dtype=float)
    if len(gains) and gains.max() > 0.05:
        best = rows.target[gains.idxmax()]
        text += (f" Against CLIP's probe the projection helps most on {best}: {icm[-1]} "
                 f"{texts.share(rows[icm[-1]][gains.idxmax()])} vs {texts.share(rows[candidates[1]][gains.idxmax()])}.")
    st.markdown(text + " The accuracies use the target's labels, afterwards, to show the result; they chose nothing.")
    _maths("choice")


def _reads(ctx: Context) -> str:
    """What the model choice reads, in words (never a target label)."""
    return controls.CHOICE_MODE_LABELS[ctx.choice.choice_mode]


def _every_target(ctx: Context) -> pd.DataFrame | None:
    """choice.target_summary of every domain held out in turn (the Explorer's overview, its cached calls);
    None (after a status that polls) while the background worker is still making it."""
    config = choice_config(ctx)
    if config is None:
        st.info("The model choice runs under this project's protocol on the domain-shift task (see the sidebar).")
        return None
    job = every_target_choice_job(ctx)
    if job is not None and job.pending:
        choice_status(job, _reads(ctx))
        return None
    emb, rows = ctx.every_domain, []
    try:
        with st.spinner(f"Choosing the model for every target ({_reads(ctx)})…"):
            for target in emb.domain_names:
                rows.append(target_summary(ctx, target, config))
    except service.ServiceError as e:
        st.error(str(e))
        return None
    return pd.DataFrame(rows)


def limits_step(ctx: Context) -> None:
    rows = _every_target(ctx)
    if rows is None:
        return
    candidates = [candidate.label for candidate in choice.candidates()]
    best_clip = rows[candidates[:2]].max(axis=1)
    best_icm = rows[[label for label in candidates if label.startswith("ICM")]].max(axis=1)
    gap = pd.DataFrame({"target": rows.target, "best of CLIP": best_clip, "best of ICM": best_icm,
                        "ICM − CLIP": best_icm - best_clip})
    st.dataframe(gap.style.format("{:.1%}", subset=["best of CLIP", "best of ICM"]).format("{:+.1%}",
                                                                                          subset=["ICM − CLIP"]),
                 hide_index=True)
    flat = gap[gap["ICM − CLIP"] <= 0.01].target.tolist()
    probe_gain = rows[candidates[-1]] - rows[candidates[1]]  # ICM probe against CLIP probe
    helped = [f"{target} (+{gain * 100:.0f} points, where CLIP zero-shot gets {texts.share(zero_shot)})"
              for target, gain, zero_shot in zip(rows.target, probe_gain, rows[candidates[0]]) if gain > 0.05]
    st.markdown(
        (f"On {', '.join(flat)} the projection is no better than CLIP's best head. " if flat else
         "On every target the projection is above CLIP's best head here. ")
        + (f"Its probe beats CLIP's probe on {', '.join(helped)}. " if helped else "")
        + "It can only remove what the interventions change: a shortcut they do not touch stays, and where CLIP "
        "zero-shot already reads the object (no shortcut learned) there is nothing to remove. Too large a λ or "
        "too small a K also drops what tells the classes apart. Below: a synthetic world where the shift is yours "
        "to set.")
    _shift_try_it()
    _maths("limits", "M")


def _shift_try_it() -> None:
    """The playground's world, one slider: how far the shortcut is broken at test time."""
    from clip_icm.scm import SCMConfig

    top = st.select_slider("Try it: the shift strength (1 = the shortcut points to a wrong class every time)",
                           [0.25, 0.5, 0.75, 1.0], value=1.0, key="story_shift")
    shifts = tuple(float(x) for x in np.linspace(0.0, top, 5))
    try:
        table = cached.playground(SCMConfig(), shifts, defaults.PLAYGROUND_LAM, None)
    except service.ServiceError as e:
        st.error(str(e))
        return
    shown = table.assign(predictor=table["method"].map(service.method_label))
    st.plotly_chart(figures.playground_accuracy(shown, "shift", "ood_accuracy", "predictor",
                                                "Synthetic world: accuracy as the shift grows"), key="story_shift_chart")
    at_top = shown[shown["shift"] == shown["shift"].max()].set_index("predictor")["ood_accuracy"]
    st.markdown(f"At a shift of {top:g}, the full-space predictor gets {texts.share(at_top.get('CLIP', np.nan))} and "
                f"ICM {texts.share(at_top.get('ICM', np.nan))}: here the interventions change exactly the shortcut, "
                "which is when the projection pays.")


STEPS: dict[str, Callable[[Context], None]] = {
    "world": world_step, "clip-map": clip_map_step, "failure": failure_step, "interventions": interventions_step,
    "projection": projection_step, "invariant-map": invariant_map_step, "choice": choice_step,
    "limits": limits_step,
}
