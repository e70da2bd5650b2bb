"""The state a person may want to share lives in the address (TensorBoard Projector's bookmarks):
the page (its path: "/" is the Story, "/explorer"...; or ``?page=explorer``, which puts that page
at "/"), the Story's step, the data set, the target, K and λ (when set
by hand), the method and its baselines. A bookmarked address reopens the same view:

    /?step=3&source=demo&target=cartoon
    /explorer?source=demo&target=sketch&method=icm&baselines=pca,augment&K=16&lam=30

The address is read once, on a session's first run (a bookmark opens a new session); from then on
the page writes what it shows back into it.
"""
from __future__ import annotations

import streamlit as st

from dashboard import controls

# address parameter -> the sidebar widget's key (controls.py)
TEXT_PARAMS = {"source": "ctl_source", "root": "ctl_root", "dataset": "ctl_dataset", "target": "ctl_target",
               "method": "ctl_method"}
READ_FLAG = "url_read"


def read_settings_once() -> None:
    """Put the address's settings into the sidebar's state on a session's first run. A value that is
    no option (another data set's domain, a typo) is dropped by the widget's own check (controls._valid)."""
    if st.session_state.get(READ_FLAG):
        return
    st.session_state[READ_FLAG] = True
    address = st.query_params
    for name, key in TEXT_PARAMS.items():
        if address.get(name):
            st.session_state[key] = address[name]
    if "baselines" in address:
        st.session_state["ctl_baselines"] = [b for b in address["baselines"].split(",") if b]
    K, lam = _number(address.get("K"), int), _number(address.get("lam"), float)
    if K is not None or lam is not None:  # a hand setting: the selection rule would overwrite it
        st.session_state["ctl_selection"] = "off"
        if K is not None:
            st.session_state["ctl_K"] = max(K, 1)
        if lam is not None and lam in controls.LAMS:
            st.session_state["ctl_lam"] = lam


def _number(text: str | None, kind: type):
    try:
        return None if text is None else kind(text)
    except ValueError:
        return None


def write_settings(source: str, root: str, dataset: str | None, target: str, method: str,
                   baselines: tuple[str, ...], K: int, lam: float, by_hand: bool) -> None:
    """What the page shows, into the address. K and λ only when set by hand: a rule's choice is
    made again from the same data when the link is opened, and a bookmark should not turn it off."""
    wanted = {"source": source, "target": target, "method": method, "baselines": ",".join(baselines)}
    if source == "folder":
        wanted.update(root=root, dataset=dataset or "")
    if by_hand:
        wanted.update(K=str(K), lam=f"{lam:g}")
    for name in ("root", "dataset", "K", "lam"):
        if name not in wanted and name in st.query_params:
            del st.query_params[name]
    for name, value in wanted.items():
        if st.query_params.get(name) != value:
            st.query_params[name] = value
