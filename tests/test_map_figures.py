"""The server's caches of figures (cached.map_figure through common.map_of, cached.accuracy_view and
cached.confusion_figure): sessions drawing the same map or chart share one figure; any difference in what
a map draws makes another; the cache is bounded; a stale map is the drawn one faded (figures.as_stale)."""
import json

import numpy as np
import pandas as pd
import pytest

from clip_icm import figures
from dashboard import cached
from dashboard.screens import common
from tests.test_dashboard_layouts import _app, _map_titles, _settled, fresh  # noqa: F401 (fresh: autouse)


def _points(n: int = 40, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    points = pd.DataFrame({"id": np.arange(n), "class": rng.choice(["cat", "dog"], n),
                           "domain": rng.choice(["photo", "sketch"], n), "role": rng.choice(["source", "target"], n),
                           "prediction": rng.choice(["cat", "dog"], n)})
    points["correct"] = points["class"] == points["prediction"]
    return rng.normal(size=(n, 2)).astype(np.float32), points


def _without_empty(value):
    if isinstance(value, dict):
        return {k: _without_empty(v) for k, v in value.items() if v != {}}
    return [_without_empty(v) for v in value] if isinstance(value, list) else value


@pytest.fixture
def counted(monkeypatch) -> list:
    """The figures.scatter_layout calls made from now on."""
    calls, build = [], figures.scatter_layout
    monkeypatch.setattr(figures, "scatter_layout", lambda *a, **k: calls.append(a[3]) or build(*a, **k))
    return calls


def test_equal_maps_share_one_figure_and_any_difference_makes_another(counted):
    xy, points = _points()
    first = common.map_of(xy, points, "class", "Full CLIP space")
    # another session's equal arrays (new objects): the same figure, not built again
    assert common.map_of(xy.copy(), points.copy(), "class", "Full CLIP space") is first and counted == ["Full CLIP space"]
    one_prediction = points.copy()
    one_prediction.loc[3, "prediction"] = "cat" if points.loc[3, "prediction"] == "dog" else "dog"
    moved = xy.copy()
    moved[0, 0] += 1e-3
    others = [common.map_of(xy, points, "domain", "Full CLIP space"),
              common.map_of(xy, points, "class", "Invariant space"),
              common.map_of(xy, one_prediction, "class", "Full CLIP space"),
              common.map_of(moved, points, "class", "Full CLIP space"),
              common.map_of(xy, points, "class", "Full CLIP space", {"cat": "#ff0000"}),
              common.map_of(xy, points, "class", "Full CLIP space", height=420)]
    assert len(counted) == 7 and all(fig is not first for fig in others) and len({id(f) for f in others}) == 6
    assert others[1].layout.title.text == "Invariant space" and others[5].layout.height == 420
    assert others[2].to_json() != first.to_json()  # the new prediction is in the hover data
    assert "#ff0000" in {t.marker.color for t in others[4].data}


def test_a_stale_map_is_the_drawn_one_faded_and_retitled_without_building_it_again(counted):
    xy, points = _points()
    drawn = common.map_of(xy, points, "class", "Invariant space <K = 8>")
    before = drawn.to_json()
    stale = figures.as_stale(common.map_of(xy, points, "class", "Invariant space <K = 8>"), "Stale: <K = 8>")
    assert counted == ["Invariant space <K = 8>"] and stale is not drawn
    # the figure a stale map was before: built from the points, faded, its title escaped as every title is
    built = figures.scatter_layout(xy, points, "class", "Stale: <K = 8>").update_traces(opacity=0.35)
    # plotly's copy orders the keys otherwise and leaves out empty settings (the axes' "title": {}, which set nothing)
    assert _without_empty(json.loads(stale.to_json())) == _without_empty(json.loads(built.to_json()))
    assert stale.layout.title.text == "Stale: &lt;K = 8&gt;"
    assert {t.opacity for t in stale.data} == {figures.STALE_OPACITY} and {t.opacity for t in drawn.data} == {None}
    assert drawn.to_json() == before  # the shared figure is not changed in place


def test_the_cache_is_bounded_and_rebuilds_what_it_dropped(counted):
    xy, points = _points()
    first = common.map_of(xy, points, "class", "map 0")
    for i in range(1, cached.MAP_FIGURES + 1):
        common.map_of(xy, points, "class", f"map {i}")
    assert len(counted) == cached.MAP_FIGURES + 1
    again = common.map_of(xy, points, "class", "map 0")  # the oldest, dropped: built anew, equal
    assert len(counted) == cached.MAP_FIGURES + 2 and again is not first and again.to_json() == first.to_json()


def test_a_second_session_on_the_same_setting_builds_no_map_and_another_setting_only_its_own(counted):
    first = _settled(_app(ctl_selection="off"))
    assert _map_titles(first) == ["Full CLIP space", "Invariant space (ICM, K = 8, lam = 1)"]
    built = len(counted)
    second = _app(ctl_selection="off")  # another session (its own AppTest), the same data and setting
    assert not second.exception and _map_titles(second) == _map_titles(first) and len(counted) == built
    third = _settled(_app(ctl_selection="off", ctl_K=3))
    assert not third.exception
    assert _map_titles(third) == ["Full CLIP space", "Invariant space (ICM, K = 3, lam = 1)"]
    assert counted[built:] == ["Invariant space (ICM, K = 3, lam = 1)"]  # the full map is shared
    assert _map_titles(_app(ctl_selection="off")) == _map_titles(first)  # the first setting's, not the third's


def test_sessions_on_one_setting_share_the_accuracy_chart_and_confusions_and_another_setting_gets_its_own(monkeypatch):
    built = []
    for name in ("accuracy_bars", "confusion_heatmaps"):
        monkeypatch.setattr(figures, name, lambda *a, _build=getattr(figures, name), _name=name, **k:
                            built.append(_name) or _build(*a, **k))

    def charts(at):
        specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
        return {spec["layout"]["title"]["text"]: spec for spec in specs
                if spec["layout"].get("title", {}).get("text", "").startswith("Accuracy per domain")}

    first = _app(ctl_selection="off")
    assert not first.exception and sorted(built) == ["accuracy_bars", "confusion_heatmaps"]
    second = _app(ctl_selection="off")  # another session, the same data and setting: nothing built again
    assert not second.exception and len(built) == 2 and charts(second) == charts(first)
    third = _app(ctl_selection="off", ctl_K=3)
    assert not third.exception and sorted(built[2:]) == ["accuracy_bars", "confusion_heatmaps"]
    (title, chart), = charts(third).items()
    assert "K = 3," in title and chart != next(iter(charts(first).values()))
    assert [m.value for m in third.metric] != [m.value for m in first.metric]  # its own numbers, not the first's
    assert list(charts(_app(ctl_selection="off"))) == list(charts(first))  # the first setting's, not the third's
