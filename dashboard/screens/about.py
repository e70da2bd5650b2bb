"""About the method."""
from __future__ import annotations

import streamlit as st

from dashboard import texts


def about_page() -> None:
    st.title("About the method")
    st.markdown(texts.ABOUT)

