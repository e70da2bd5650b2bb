"""figures: point ids in customdata, markers and colours, target marking, honest labels."""
import numpy as np
import pandas as pd
import pytest

from clip_icm import figures
from clip_icm.errors import InvalidInput


def _points(n: int = 12) -> tuple[np.ndarray, pd.DataFrame]:
    g = np.random.default_rng(0)
    points = pd.DataFrame({
        "id": np.arange(100, 100 + n),
        "class": np.array(["cat", "dog", "cow"])[np.arange(n) % 3],
        "domain": np.array(["photo", "sketch"])[np.arange(n) % 2],
        "role": np.where(np.arange(n) % 2 == 1, "target", "source"),
        "prediction": "cat",
        "correct": np.arange(n) % 3 == 0,
    })
    return g.normal(size=(n, 2)), points


@pytest.mark.parametrize("colour_by", ["class", "domain"])
def test_scatter_carries_every_id_once_with_role_markers(colour_by):
    xy, points = _points()
    fig = figures.scatter_layout(xy, points, colour_by, "t")
    ids = [int(point_id) for trace in fig.data for point_id in trace.customdata]
    assert sorted(ids) == points["id"].tolist()
    for trace in fig.data:
        role = "target" if "(target)" in trace.name else "source"
        assert trace.marker.symbol == figures.ROLE_SYMBOLS[role]
    groups = {trace.name.split(" (")[0] for trace in fig.data}
    assert groups == set(points[colour_by])
    assert all(trace.legendgroup == trace.name.split(" (")[0] for trace in fig.data)
    # the hover shows each point's class, domain, prediction and correctness, and its id
    for trace in fig.data:
        for point_id, hover in zip(trace.customdata, trace.hovertext):
            row = points.set_index("id").loc[int(point_id)]
            verdict = "correct" if row["correct"] else "wrong"
            assert hover == f"class: {row['class']}<br>domain: {row['domain']}<br>prediction: cat ({verdict})"
        assert trace.hovertemplate == "%{hovertext}<extra>#%{customdata}</extra>"


def test_scatter_rejects_bad_input():
    xy, points = _points()
    with pytest.raises(ValueError, match="colour_by"):
        figures.scatter_layout(xy, points, "shape")
    with pytest.raises(ValueError, match="needs columns prediction"):
        figures.scatter_layout(xy, points.drop(columns="prediction"))
    with pytest.raises(ValueError, match="layout rows"):
        figures.scatter_layout(xy[:-1], points)


def test_scatter_colours_by_a_factor_column_and_not_by_an_id_or_a_flag():
    xy, points = _points()
    points["colour (shortcut)"] = np.array(["red", "blue"])[np.arange(len(points)) % 2]
    fig = figures.scatter_layout(xy, points, "colour (shortcut)")
    assert {trace.name.split(" (")[0] for trace in fig.data} == {"red", "blue"}
    for column in ("id", "correct", "role"):
        with pytest.raises(ValueError, match="colour_by"):
            figures.scatter_layout(xy, points, column)


def test_with_highlight_selects_the_same_ids_on_another_map_and_fades_the_rest():
    xy, points = _points()
    fig = figures.scatter_layout(xy, points)
    brushed = figures.with_highlight(fig, [100, 105, 111])
    shown = {int(trace.customdata[i]) for trace in brushed.data for i in trace.selectedpoints}
    assert shown == {100, 105, 111}
    assert all(trace.unselected.marker.opacity < 0.5 for trace in brushed.data)
    assert all(trace.selectedpoints is None for trace in fig.data)  # the map itself is left as it was


def test_targets_overview_outlines_the_chosen_candidate_of_each_target():
    rows = pd.DataFrame({"target": ["photo", "sketch"], "CLIP zero-shot": [0.9, 0.6], "ICM probe": [0.8, 0.7],
                         "chosen": ["CLIP zero-shot", "ICM probe"]})
    fig = figures.targets_overview(rows, ["CLIP zero-shot", "ICM probe"])
    zero_shot, probe = fig.data
    assert list(zero_shot.y) == [0.9, 0.6] and list(zero_shot.marker.line.width) == [3, 0]
    assert list(probe.marker.line.width) == [0, 3] and probe.text[1].endswith("✓")
    with pytest.raises(ValueError, match="needs columns"):
        figures.targets_overview(rows.drop(columns="chosen"), ["CLIP zero-shot"])


def test_image_grid_puts_each_image_in_its_class_row_and_domain_column():
    from PIL import Image

    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    fig = figures.image_grid({("cat", "photo"): red, ("dog", "sketch"): blue}, ["cat", "dog"], ["photo", "sketch"],
                             highlight="sketch")
    assert len(fig.data) == 2  # a missing (class, domain) is a blank cell, not an error
    assert tuple(fig.data[0].z[0, 0]) == (255, 0, 0) and tuple(fig.data[1].z[0, 0]) == (0, 0, 255)
    titles = {a.text for a in fig.layout.annotations}
    assert {"photo", "sketch (target)", "cat", "dog"} <= titles


def test_selected_ids_reads_customdata_from_a_selection():
    selection = {"selection": {"points": [{"customdata": [105, "cat"]}, {"customdata": [101, "dog"]},
                                          {"customdata": [105, "cat"]}, {"x": 1}]}}
    assert figures.selected_ids(selection) == [101, 105]
    assert figures.selected_ids(None) == []
    assert figures.selected_ids({"selection": {"points": []}}) == []


def _accuracy() -> pd.DataFrame:
    rows = [dict(domain=d, method=m, protocol=p, label=f"{m} {p}", accuracy=a)
            for m, a in (("CLIP", 0.5), ("icm", 0.7)) for p in ("linear probe", "zero-shot")
            for d in ("photo", "sketch", "cartoon")]
    return pd.DataFrame(rows)


def test_accuracy_bars_mark_the_target():
    fig = figures.accuracy_bars(_accuracy(), "sketch")
    assert [t.name for t in fig.data] == ["CLIP linear probe", "CLIP zero-shot", "icm linear probe", "icm zero-shot"]
    assert fig.data[0].marker.color == fig.data[1].marker.color != fig.data[2].marker.color
    assert fig.data[1].marker.pattern.shape == "/" and fig.data[0].marker.pattern.shape == ""
    ticks = list(fig.data[0].x)
    assert ticks[1] == "<b>sketch (target)</b>" and ticks[0] == "photo"
    assert len(fig.layout.shapes) == 1  # the highlighted band behind the target
    assert {t.opacity for t in fig.data} == {1.0}  # no focus: every method solid


def test_accuracy_bars_draw_the_baselines_pale_beside_the_focus():
    table = pd.concat([_accuracy(), _accuracy().query("method == 'icm'").assign(method="pca", label="pca")])
    fig = figures.accuracy_bars(table, "sketch", focus=("CLIP", "icm"))
    opacity = {t.name: t.opacity for t in fig.data}
    assert opacity["CLIP zero-shot"] == opacity["icm linear probe"] == 1.0
    assert opacity["pca"] == figures.BASELINE_OPACITY < 1.0


def test_spectrum_highlights_the_kept_eigenvalues():
    ev = np.linspace(5, -5, 10)
    top = figures.spectrum_figure(ev, 3, "top")
    assert list(top.data[0].y) == list(ev[:3])
    released = figures.spectrum_figure(ev, 3, "as_released")
    assert list(released.data[0].y) == list(ev[-3:])


def test_sweep_heatmaps_are_labelled_honest_and_peeking():
    sweep = pd.DataFrame([dict(K=k, lam=l, source_val_accuracy=0.5, target_accuracy=0.4)
                          for k in (4, 8) for l in (1.0, 10.0)])
    fig = figures.sweep_heatmaps(sweep, chosen=(8, 10.0))
    titles = [a.text for a in fig.layout.annotations]
    assert figures.HONEST_TITLE in titles and figures.PEEKING_TITLE in titles
    assert fig.data[0].z.shape == (2, 2)
    with pytest.raises(ValueError, match="target_accuracy"):
        figures.sweep_heatmaps(sweep.drop(columns="target_accuracy"))
    ruled = figures.sweep_heatmaps(sweep.assign(selection_score=0.7), (4, 1.0), "selection_score", "my rule")
    assert "my rule" in [a.text for a in ruled.layout.annotations]
    assert np.allclose(ruled.data[0].z, 0.7)  # the left map is the rule's score


def test_playground_figures():
    table = pd.DataFrame([dict(shift=s, method=m, ood_accuracy=0.5, r2_inv=0.9, r2_var=-0.1)
                          for s in (0.0, 1.0) for m in ("full", "icm")])
    acc = figures.playground_accuracy(table, "shift", "ood_accuracy", "method")
    assert [t.name for t in acc.data] == ["full", "icm"]
    rec = figures.playground_recovery(table)
    assert list(rec.data[1].y) == [0.0, 0.0]  # negative R^2 shown as 0 (no information)


def test_html_export_is_self_contained():
    html = figures.figure_html(figures.accuracy_bars(_accuracy(), "photo")).decode()
    assert "<html>" in html and "Plotly.newPlot" in html
    assert '<script src="http' not in html and len(html) > 1_000_000  # plotly.js inlined, no CDN fetch


def test_many_points_are_drawn_with_webgl():
    def figure(n):
        points = pd.DataFrame({"id": np.arange(n), "class": "a", "domain": "d", "role": "source",
                               "prediction": "a", "correct": True})
        return figures.scatter_layout(np.zeros((n, 2)), points)

    assert figure(10).data[0].type == "scatter"
    assert figure(figures.WEBGL_ABOVE + 1).data[0].type == "scattergl"


def test_every_point_is_drawn_at_the_draw_limit():
    from clip_icm import service

    n = service.DRAW_LIMIT
    gen = np.random.default_rng(0)
    points = pd.DataFrame({"id": np.arange(n), "class": gen.choice(["a", "b", "c"], n),
                           "domain": gen.choice(["d", "e"], n), "prediction": "a", "correct": True})
    points["role"] = np.where(points["domain"] == "e", "target", "source")
    fig = figures.scatter_layout(gen.normal(size=(n, 2)), points)
    drawn = np.concatenate([np.asarray(trace.customdata, dtype=int) for trace in fig.data])
    assert sorted(drawn.tolist()) == list(range(n))  # each point once, none dropped
    assert {trace.type for trace in fig.data} == {"scattergl"}


def test_a_shared_figure_serialises_as_the_figure_and_keeps_its_dict_until_it_changes():
    import json

    import plotly.io as pio

    xy, points = _points()
    plain = figures.scatter_layout(xy, points, "class", "t")
    fig = figures.shared(figures.scatter_layout(xy, points, "class", "t"))
    assert figures.shared(fig) is fig
    assert json.loads(pio.to_json(fig)) == json.loads(pio.to_json(plain))
    kept = fig.to_dict()
    assert fig.to_dict() is kept  # what every st.plotly_chart of it serialises, made once
    # every kind of change is seen: the kept dict is made again
    changes = [lambda f: f.update_layout(title="new"), lambda f: f.update_traces(opacity=0.5),
               lambda f: setattr(f.data[0].marker, "size", 3), lambda f: setattr(f.layout.xaxis, "range", [0, 1]),
               lambda f: f.add_scatter(x=[0.0], y=[0.0], name="added")]
    for change in changes:
        before = fig.to_dict()
        change(fig)
        assert fig.to_dict() is not before
        plain_copy = figures.scatter_layout(xy, points, "class", "t")
        for c in changes[:changes.index(change) + 1]:
            c(plain_copy)
        assert json.loads(pio.to_json(fig)) == json.loads(pio.to_json(plain_copy))


def test_a_stale_copy_of_a_shared_map_leaves_the_shared_one_as_it_was():
    import json

    import plotly.io as pio

    xy, points = _points()
    fig = figures.shared(figures.scatter_layout(xy, points, "class", "t"))
    before = json.loads(pio.to_json(fig))
    stale = figures.as_stale(fig, "Stale: <t>")
    assert all(trace.opacity == figures.STALE_OPACITY for trace in stale.data)
    assert stale.layout.title.text == "Stale: &lt;t&gt;" and json.loads(pio.to_json(fig)) == before
    # what plotly's checked path makes of the same change (the stale copy skips plotly's checks)
    checked = figures.scatter_layout(xy, points, "class", "t").update_traces(opacity=figures.STALE_OPACITY)
    checked.update_layout(title="Stale: &lt;t&gt;")
    assert json.loads(pio.to_json(stale)) == json.loads(pio.to_json(checked))


def test_sharing_a_figure_makes_no_copy_and_refuses_what_is_not_a_plain_figure():
    import plotly.graph_objects as go

    xy, points = _points()
    fig = figures.scatter_layout(xy, points, "class", "t")
    assert figures.shared(fig) is fig and isinstance(fig, figures.SharedFigure)
    with pytest.raises(InvalidInput, match="only a plotly go.Figure"):
        figures.shared(go.Bar())


def _bars_table() -> pd.DataFrame:
    return pd.DataFrame([dict(domain=d, method=m, protocol=p, label=f"{m} {p}", accuracy=(i % 7) / 7)
                         for i, (d, m, p) in enumerate((d, m, p) for d in ("photo", "sketch", "<b>art</b>")
                                                       for m in ("clip", "icm") for p in ("zero-shot", "linear probe"))])


@pytest.mark.parametrize("build", [
    lambda: figures.scatter_layout(*_points(40), "class", "<i>t</i>"),
    lambda: figures.scatter_layout(*_points(figures.WEBGL_ABOVE + 1), "domain", "t"),
    lambda: figures.accuracy_bars(_bars_table(), "sketch", "A", focus=("icm",)),
    lambda: figures.confusion_heatmaps({"clip": np.eye(3) * 4, "icm": np.ones((3, 3))}, ["a", "<b>b</b>", "c"],
                                       {"clip": "CLIP", "icm": "ICM, K = 4"}),
    lambda: figures.confusion_heatmaps({"clip": np.eye(2)}, ["a", "b"], {}),
])
def test_figures_built_unchecked_pass_plotlys_checks_and_serialise_as_their_checked_copy(build):
    """The hot figures skip plotly's property checks (figures._unchecked): a checked copy must accept every
    property and value they hold, and show the same figure."""
    import json

    import plotly.graph_objects as go
    import plotly.io as pio

    fig = build()
    checked = go.Figure(fig.to_dict())  # raises on a property or value plotly does not know
    assert json.loads(pio.to_json(fig)) == json.loads(pio.to_json(checked))
    # changed afterwards, it is checked as any figure (an unchecked plotly figure ignores a title given as text)
    assert fig.update_layout(title="later", height=300).layout.title.text == "later" and fig.layout.height == 300
    with pytest.raises(ValueError):
        fig.update_layout(no_such_property=1)
