"""Diagnostics: the invariance ratios, the spectrum of M, the model choice's scores, the K x lam sweep."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from clip_icm import choice, evaluation, figures, methods, service
from dashboard import cached, controls, texts
from dashboard.screens.common import Context, choice_config, fitted, settings_context


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
    config = choice_config(ctx)
    if config is None:
        return
    try:
        _, made = cached.evaluate_and_choose(ctx.emb.key, ctx.choice.target, config, ctx.emb, ctx.choice.choice_mode)
    except service.ServiceError as e:
        st.caption(f"No model choice: {e}")
        return
    st.subheader("Which model to deploy")
    st.plotly_chart(figures.choice_scores(made.table, ctx.choice.target), key="choice_scores")
    checks = made.table.set_index("candidate")[[col for col in made.table.columns if col.endswith(" accuracy")]]
    st.dataframe(checks.style.format("{:.1%}"))
    st.caption(f"{made.why} Each check's accuracy is averaged over the source domains. The score: "
               f"{choice.rule_text(made.mode)}.")


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


