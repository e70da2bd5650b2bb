"""Causal playground: a synthetic world where the truth is known."""
from __future__ import annotations

import numpy as np
import streamlit as st

from clip_icm import defaults, evaluation, figures, service
from dashboard import cached, texts


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
    shown = table.assign(predictor=[texts.PLAYGROUND_FULL_SPACE if method == evaluation.FULL_SPACE
                                    else service.method_label(method) for method in table["method"]])
    left, right = st.columns(2)
    left.plotly_chart(figures.playground_accuracy(shown, "shift", "ood_accuracy", "predictor",
                                                  "Accuracy on the shifted environment"), key="pg_acc")
    right.plotly_chart(figures.playground_recovery(shown.assign(method=shown["predictor"])), key="pg_rec")
    angles = table.drop_duplicates("method").set_index("method")["max_angle"]
    st.markdown(texts.playground_angles(angles.get("icm", np.nan), angles.get("icm_as_released", np.nan)))
    readable = shown.drop(columns="method")[list(texts.PLAYGROUND_COLUMNS)].rename(columns=texts.PLAYGROUND_COLUMNS)
    st.dataframe(readable, hide_index=True)

