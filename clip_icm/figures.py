"""Plotly figures for the dashboard and for export (pure functions: data in, figure out).

Point-level figures carry each point's global row id as its ``customdata`` so that a
box/lasso selection can be mapped back to images whatever trace a point sits in.
"""
from __future__ import annotations

import functools
import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import get_colorscale, qualitative
from plotly.subplots import make_subplots

from clip_icm import methods
from clip_icm.errors import InvalidInput

PALETTE = qualitative.D3 + qualitative.Pastel
ROLE_SYMBOLS = {"source": "circle", "target": "x"}
POINT_COLUMNS = ("id", "class", "domain", "role", "prediction", "correct")
HONEST_TITLE = "source validation (honest)"
PEEKING_TITLE = "target (peeking - for illustration only)"


def as_text(value: object) -> str:
    """``value`` as plotly text that shows as itself: plotly reads a pseudo-HTML in every label,
    legend, tick and hover (``<b>``, ``<br>``, ``<a href=...>`` would restyle or link), so a
    name from a folder or a user is escaped as HTML entities, which plotly shows literally."""
    return html.escape(str(value), quote=False)


class SharedFigure(go.Figure):
    """A figure that many page runs draw unchanged (the dashboard's caches hand one object to every
    session): its dict form, which plotly makes afresh for every ``st.plotly_chart`` by deep-copying every
    trace (10-15 ms a map at 1,280 points, on every rerun: bench/RESULTS.md), is made once and kept until
    the figure changes (plotly reports every change through its ``_send_*`` hooks). The dict is the
    figure's: whoever reads it must not change it (Streamlit and plotly.io only serialise it)."""

    _kept_dict: dict | None = None

    def to_dict(self) -> dict:
        if self._kept_dict is None:
            self._kept_dict = super().to_dict()
        return self._kept_dict

    def _forget_dict(self, *args, **kwargs) -> None:
        self._kept_dict = None

    _send_addTraces_msg = _send_animate_msg = _send_deleteTraces_msg = _send_moveTraces_msg = _forget_dict
    _send_relayout_msg = _send_restyle_msg = _send_update_msg = _forget_dict


def shared(fig: go.Figure) -> SharedFigure:
    """``fig`` itself as a SharedFigure, not a copy (plotly checks every trace of a copy again: 20-35 ms a
    figure, bench/RESULTS.md): whoever shares a figure hands it over."""
    if type(fig) is go.Figure:
        fig.__class__ = SharedFigure  # a subclass with no state of its own: the object stays as it is
    elif not isinstance(fig, SharedFigure):
        raise InvalidInput(f"only a plotly go.Figure can be shared, not a {type(fig).__name__}")
    return fig


def _unchecked(data: list[dict], layout: dict) -> go.Figure:
    """The figure of trace and layout dicts, which plotly does not check property by property: checking
    took a page run 68 ms for a map of 1,280 points, 50 ms for the accuracy chart and 35 ms for the
    confusions (bench/RESULTS.md), on every new setting. What the builders below make this way is checked
    in tests/test_figures.py: plotly's checked copy of it passes and serialises the same."""
    fig = go.Figure({"data": data, "layout": layout}, _validate=False)
    for part in (fig, fig.layout, *fig.data):  # a later change is checked (and reported) as in any figure
        part._validate = True
    return fig


def _check_columns(frame: pd.DataFrame, needed: tuple[str, ...], what: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InvalidInput(f"{what} needs columns {', '.join(missing)}; got {', '.join(map(str, frame.columns))}")


SHORTCUT_COLUMN = "colour (shortcut)"  # a points table's column of the ToyDomains world's true colour


@functools.cache
def shortcut_colours() -> dict[str, str]:
    """The ToyDomains colour factor (the demo's shortcut) drawn in its own colours, for ``scatter_layout``'s
    ``colours`` (a "red (source)" legend entry in blue misleads)."""
    from clip_icm.toydomains import COLOURS

    return {name: f"rgb{rgb}" for name, rgb in COLOURS.items()}


def scatter_layout(xy: np.ndarray, points: pd.DataFrame, colour_by: str = "class", title: str = "",
                   colours: dict[str, str] | None = None) -> go.Figure:
    """One 2-D layout: colour by ``class``, ``domain`` or another column of ``points`` (the Story's
    true shortcut factor), marker by source/target role. ``colours`` gives a group its own colour
    (the colour factor's "red" drawn red); the others take the palette's.

    ``points`` has one row per point of ``xy`` with columns id, class, domain, role,
    prediction, correct (see :data:`POINT_COLUMNS`).
    """
    _check_columns(points, POINT_COLUMNS, "scatter_layout")
    if colour_by not in points.columns or colour_by in ("id", "role", "correct"):
        raise InvalidInput(f"colour_by must be 'class', 'domain' or a factor column of the points, got {colour_by!r}")
    if len(xy) != len(points):
        raise InvalidInput(f"{len(xy)} layout rows for {len(points)} points")
    traces = []
    groups = list(dict.fromkeys(points[colour_by].tolist()))
    for g_index, group in enumerate(groups):
        for role, symbol in ROLE_SYMBOLS.items():
            mask = ((points[colour_by] == group) & (points["role"] == role)).to_numpy()
            if mask.any():
                colour = (colours or {}).get(str(group), PALETTE[g_index % len(PALETTE)])
                traces.append(_scatter_trace(xy[mask], points[mask], f"{as_text(group)} ({role})", colour, symbol,
                                             webgl=len(xy) > WEBGL_ABOVE, legendgroup=str(group)))
    return _unchecked(traces, dict(
        title=dict(text=as_text(title)),
        xaxis=dict(showticklabels=False),
        yaxis=dict(showticklabels=False),
        legend=dict(font=dict(size=10)),
        margin=dict(l=10, r=10, t=40, b=10),
        dragmode="lasso",
        height=460,
    ))


WEBGL_ABOVE = 5000  # points; SVG scatter slows down past a few thousand, WebGL draws tens of thousands


def _scatter_trace(xy: np.ndarray, pts: pd.DataFrame, name: str, colour: str, symbol: str, webgl: bool,
                   legendgroup: str) -> dict:
    # One hover string a point and its id as a number: every st.plotly_chart walks a map's string arrays
    # item by item to serialise them (five strings a point took 7-10 ms a map at 1,280 points, on every
    # page run), while a numeric array goes as one block. A legend click hides both roles of a group.
    verdicts = np.where(pts["correct"].to_numpy(dtype=bool), "correct", "wrong")
    hover = [f"class: {as_text(c)}<br>domain: {as_text(d)}<br>prediction: {as_text(p)} ({verdict})"
             for c, d, p, verdict in zip(pts["class"], pts["domain"], pts["prediction"], verdicts)]
    return dict(
        type="scattergl" if webgl else "scatter", x=np.ascontiguousarray(xy[:, 0], dtype=float),
        y=np.ascontiguousarray(xy[:, 1], dtype=float), mode="markers", name=name, legendgroup=legendgroup,
        customdata=pts["id"].to_numpy(), hovertext=hover,
        marker=dict(color=colour, symbol=symbol, size=7 if symbol == "x" else 6, opacity=0.8),
        hovertemplate="%{hovertext}<extra>#%{customdata}</extra>",
    )


def _template_text(value: object) -> str:
    """:func:`as_text` for a hovertemplate's literal part, where ``%{`` would start a field."""
    return as_text(value).replace("%{", "%&#123;")


def selected_ids(selection: object) -> list[int]:
    """Global ids of the points in a ``st.plotly_chart(on_select=...)`` selection (or a dict like it)."""
    if not selection:
        return []
    points = selection.get("selection", selection).get("points", []) if isinstance(selection, dict) else []
    ids = []
    for point in points:
        custom = point.get("customdata")
        if custom is not None:
            ids.append(int(custom[0] if isinstance(custom, (list, tuple)) else custom))
    return sorted(set(ids))


def with_highlight(fig: go.Figure, ids: list[int]) -> go.Figure:
    """A copy of a map with the points of global ``ids`` shown and the others faded: a selection on
    one map drawn on the other (linked brushing; the ids are the points' ``customdata``)."""
    wanted, out = set(int(i) for i in ids), go.Figure(fig)
    for trace in out.data:
        trace.selectedpoints = [i for i, point_id in enumerate(trace.customdata) if int(point_id) in wanted]
        trace.unselected = dict(marker=dict(opacity=0.12))
    return out


STALE_OPACITY = 0.35


def as_stale(fig: go.Figure, title: str) -> go.Figure:
    """A copy of a map faded to STALE_OPACITY and titled ``title``: the same figure as
    ``scatter_layout(..., title)`` faded, without building its traces again (at 20,000 points that took
    0.3-0.6 s of a slider move's rerun; the copy a tenth of it). The copy is made from the map's dict form,
    whose every trace passed plotly's checks already, without checking them again: a checked copy took
    23 ms of a K change's rerun at 1,280 points, this one 3 ms."""
    kept = fig.to_dict()  # not changed below: what changes is copied
    data = [{**trace, "opacity": STALE_OPACITY} for trace in kept["data"]]
    layout = {**kept["layout"], "title": {**kept["layout"].get("title", {}), "text": as_text(title)}}
    return _unchecked(data, layout)


def _colour(method: str, i: int) -> str:
    """The method's colour (MethodSpec.colour); a trace that is no method takes the palette's i-th."""
    try:
        return methods.spec(method).colour
    except KeyError:
        return PALETTE[i % len(PALETTE)]


BASELINE_OPACITY = 0.35


def accuracy_bars(table: pd.DataFrame, target: str, title: str = "Accuracy per domain",
                  focus: tuple[str, ...] | None = None) -> go.Figure:
    """Grouped bars: x = domain (target marked); one colour per method, zero-shot hatched. ``focus``: the
    methods the chart is about (CLIP and the method, say), drawn solid; the others (baselines) pale, so that
    a control's bar (PCA zero-shot at 53 %) does not catch the eye first. None: every method solid."""
    _check_columns(table, ("domain", "method", "protocol", "label", "accuracy"), "accuracy_bars")
    domains = list(dict.fromkeys(table["domain"].tolist()))
    ticks = {d: (f"<b>{as_text(d)} (target)</b>" if d == target else as_text(d)) for d in domains}
    traces = []
    for i, ((method, protocol, label), rows) in enumerate(table.groupby(["method", "protocol", "label"], sort=False)):
        rows = rows.set_index("domain").reindex(domains)
        traces.append(dict(
            type="bar", x=[ticks[d] for d in domains], y=rows["accuracy"].to_numpy(dtype=float), name=as_text(label),
            marker=dict(color=_colour(method, i),
                        pattern=dict(shape="/" if protocol == "zero-shot" else "", fillmode="overlay",
                                     fgcolor="white", fgopacity=0.6)),
            opacity=1.0 if focus is None or method in focus else BASELINE_OPACITY,
            hovertemplate=f"{_template_text(label)}<br>%{{x}}: %{{y:.1%}}<extra></extra>",
        ))
    shapes = []
    if target in ticks:  # the target's column on a gold band
        at = domains.index(target)
        shapes.append(dict(type="rect", x0=at - 0.5, x1=at + 0.5, xref="x", y0=0, y1=1, yref="y domain",
                           fillcolor="gold", opacity=0.15, line=dict(width=0), layer="below"))
    return _unchecked(traces, dict(
        barmode="group", title=dict(text=as_text(title)), yaxis=dict(title=dict(text="accuracy"), range=[0, 1],
                                                                     tickformat=".0%"),
        legend=dict(orientation="h", y=-0.2), margin=dict(l=10, r=10, t=40, b=10), height=420, shapes=shapes))


def choice_scores(table: pd.DataFrame, target: str) -> go.Figure:
    """Each model-choice candidate's score (no target label) with its bootstrap standard error (clip_icm.choice);
    the chosen one solid, the others pale."""
    _check_columns(table, ("candidate", "method", "score", "se", "chosen"), "model choice table")
    fig = go.Figure(go.Bar(
        x=table["score"], y=table["candidate"], orientation="h",
        error_x=dict(type="data", array=table["se"], visible=True),
        marker=dict(color=[_colour(m, i) for i, m in enumerate(table["method"])],
                    opacity=[1.0 if chosen else 0.4 for chosen in table["chosen"]]),
        text=[f"{score:.1%} ± {se:.1%}" + ("  ← chosen" if chosen else "")
              for score, se, chosen in zip(table["score"], table["se"], table["chosen"])],
        textposition="outside", cliponaxis=False))
    low = max(0.0, float((table["score"] - 2 * table["se"]).min()) - 0.05)
    fig.update_layout(title=f"Score of each candidate for {as_text(target)}, no target label "
                            "(± one bootstrap standard error)",
                      xaxis=dict(range=[low, 1.08], tickformat=".0%", title="score (no target label)"),
                      yaxis=dict(autorange="reversed"), height=320, margin=dict(l=10, r=10, t=50, b=40))
    return fig


def spectrum_figure(eigenvalues: np.ndarray, k: int, selection: str = "top") -> go.Figure:
    """Eigenvalues of M (descending) with the kept ones highlighted and K marked."""
    ev = np.asarray(eigenvalues, dtype=float)
    kept = np.zeros(len(ev), dtype=bool)
    if selection == "as_released":
        kept[len(ev) - k:] = True  # eigh ascending, first K columns = the K smallest
    else:
        kept[:k] = True
    idx = np.arange(1, len(ev) + 1)
    fig = go.Figure([
        go.Scatter(x=idx[kept], y=ev[kept], mode="markers", name="kept", marker=dict(color="#1f77b4", size=5)),
        go.Scatter(x=idx[~kept], y=ev[~kept], mode="markers", name="dropped", marker=dict(color="#bbbbbb", size=5)),
    ])
    boundary = k + 0.5 if selection != "as_released" else len(ev) - k + 0.5
    fig.add_vline(x=boundary, line_dash="dash", annotation_text=f"K = {k}")
    fig.add_hline(y=0, line_color="#888888", line_width=1)
    fig.update_layout(title="Eigenvalues of M = Z'Z/n - lam Delta'Delta/n", xaxis_title="rank (largest first)",
                      yaxis_title="eigenvalue", margin=dict(l=10, r=10, t=40, b=10), height=360)
    return fig


def invariance_ratios(full: float, projected: float, label: str) -> go.Figure:
    """How far the interventions move the embeddings, ||Delta A|| / ||Z A||, in the full space (A = I)
    and in the projected one: lower is more invariant."""
    fig = go.Figure(go.Bar(x=["CLIP, full space", as_text(label)], y=[full, projected],
                           marker_color=["#7f7f7f", "#1f77b4"], text=[f"{v:.3f}" for v in (full, projected)],
                           textposition="outside", cliponaxis=False, hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title="Invariance ratio ||ΔA|| / ||ZA|| (lower: the interventions move it less)",
                      yaxis=dict(title="ratio", rangemode="tozero"), margin=dict(l=10, r=10, t=50, b=10), height=340)
    return fig


def sweep_heatmaps(sweep: pd.DataFrame, chosen: tuple[int, float] | None = None,
                   honest_column: str = "source_val_accuracy", honest_title: str = HONEST_TITLE) -> go.Figure:
    """Two K x lam heat maps side by side: an honest source-only score (by default source
    validation accuracy; or the score of the selection rule in use) vs peeking target accuracy."""
    _check_columns(sweep, ("K", "lam", honest_column, "target_accuracy"), "sweep_heatmaps")
    fig = make_subplots(rows=1, cols=2, subplot_titles=(honest_title, PEEKING_TITLE), horizontal_spacing=0.12)
    for col, (column, scale) in enumerate(((honest_column, "Blues"), ("target_accuracy", "Oranges")), 1):
        grid = sweep.pivot_table(index="K", columns="lam", values=column)
        fig.add_trace(go.Heatmap(
            z=grid.to_numpy(), x=[f"{v:g}" for v in grid.columns], y=[str(v) for v in grid.index],
            colorscale=scale, zmin=0, zmax=1, text=np.round(grid.to_numpy() * 100).astype(int),
            texttemplate="%{text}", colorbar=dict(x=0.44 if col == 1 else 1.0, len=0.9, tickformat=".0%"),
            hovertemplate="K=%{y}, lam=%{x}: %{z:.1%}<extra></extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="lam", type="category", row=1, col=col)
        fig.update_yaxes(title_text="K", type="category", row=1, col=col)
    if chosen is not None:
        for col in (1, 2):
            fig.add_trace(go.Scatter(x=[f"{chosen[1]:g}"], y=[str(chosen[0])], mode="markers", showlegend=False,
                                     marker=dict(symbol="star-open", size=22, color="red", line_width=2),
                                     hovertemplate="chosen on source data<extra></extra>"), row=1, col=col)
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def confusion_heatmaps(matrices: dict[str, np.ndarray], class_names: list[str], titles: dict[str, str]) -> go.Figure:
    """Side-by-side confusion matrices (rows: true class, columns: predicted), each row as a
    share of that class, so a learner sees which class the shortcut turns into which."""
    if not matrices:
        raise InvalidInput("confusion_heatmaps needs at least one matrix")
    names, shown = list(matrices), [as_text(c) for c in class_names]
    layout = _side_by_side(len(names), [as_text(titles.get(n, n)) for n in names])
    traces = []
    for col, name in enumerate(names, 1):
        counts = np.asarray(matrices[name], dtype=float)
        if counts.shape != (len(class_names), len(class_names)):
            raise InvalidInput(f"{name}: a {counts.shape} matrix for {len(class_names)} classes")
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        axis = "" if col == 1 else str(col)
        traces.append(dict(
            type="heatmap", z=shares, x=shown, y=shown, zmin=0, zmax=1, colorscale=BLUES,
            showscale=col == len(names), text=counts.astype(int), texttemplate="%{text}",
            colorbar=dict(tickformat=".0%"), xaxis=f"x{axis}", yaxis=f"y{axis}",
            hovertemplate="true %{y} → predicted %{x}: %{text} (%{z:.0%} of the class)<extra></extra>",
        ))
        layout[f"xaxis{axis}"].update(title=dict(text="predicted"), tickangle=-45)
        layout[f"yaxis{axis}"].update(title=dict(text="true class"), autorange="reversed")
    layout.update(height=420, margin=dict(l=10, r=10, t=50, b=10))
    return _unchecked(traces, layout)


BLUES = get_colorscale("Blues")


def _side_by_side(columns: int, titles: list[str]) -> dict:
    """The layout of ``columns`` subplots in a row titled ``titles``: make_subplots' (17 ms a call, so made
    once per number of columns), its axes and titles copied for this figure."""
    template = _subplots_layout(columns)
    layout = {name: dict(value) for name, value in template.items() if name != "annotations"}
    layout["annotations"] = [dict(note, text=title) for note, title in zip(template["annotations"], titles)]
    return layout


@functools.lru_cache(maxsize=8)
def _subplots_layout(columns: int) -> dict:
    subplots = make_subplots(rows=1, cols=columns, subplot_titles=[str(i) for i in range(columns)],
                             horizontal_spacing=0.14)
    return {name: value for name, value in subplots.layout.to_plotly_json().items() if name != "template"}


def playground_accuracy(frame: pd.DataFrame, x: str = "shift", y: str = "accuracy", colour: str = "predictor",
                        title: str = "OOD accuracy as the shift grows") -> go.Figure:
    """Line plot of a playground metric vs a swept parameter, one line per predictor."""
    _check_columns(frame, (x, y, colour), "playground_accuracy")
    fig = go.Figure()
    for i, (name, rows) in enumerate(frame.groupby(colour, sort=False)):
        rows = rows.sort_values(x)
        fig.add_trace(go.Scatter(x=rows[x], y=rows[y], mode="lines+markers", name=as_text(name),
                                 line=dict(color=PALETTE[i % len(PALETTE)])))
    fig.update_layout(title=title, xaxis_title=x.replace("_", " "), yaxis=dict(title=y.replace("_", " "), range=[0, 1.02]),
                      margin=dict(l=10, r=10, t=40, b=10), height=380, legend=dict(orientation="h", y=-0.25))
    return fig


def playground_recovery(table: pd.DataFrame) -> go.Figure:
    """Per predictor: R^2 of recovering z_inv and z_var from its features (1 = all there, 0 = none)."""
    _check_columns(table, ("method", "r2_inv", "r2_var"), "playground_recovery")
    per = table.drop_duplicates("method")
    fig = go.Figure([
        go.Bar(x=per["method"].map(as_text), y=per["r2_inv"].clip(lower=0), name="R² of invariant factors (want 1)",
               marker_color="#2ca02c"),
        go.Bar(x=per["method"].map(as_text), y=per["r2_var"].clip(lower=0), name="R² of variant factors (want 0)",
               marker_color="#d62728"),
    ])
    fig.update_layout(barmode="group", title="What each space still knows", yaxis=dict(range=[0, 1.05]),
                      margin=dict(l=10, r=10, t=40, b=10), height=380, legend=dict(orientation="h", y=-0.15))
    return fig


def targets_overview(rows: pd.DataFrame, candidates: list[str]) -> go.Figure:
    """Each held-out target's accuracy per candidate (grouped bars), the candidate chosen for it on
    source data outlined in black: where the projection helps and where it does not, at a glance.
    ``rows``: one per target with a column per candidate and ``chosen`` (choice.target_summary)."""
    _check_columns(rows, ("target", "chosen", *candidates), "targets_overview")
    fig = go.Figure()
    for i, name in enumerate(candidates):
        chosen = (rows["chosen"] == name).to_numpy()
        fig.add_trace(go.Bar(
            x=rows["target"].map(as_text), y=rows[name], name=as_text(name), marker_color=PALETTE[i % len(PALETTE)],
            marker_line=dict(color=np.where(chosen, "black", "rgba(0,0,0,0)"), width=np.where(chosen, 3, 0)),
            text=[f"{v:.0%}" + (" ✓" if c else "") for v, c in zip(rows[name], chosen)], textposition="outside",
            hovertemplate="%{x}: %{y:.1%}<extra>" + _template_text(name) + "</extra>",
        ))
    fig.update_layout(barmode="group", title="Accuracy on each target held out in turn (✓ outlined: the model "
                      "chosen from source data)", yaxis=dict(range=[0, 1.12], tickformat=".0%", title="target accuracy"),
                      xaxis_title="target domain (held out)", margin=dict(l=10, r=10, t=50, b=10), height=420,
                      legend=dict(orientation="h", y=-0.2))
    return fig


def image_grid(images: dict[tuple[str, str], object], rows: list[str], columns: list[str], highlight: str = "",
               title: str = "") -> go.Figure:
    """Thumbnails on a grid, one per (row, column) key of ``images`` (PIL images; a missing one is a
    blank): the Story's world at a glance, classes down, domains across, ``highlight`` (the target
    domain) named in its column title."""
    fig = make_subplots(rows=len(rows), cols=len(columns), horizontal_spacing=0.01, vertical_spacing=0.01,
                        column_titles=[as_text(c) + (" (target)" if c == highlight else "") for c in columns],
                        row_titles=[as_text(r) for r in rows])
    for i, row in enumerate(rows, 1):
        for j, column in enumerate(columns, 1):
            image = images.get((row, column))
            if image is not None:
                fig.add_trace(go.Image(z=np.asarray(image.convert("RGB")), hoverinfo="skip"), row=i, col=j)
            fig.update_xaxes(visible=False, row=i, col=j)
            fig.update_yaxes(visible=False, row=i, col=j)
    fig.update_annotations(font_size=12)
    fig.update_layout(title=as_text(title), height=70 * len(rows) + 60, width=110 * len(columns) + 120,
                      margin=dict(l=10, r=90, t=60 if title else 30, b=10))
    return fig


def figure_html(fig: go.Figure) -> bytes:
    """A self-contained interactive HTML file (plotly.js inlined, so it opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True).encode()
