"""Every dashboard page under streamlit.testing.v1.AppTest, caches cleared between tests.

UI tests run on the synthetic source (fast, no model); one test runs the real default demo
(ToyDomains + toy-clip) when its checkpoint is in the checkout.
"""
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from clip_icm import service
from dashboard import cached

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
TIMEOUT = 240


@pytest.fixture(autouse=True)
def clean_caches(monkeypatch):
    # No speculative layouts here (tests/test_dashboard_layouts.py has them): they would only add
    # layouts to wait for, and entries to the store that a test counts.
    monkeypatch.setattr(service.layout_worker(), "max_speculative", 0)
    cached.clear()
    yield
    cached.clear()
    assert workers_idle()


def _app(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["page"] = "explorer"  # "/" opens the Story
    for key, value in {"ctl_source": "synthetic", "ctl_n_synth": 100, **state}.items():
        at.session_state[key] = value
    return _settled(at.run())


def workers_idle() -> bool:
    """Whether the background workers (layouts, model choices, settings evaluated ahead) finished what they
    were asked for."""
    return (service.layout_worker().wait_idle(TIMEOUT) and service.choice_worker().wait_idle(TIMEOUT)
            and service.ahead_worker().wait_idle(TIMEOUT))


def _settled(at: AppTest) -> AppTest:
    """The page once the background workers have laid out its maps and made its model choices (what the
    page's polling redraws; tests/test_dashboard_layouts.py tests the page while they are pending)."""
    assert workers_idle()
    return at.run()


def _page(call: str, **state) -> AppTest:
    """One page function on its own (AppTest.switch_page only knows file pages): ``call`` is
    "module.function" in dashboard/screens/."""
    module, function = call.split(".")
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\nfrom dashboard.screens import {module}\n"
              f"{module}.{function}()\n")
    at = AppTest.from_string(script, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _table(at: AppTest):
    """The accuracy table (one row per method and protocol, one column per domain)."""
    return next(frame.value for frame in at.dataframe if "target change vs CLIP" in frame.value.columns)


def _overview(at: AppTest):
    """Every target at a glance (one row per held-out domain, the chosen model under 'deploy')."""
    return next(frame.value for frame in at.dataframe if "deploy" in frame.value.columns)


def test_explorer_opens_with_both_layouts_and_the_accuracy_chart():
    at = _app()
    _ok(at)
    assert at.title[0].value == "CLIP-ICM Explorer"
    assert len(at.get("plotly_chart")) == 4  # accuracy bars + two UMAP panels + confusion matrices
    # The page leads with the model to deploy on the target, and shows every target with its choice.
    lead = at.success[0].value
    assert lead.startswith("**For env 4, deploy ") and "source checks" in lead
    overview = _overview(at)
    assert list(overview.target) == ["env 1", "env 2", "env 3", "env 4"]
    assert set(overview.deploy) <= {"CLIP zero-shot", "CLIP probe", "Augmentation probe", "ICM zero-shot", "ICM probe"}
    assert overview.set_index("target").loc["env 4", "deploy"] in lead
    table = _table(at)
    assert "env 4 (target)" in table.columns and "ICM linear probe" in table.index
    assert [m.label for m in at.metric][0] == "ICM linear probe on env 4"
    labels = [b.label for b in at.get("download_button")]
    assert {"Projection (.npz)", "Accuracy table (.csv)", "Embeddings table (.parquet)", "accuracy (.html)",
            "umap_full (.html)", "umap_invariant (.html)", "Report (one .html file)"} <= set(labels)


def test_changing_target_k_lam_and_method_updates_the_accuracy_table():
    at = _app()
    before = _table(at)
    at.sidebar.slider(key="ctl_K").set_value(2).run()
    _ok(at)
    after_k = _table(at)
    assert not after_k.loc["ICM linear probe"].equals(before.loc["ICM linear probe"])
    assert after_k.loc["CLIP linear probe"].equals(before.loc["CLIP linear probe"])  # CLIP ignores K
    at.sidebar.select_slider(key="ctl_lam").set_value(10.0).run()
    _ok(at)
    assert not _table(at).loc["ICM linear probe"].equals(after_k.loc["ICM linear probe"])
    at.sidebar.selectbox(key="ctl_target").set_value("env 1").run()
    _ok(at)
    assert "env 1 (target)" in _table(at).columns and at.metric[0].label.endswith("on env 1")
    at.sidebar.multiselect(key="ctl_baselines").set_value(["pca"]).run()
    _ok(at)
    assert "PCA linear probe" in _table(at).index


def test_picking_a_baseline_keeps_the_invariant_layout(tmp_path, monkeypatch):
    from clip_icm.service import maps

    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path))  # no layout of an earlier test in the store
    calls = []
    layout = maps.invariant_layout
    monkeypatch.setattr(maps, "invariant_layout", lambda *a, **kw: calls.append(1) or layout(*a, **kw))
    at = _app()
    assert len(calls) == 1
    _settled(at.sidebar.multiselect(key="ctl_baselines").set_value(["pca"]).run())
    _ok(at)
    assert "PCA linear probe" in _table(at).index
    assert len(calls) == 1  # the fit did not change, so neither does its layout
    _settled(at.sidebar.slider(key="ctl_K").set_value(2).run())
    assert len(calls) == 2


def test_choose_on_source_validation_reports_its_choice_and_a_slider_turns_it_off():
    at = _app(ctl_selection="source_val")
    _ok(at)
    note = next(i.value for i in at.info if "chosen by" in i.value)
    assert "**source validation**" in note and "no target label" in note
    K, lam = at.sidebar.slider(key="ctl_K").value, at.sidebar.select_slider(key="ctl_lam").value
    assert f"K = {K} and λ = {lam:g} chosen" in note  # the sliders show the chosen pair
    at.sidebar.slider(key="ctl_K").set_value(2).run()
    _ok(at)
    assert at.sidebar.selectbox(key="ctl_selection").value == "off"
    assert any("set by hand" in c.value for c in at.caption) and not any("chosen by" in i.value for i in at.info)


def test_interventional_selection_without_intervened_rows_is_a_message(monkeypatch):
    # The synthetic set carries its validation rows' true do-interventions; take them away.
    from dataclasses import replace

    from clip_icm import scm

    real = scm.make_embedding_set

    def without_intervened_rows(*args, **kwargs):
        emb = real(*args, **kwargs)  # another content, another key (as the pipeline's keys cover it)
        return replace(emb, intervened_val=[], key=f"{emb.key}-without-intervened-val")

    monkeypatch.setattr(scm, "make_embedding_set", without_intervened_rows)
    at = _app(ctl_selection="interventional")
    assert not at.exception
    assert any("needs intervened validation rows" in e.value for e in at.error)
    assert len(at.get("plotly_chart")) >= 3  # the sliders decide; the page still draws
    monkeypatch.setattr(scm, "make_embedding_set", real)
    cached.clear()
    _ok(_app(ctl_selection="interventional"))  # with them, the rule runs


def test_above_the_map_limit_a_visible_control_and_a_stratified_subsample(monkeypatch):
    monkeypatch.setattr(service, "MAP_POINTS", 120)
    at = _app()
    _ok(at)
    assert at.number_input(key="ctl_map_points").value == 120
    assert any("Showing 120 of 400 images" in c.value and "stratified" in c.value for c in at.caption)
    full, invariant = sorted(_map_titles(at))  # both maps say so in their titles
    assert full == "Full CLIP space · 120 of 400 images (stratified sample, seed 0)"
    assert invariant.startswith("Invariant space (ICM, K = ")
    assert invariant.endswith(") · 120 of 400 images (stratified sample, seed 0)")
    at.number_input(key="ctl_map_points").set_value(200).run()
    _settled(at)
    _ok(at)
    assert any("Showing 200 of 400 images" in c.value for c in at.caption)
    assert all("· 200 of 400 images (stratified sample" in t for t in _map_titles(at))
    at.number_input(key="ctl_map_points").set_value(400).run()
    _settled(at)
    assert len(_map_titles(at)) == 2 and not any("of 400 images" in t for t in _map_titles(at))  # every point
    assert at.number_input(key="ctl_map_points").max == 400
    monkeypatch.setattr(service, "DRAW_LIMIT", 300)  # what a browser draws bounds the control
    at.number_input(key="ctl_map_points").set_value(300).run()
    assert at.number_input(key="ctl_map_points").max == 300


def _map_titles(at: AppTest) -> list[str]:
    import json

    titles = [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]
    return [t for t in titles if t.startswith(("Full CLIP space", "Invariant space"))]


def test_sources_can_be_narrowed():
    at = _app()
    at.sidebar.multiselect(key="ctl_sources").set_value(["env 1"]).run()
    _ok(at)
    assert list(_table(at).columns) == ["env 1", "env 4 (target)", "target change vs CLIP"]


def test_missing_folder_is_an_error_message_not_an_exception():
    at = _app(ctl_source="folder", ctl_root="/no/such/folder")
    assert not at.exception
    assert any("Folder not found" in e.value for e in at.error)
    assert at.title[0].value == "CLIP-ICM Explorer"  # the page itself still renders


def test_open_clip_models_are_listed_and_missing_weights_are_an_error_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    at = _app(ctl_source="demo", ctl_model_kind="open_clip", ctl_arch="ViT-B-32", ctl_cap=2)
    assert not at.exception
    assert "ViT-B-16-quickgelu" in at.sidebar.selectbox(key="ctl_arch").options
    tags = at.sidebar.selectbox(key="ctl_tag").options
    assert "laion2b_s34b_b79k" in tags and "none" in tags
    assert any("Runs on" in c.value for c in at.sidebar.caption)  # device and precision shown
    at.sidebar.selectbox(key="ctl_tag").set_value("laion2b_s34b_b79k").run()
    assert not at.exception
    assert at.error and "Could not build the embeddings" in at.error[0].value and "ViT-B-32" in at.error[0].value


def test_intervention_controls_and_a_bad_template_give_an_error_message(tmp_path):
    at = _app(ctl_source="demo", ctl_model_kind="local", ctl_local_arch="ViT-B-32",
              ctl_ckpt=str(tmp_path / "absent.pt"), ctl_banks=["styles"], ctl_bank_styles="a sketch without a slot")
    assert not at.exception
    assert at.sidebar.multiselect(key="ctl_ops").value  # image operations offered, all selected
    assert at.sidebar.slider(key="ctl_p_posterize_bits").value == (2, 4)  # a strength, as a range
    assert at.sidebar.multiselect(key="ctl_swaps").value == ["colour", "background"]  # the demo's spurious ones
    assert at.sidebar.multiselect(key="ctl_swaps").options == ["colour", "background", "style"]
    assert at.error and "placeholder" in at.error[0].value


def test_diagnostics_page_shows_spectrum_ratio_and_sweep():
    at = _page("diagnostics.diagnostics_page", ctl_source="synthetic", ctl_n_synth=60, ctl_selection="off")
    _ok(at)
    assert at.metric[0].label.startswith("Invariance ratio")
    # the spectrum and the model choice's candidates with their uncertainty; the sweep waits for its toggle
    assert [chart.key for chart in at.get("plotly_chart")] == ["spectrum", "choice_scores"]
    scores = next(frame.value for frame in at.dataframe if "held out accuracy" in frame.value.columns)
    assert list(scores.index) == ["CLIP zero-shot", "CLIP probe", "Augmentation probe", "ICM zero-shot", "ICM probe"]
    at.toggle(key="ctl_sweep").set_value(True).run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 3
    assert any("best on source validation" in c.value for c in at.caption)


def test_diagnostics_sweep_shows_the_score_of_the_rule_that_chose_k_and_lam():
    at = _page("diagnostics.diagnostics_page", ctl_source="synthetic", ctl_n_synth=60, ctl_selection="source_domains",
               ctl_sweep=True)
    _ok(at)
    assert any("Star: chosen by leave one source domain out" in c.value for c in at.caption)
    K, lam = at.slider(key="ctl_K").value, at.select_slider(key="ctl_lam").value
    assert any(f"(K = {K}, lam = {lam:g})" in c.value for c in at.caption)  # the star is the chosen pair


def test_playground_page_reacts_to_its_sliders():
    at = _page("playground.playground_page")
    _ok(at)
    assert len(at.get("plotly_chart")) == 2
    before = at.dataframe[0].value
    # columns a reader can name (not run_playground's id_accuracy, r2_inv...), predictors by their labels
    assert "accuracy, shifted environment" in before.columns and not any("_" in c for c in before.columns)
    assert set(before["predictor"]) == {"Full embedding", "ICM", "ICM (as released)"}  # no CLIP in this world
    at.slider(key="pg_noise").set_value(1.0).run()
    _ok(at)
    assert not at.dataframe[0].value.equals(before)
    assert "Largest principal angle" in at.markdown[-1].value


def test_about_page_explains_the_released_slice():
    at = _page("about.about_page")
    _ok(at)
    text = " ".join(m.value for m in at.markdown)
    assert "eigh" in text and "K largest" in text and "as released" in text


def test_selection_shows_images_and_neighbours_in_both_spaces():
    script = f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
from clip_icm import service
from clip_icm.scm import SCMConfig
from dashboard.screens import explorer
emb = service.load_embeddings(service.EmbeddingRequest(source="synthetic", n_per_domain=30))
fit = service.fit(emb, "env 4", "icm", service.eval_config(8, 100.0))
explorer._selection_view(emb, service.plot_ids(emb), [3, 40], fit)
"""
    at = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    _ok(at)
    text = " ".join(m.value for m in at.markdown)
    assert "2 selected" in text and "full space" in text and "invariant space" in text


def _store_entries(root: Path) -> dict[str, list]:
    """key -> shape of every stored array (the store's memos of hashes and models are no entries)."""
    manifests = (json.loads(m.read_text()) for m in root.glob("*/*.json"))
    return {m["key"]: m["shape"] for m in manifests if "shape" in m}


def _chosen_label(results_csv: Path, target: str) -> str:
    from clip_icm.choice import Candidate

    rows = pd.read_csv(results_csv)
    chosen = rows[rows.chosen & (rows.target == target)]
    return Candidate(chosen.method.item(), chosen.protocol.item()).label


def test_default_demo_opens_on_the_honest_story_with_gallery_confusions_and_prompts(tmp_path, monkeypatch):
    """Also: the CLI's `evaluate` and the dashboard's defaults build the same embeddings (the page
    adds no embeddings to the store, only its two maps and the results it keeps for a restart) and
    report the same numbers."""
    from clip_icm.cli import main

    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path / "store"))
    assert main(["evaluate", "--target", "cartoon", "--quiet", "--out", str(tmp_path / "cli.csv")]) == 0
    cli = pd.read_csv(tmp_path / "cli.csv").query("role == 'target'").set_index(["method", "protocol"]).accuracy
    before = _store_entries(tmp_path / "store")
    at = AppTest.from_file(APP, default_timeout=600)
    at.query_params["page"] = "explorer"
    at = _settled(at.run())
    _ok(at)
    added = {k: v for k, v in _store_entries(tmp_path / "store").items() if k not in before}
    # no embeddings: the two UMAP layouts, and results kept for a restart (empty arrays: the choice of
    # K and lam and CLIP's score beside it, an accuracy table per method and baseline, the confusions
    # of CLIP and of ICM, and the model choice of each of the four targets)
    layouts = [shape for shape in added.values() if shape != [0]]
    assert len(layouts) == 2 and all(shape[1] == 2 for shape in layouts) and len(added) == 2 + 2 + 3 + 2 + 4
    # the model to deploy is the CLI's choice for the same target
    assert f"**For cartoon, deploy {_chosen_label(tmp_path / 'cli.csv', 'cartoon')}**" in at.success[0].value
    shown = _table(at)["cartoon (target)"]
    for method, label in (("CLIP", "CLIP"), ("icm", "ICM"), ("pca", "PCA"), ("augmentation", "Augmentation")):
        for protocol in ("linear probe", "zero-shot"):
            assert shown[f"{label} {protocol}"] == pytest.approx(cli[method, protocol], abs=1e-9), (method, protocol)
    assert not at.warning, [w.value for w in at.warning]  # the demo's metadata files are not "skipped images"
    assert len(at.get("plotly_chart")) == 4  # accuracy, two UMAP panels, confusion matrices
    table = _table(at)
    assert "cartoon (target)" in table.columns  # the demo's shifted domain is the default target
    change = table["target change vs CLIP"]
    assert change["ICM linear probe"] >= 0.10  # chosen honestly, ICM beats the full-space probe
    assert {"PCA linear probe", "Augmentation linear probe"} <= set(table.index)
    note = next(i.value for i in at.info if "chosen by" in i.value)
    assert "intervened source validation" in note and "no target label" in note
    assert at.sidebar.multiselect(key="ctl_pairs").value == ["true:colour", "true:background"]
    # the gallery shows image pairs once a set is chosen, and intervened validation rows are named as such
    gallery = at.selectbox(key="gallery_set")
    assert gallery.value is None and not at.get("image")  # nothing rendered (nor torch imported) unasked
    assert "counterfactual:colour+background (intervened validation: scored, never fitted)" in gallery.options
    assert not _gallery_expander(at).proto.expanded
    gallery.set_value("true:colour").run()
    _ok(at)
    assert len(at.get("image")) >= 8  # four pairs: the image and its intervened version
    assert _gallery_expander(at).proto.expanded  # the rerun of the choice keeps it open
    at.selectbox(key="gallery_set").set_value("counterfactual:colour+background").run()
    _ok(at)
    assert len(at.get("image")) >= 8
    # the prompt choice: the usual-look prompts trap CLIP's zero-shot on the target
    zero_shot = _table(at).loc["CLIP zero-shot", "cartoon (target)"]
    at.sidebar.radio(key="ctl_prompts").set_value("usual_look").run()
    _ok(at)
    assert _table(at).loc["CLIP zero-shot", "cartoon (target)"] < zero_shot - 0.3
    # another set of image interventions changes the augmentation baseline (it trains on them)
    before = _table(at)
    at.sidebar.multiselect(key="ctl_pairs").set_value(["image:random"]).run()
    _ok(at)
    assert not _table(at).loc["Augmentation linear probe"].equals(before.loc["Augmentation linear probe"])


def _gallery_expander(at: AppTest):
    return next(e for e in at.expander if e.label.startswith("Interventions gallery"))


def _page_progress(monkeypatch, ticks: list[float]) -> tuple[dict[str, list[str]], object]:
    """The page's StageProgress drawing into lists (the bar's texts, the stages done) on a clock of ``ticks``."""
    from dashboard.screens import common

    shown: dict[str, list[str]] = {"bar": [], "done": []}

    class Element:
        def progress(self, value, text):
            shown["bar"].append(text)

        def caption(self, text):
            shown["done"].append(text)

    clock = iter(ticks)
    monkeypatch.setattr(common.st, "progress", lambda *a, **kw: Element())
    monkeypatch.setattr(common.st, "empty", Element)
    # the page's clock only (patching time.monotonic itself would stop every other clock, the layout worker's too)
    monkeypatch.setattr(common, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    return shown, common.StageProgress()


def test_embedding_progress_times_each_stage_on_its_own_and_lists_those_done(monkeypatch):
    """The time left is the running stage's own rate (it was the whole pass's: a late stage of a
    cold demo claimed minutes), and the stages done stay listed under the bar."""
    from dashboard.screens import common

    shown, progress = _page_progress(monkeypatch, [0.0, 0.0, 100.0, 100.0, 110.0])
    progress("images", 0, 10)
    progress("images", 10, 10)
    progress("true:colour", 0, 100)
    progress("true:colour", 50, 100)
    assert shown["bar"][-1] == "true:colour: 50/100, about 10 s left"
    assert shown["done"] == ["Done: images 10 (100.0 s)"]
    assert common.stage_summary("drawing the demo world and loading the model", 1, 3.94) == (
        "drawing the demo world and loading the model (3.9 s)")  # a one-step stage shows no count


def test_page_progress_says_served_from_cache_and_times_only_what_it_computes(monkeypatch):
    shown, progress = _page_progress(monkeypatch, [0.0, 0.0, 5.0, 15.0, 20.0])
    progress("hash images", 1200, 1200)
    assert shown["bar"][-1] == "hash images: served from cache (1,200 items)"
    progress("images", 40, 100)  # 40 from the store
    assert shown["bar"][-1] == "images: 40/100" and shown["done"] == [
        "Done: hash images served from cache (1,200 items)"]
    progress("images", 50, 100)  # 10 computed in 10 s: 50 left take 50 s (not 40 + 10 done in 10 s)
    assert shown["bar"][-1] == "images: 50/100, about 50 s left"
    progress("class prompts", 7, 7)
    assert shown["done"][-1].endswith("images 100 (15.0 s)")


def test_a_new_target_returns_the_old_one_to_the_sources():
    at = _app()
    domains = ["env 1", "env 2", "env 3", "env 4"]
    assert at.sidebar.multiselect(key="ctl_sources").value == ["env 1", "env 2", "env 3"]
    at.sidebar.selectbox(key="ctl_target").set_value("env 3").run()
    at.sidebar.selectbox(key="ctl_target").set_value("env 4").run()
    _ok(at)
    assert at.sidebar.multiselect(key="ctl_sources").value == [d for d in domains if d != "env 4"]
    assert list(_table(at).columns)[:3] == ["env 1", "env 2", "env 3"]
    # a source the user took out stays out
    at.sidebar.multiselect(key="ctl_sources").set_value(["env 1", "env 3"]).run()
    at.sidebar.selectbox(key="ctl_target").set_value("env 3").run()
    _ok(at)
    assert at.sidebar.multiselect(key="ctl_sources").value == ["env 1", "env 4"]


def test_cache_settings_show_the_size_bound_it_and_clear_this_data_sets_entries(tmp_path, monkeypatch):
    from clip_icm import cache

    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path))
    monkeypatch.setenv(cache.MAX_SIZE_VAR, "")  # the page sets it for the process: restored after the test
    at = _app()
    _ok(at)
    ours = cache.entries(tmp_path, dataset="synthetic SCM")
    assert {e.kind for e in ours} == {"layouts", "kept results"}  # the page's two maps and its results
    cached.cache_info.clear()  # the sidebar, drawn first, showed the folder before this run wrote; and for 30 s
    at.run()
    report = cache.info(tmp_path)
    caption = next(c.value for c in at.sidebar.caption if c.value.endswith("UMAP kernels and memos."))
    assert caption.startswith(f"{cache.format_size(report['total_bytes'])} in `{tmp_path}`: {len(ours)} entries")
    at.sidebar.text_input(key="cache_bound").set_value("10 parsecs").run()
    assert [e.value for e in at.error] == ["unknown size unit 'parsecs' in '10 parsecs'; units: B, KB, MB, GB, TB "
                                           "(powers of 1000), KiB, MiB, GiB, TiB (powers of 1024)"]
    at.sidebar.text_input(key="cache_bound").set_value("2GB").run()
    _ok(at)
    assert os.environ[cache.MAX_SIZE_VAR] == "2GB" and len(cache.entries(tmp_path)) == len(ours)  # all fit
    assert "Removed 0 entries (0 B) to stay under the bound." in [c.value for c in at.sidebar.caption]
    os.environ[cache.MAX_SIZE_VAR] = "3GB"  # set by another session: this one's unchanged box does not undo it
    at.run()
    assert os.environ[cache.MAX_SIZE_VAR] == "3GB"
    at.sidebar.button(key="cache_clear_dataset").click().run()
    _ok(at)
    assert any(c.value.startswith(f"Removed {len(ours)} entries") for c in at.sidebar.caption)
    assert cache.entries(tmp_path, dataset="synthetic SCM") == []
    assert len(at.get("plotly_chart")) == 4  # the page keeps what it holds in memory
    os.environ[cache.MAX_SIZE_VAR] = "lots"  # a bad bound from the environment: said, and mended, in the settings
    cached.cache_info.clear()
    at.run()
    assert not at.exception and any("$CLIP_ICM_CACHE_MAX_SIZE: not a size: 'lots'" in e.value for e in at.error)
    at.sidebar.text_input(key="cache_bound").set_value("").run()
    assert cache.MAX_SIZE_VAR not in os.environ


def test_the_explorers_report_button_makes_the_report_at_the_pages_settings(monkeypatch, tmp_path):
    """The button hands Streamlit a maker (the file is built on a click): at K and lam set by hand it is
    the report at those, for the page's target and method, opened on the page's store."""
    from dashboard import controls
    from dashboard.screens import common, explorer

    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path))
    request = service.EmbeddingRequest(source="synthetic", n_per_domain=30)
    emb = service.load_embeddings(request)
    target = emb.domain_names[-1]
    choice = controls.ProjectionChoice(target=target, sources=tuple(emb.domain_names[:-1]), method="icm",
                                       baselines=(), lam_mode="relative", selection="off",
                                       protocol="linear probe", prompts="classes", pair_sets=())
    ctx = common.Context(request=request, emb=emb, choice=choice, K=3, lam=2.0, selection=None, every_domain=emb)
    fit = common.fitted(ctx, 3, 2.0)
    html = explorer._report_maker(ctx, fit)()
    assert html.startswith("<!DOCTYPE html>") and "K = 3" in html and "λ = 2" in html
    assert f"{target}" in html and html.count("<script") >= 2


def test_the_model_choice_reads_the_unlabelled_target_images_only_when_asked():
    """Source data only by default; the Advanced control switches the choice (never a label) to also reading
    the target's unlabelled images, and the page's rule caption and overview say which."""
    def rule_captions(at):
        return [c.value for c in at.caption if "chosen without a target label" in c.value.lower()]

    at = _app()
    _ok(at)
    assert rule_captions(at) and not any("unlabelled target images" in c for c in rule_captions(at))
    assert any("from source data only" in c.value for c in at.caption)
    at.sidebar.radio(key="ctl_choice_mode").set_value("unlabelled-target").run()
    at = _settled(at)
    _ok(at)
    assert any("unlabelled target images" in c for c in rule_captions(at))
    assert any("from source data and the target's unlabelled images" in c.value for c in at.caption)
