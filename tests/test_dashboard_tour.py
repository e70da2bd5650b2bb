"""The first-time tour's list (issue 25), one test each, on the synthetic source under AppTest.
(Switching the target returning the old one to the sources is tests/test_dashboard.py's
test_a_new_target_returns_the_old_one_to_the_sources.)"""
from streamlit.testing.v1 import AppTest

from dashboard import cached, texts
from tests.test_dashboard import ROOT, TIMEOUT, _app, _ok, _page, clean_caches  # noqa: F401 (the fixture)


def test_a_hand_setting_can_go_back_to_the_rule_and_does_not_follow_to_another_target():
    at = _app(ctl_selection="source_val")
    at.sidebar.slider(key="ctl_K").set_value(1).run()
    _ok(at)
    assert at.session_state["ctl_selection"] == "off"
    back = at.button(key="back_to_rule")
    assert back.label == "Back to the chosen K and λ"
    back.click().run()
    _ok(at)
    assert at.session_state["ctl_selection"] == "source_val"
    at.sidebar.slider(key="ctl_K").set_value(1).run()
    at.sidebar.selectbox(key="ctl_target").set_value("env 1").run()
    _ok(at)
    assert at.session_state["ctl_selection"] == "source_val"  # the new target's K and lam are chosen again
    assert any("chosen by" in i.value for i in at.info)


def test_the_first_settings_are_the_few_a_demo_needs_and_the_rest_are_folded():
    at = _app()
    top = [w.key for w in at.sidebar.children[0].children.values() if getattr(w, "key", None)]
    assert {"ctl_source", "ctl_target", "ctl_K", "ctl_lam"} <= set(top) and len(top) <= 6
    folded = {e.label for e in at.sidebar.expander}
    assert {"Domains, method and selection", "Cache"} <= folded
    assert not any(e.proto.expanded for e in at.sidebar.expander)
    summary = at.caption[0].value
    assert "pairs:" not in summary and "images of" in summary


def test_the_headline_shows_clips_own_numbers():
    at = _app()
    _ok(at)
    for metric in at.metric[:2]:
        assert "vs CLIP's " in metric.proto.delta and metric.proto.delta.endswith("%")


def test_the_maps_say_that_a_drag_lasso_selects():
    at = _app()
    assert any("lasso-selects" in c.value for c in at.caption)


def test_a_click_on_a_map_selects_its_point_so_its_image_shows():
    """Hover cannot show an image in a plotly map; a click selects the point, and a selection shows its
    images (tests/test_dashboard.py's test_selection_shows_images_and_neighbours_in_both_spaces)."""
    at = _app()
    from streamlit.proto.PlotlyChart_pb2 import PlotlyChart

    maps = [chart for chart in at.get("plotly_chart") if "umap_" in chart.proto.id]
    assert len(maps) == 2
    assert all(PlotlyChart.SelectionMode.POINTS in chart.proto.selection_mode for chart in maps)
    assert any("click a point to see its image" in c.value for c in at.caption)


def test_the_confusion_caption_says_counts_in_the_cells_and_shares_in_the_colour():
    at = _app()
    caption = next(c.value for c in at.caption if c.value.startswith("Rows: the true class"))
    assert "count" in caption and "share" in caption


def test_a_selections_thumbnails_are_a_seeded_sample_not_its_lowest_rows():
    script = f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
from clip_icm import service
from dashboard.screens import explorer
emb = service.load_embeddings(service.EmbeddingRequest(source="synthetic", n_per_domain=30))
fit = service.fit(emb, "env 4", "icm", service.eval_config(8, 100.0))
explorer._selection_view(emb, service.plot_ids(emb), list(range(40)), fit)
"""
    at = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    _ok(at)
    assert "**40 selected** (a seeded sample of 12)" in at.markdown[0].value
    listed = at.markdown[1].value  # no images in the synthetic world: the rows by caption
    shown = [int(part.split()[0].lstrip("#")) for part in listed.split(", ")]
    assert len(shown) == 12 and shown != list(range(12)) and max(shown) >= 12


def test_about_says_what_the_demos_maps_show():
    at = _page("about.about_page")
    _ok(at)
    text = " ".join(" ".join(m.value for m in at.markdown).split())
    assert "domains mix" not in text
    assert "an island per class and domain" in text and "colour shortcut" in text


def test_which_class_becomes_which_comes_before_the_maps():
    at = _app()
    headings = [h.value for h in at.subheader]
    confusion = next(i for i, h in enumerate(headings) if h.startswith("Which class becomes which"))
    maps = next(i for i, h in enumerate(headings) if h.startswith("Full CLIP space vs invariant space"))
    assert confusion < maps


def test_the_orth_cali_note_shows_only_beside_an_orth_cali_row():
    without = _app()
    assert not any("Orth-Cali" in c.value for c in without.caption)
    with_it = _app(ctl_baselines=["orth_cali"])
    assert any("Orth-Cali calibrates class text only" in c.value for c in with_it.caption)
