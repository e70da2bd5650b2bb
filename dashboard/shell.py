"""The page's frame, run by app.py on every page run: page config, the sidebar's settings kept across
pages, the address's settings, the navigation between the pages (dashboard/screens)."""
from __future__ import annotations

import streamlit as st

from dashboard import FAVICON, draw_the_demo_early, one_blas_thread, url
from dashboard.screens import registry


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
