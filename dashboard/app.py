"""CLIP-ICM Explorer: `streamlit run dashboard/app.py` (opens on the bundled demo, offline)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# The fits are small LAPACK calls; OpenBLAS's threads make them up to ~100x slower here (a 128 x 128
# eigh: 0.5 s vs 6 ms, bench/RESULTS.md). The variable reaches BLAS builds loaded from now on
# (scipy's own); one_blas_thread below reaches those already loaded (numpy's).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# `streamlit run` puts dashboard/ on the path, not the repository root.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from dashboard import FAVICON, draw_the_demo_early, one_blas_thread, url  # noqa: E402
from dashboard.screens import registry  # noqa: E402


def keep_settings() -> None:
    """Streamlit forgets a widget's value on a page that does not draw it; re-storing the
    values as plain session state keeps the sidebar settings across pages."""
    for key in [k for k in st.session_state if str(k).startswith("ctl_")]:
        st.session_state[key] = st.session_state[key]


def main() -> None:
    one_blas_thread()
    # The favicon is a file this server serves (/media/...): a :material/...: one is fetched from
    # fonts.gstatic.com, and then also the pages' icons (the sidebar's come from the font Streamlit
    # bundles); an emoji one made Streamlit compile its emoji pattern, 0.3-0.4 s of a new process's first page.
    st.set_page_config(page_title="CLIP-ICM Explorer", page_icon=FAVICON, layout="wide")
    keep_settings()
    url.read_settings_once()
    if st.session_state.get("ctl_source", "demo") == "demo":  # the sidebar's default source
        draw_the_demo_early()
    # "/" opens the Story; "/?page=explorer" (or "/explorer") another page: a bookmark of any view
    navigation = st.navigation(list(registry(st.query_params.get("page", "story")).values()))
    navigation.run()


main()
