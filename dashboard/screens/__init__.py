"""The dashboard's pages, one module each: widgets in, service calls, figures out. What several
pages share lives in common.py. Adding a page is a module here and a line in :func:`registry`.

Not named ``pages``: a ``pages/`` folder beside app.py is Streamlit's older multipage layout, which
AppTest still reads (a second run of a test then finds no page and draws nothing)."""
from __future__ import annotations


DEFAULT = "story"


def registry(default: str = DEFAULT) -> dict:
    """Every page by name, in the sidebar's order. ``default`` is the page at the address "/" (the
    Story unless ``?page=`` names another). The others have their own paths (/explorer...); the
    url_path also names the page for links (st.page_link), whichever is the default."""
    import streamlit as st

    from dashboard.screens import about, diagnostics, explorer, playground, story

    made = {
        "story": (story.story_page, "Story", ":material/auto_stories:"),
        "explorer": (explorer.explorer_page, "Explorer", ":material/scatter_plot:"),
        "diagnostics": (diagnostics.diagnostics_page, "Diagnostics", ":material/monitoring:"),
        "playground": (playground.playground_page, "Causal playground", ":material/science:"),
        "about": (about.about_page, "About the method", ":material/menu_book:"),
    }
    default = default if default in made else DEFAULT
    return {name: st.Page(page, title=title, icon=icon, url_path=name, default=name == default)
            for name, (page, title, icon) in made.items()}
