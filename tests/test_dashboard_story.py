"""The Story page and the address (deep links) under AppTest, on the synthetic source (no model);
the helpers it reads from the service layer on a small ToyDomains world."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from clip_icm import service
from dashboard import texts
from dashboard.screens import story
from tests.test_dashboard import APP, TIMEOUT, _ok, clean_caches, workers_idle  # noqa: F401 (the fixture)

HEADINGS = [heading for _, _, heading in texts.STORY_STEPS]


def _open(address: dict[str, str], **state) -> AppTest:
    """The app at an address ("/?step=3&target=env 1"), settled once the maps are laid out."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for name, value in address.items():
        at.query_params[name] = value
    for key, value in {"ctl_source": "synthetic", "ctl_n_synth": 60, **state}.items():
        at.session_state[key] = value
    at.run()
    assert workers_idle()
    return at.run()


def _heading(at: AppTest) -> str:
    return at.subheader[0].value


def test_the_story_is_the_first_page_and_opens_on_its_first_step():
    at = _open({})
    _ok(at)
    assert at.title[0].value == texts.STORY_TITLE
    assert _heading(at) == HEADINGS[0]
    assert at.query_params["step"] == "1"


@pytest.mark.parametrize("step", range(1, len(HEADINGS) + 1))
def test_every_step_renders_a_picture_sentences_and_the_maths(step):
    at = _open({"step": str(step)})
    _ok(at)
    assert _heading(at) == HEADINGS[step - 1]
    pictures = len(at.get("plotly_chart")) + len(at.get("imgs")) + len(at.dataframe) + len(at.info)
    assert pictures >= 1  # a picture (or, for the synthetic world's images, a note saying there are none)
    sentences = [m.value for m in at.markdown if m.value.count(". ") >= 1]
    assert sentences, "no sentences under the picture"
    maths = next(e for e in at.expander if e.label == "The maths")
    assert maths.get("latex") and all(latex.value for latex in maths.get("latex"))


def test_next_and_back_move_one_step_and_back_is_off_on_the_first():
    at = _open({})
    assert at.button(key="story_back").disabled
    at.button(key="story_next").click().run()
    assert _heading(at) == HEADINGS[1] and at.query_params["step"] == "2"
    at.button(key="story_next").click().run()
    at.button(key="story_back").click().run()
    _ok(at)
    assert _heading(at) == HEADINGS[1]
    at.button(key="story_jump_6").click().run()  # the step indicator is a way to any step
    assert _heading(at) == HEADINGS[6]


def test_the_last_step_leads_to_the_explorer():
    at = _open({"step": str(len(HEADINGS))})
    _ok(at)
    assert not [b for b in at.button if b.key == "story_next"]
    assert at.get("page_link") and "Explorer" in at.get("page_link")[0].proto.label


def test_a_deep_link_reopens_the_step_target_k_and_lam():
    address = {"step": "failure", "target": "env 1", "K": "4", "lam": "30", "method": "icm", "baselines": "pca"}
    at = _open(address)
    _ok(at)
    assert _heading(at) == HEADINGS[2]
    assert at.session_state["ctl_target"] == "env 1"
    assert (at.session_state["ctl_K"], at.session_state["ctl_lam"]) == (4, 30.0)
    assert at.session_state["ctl_selection"] == "off"  # a bookmarked hand setting is not re-chosen
    assert at.session_state["ctl_baselines"] == ["pca"]
    # the page writes what it shows back: the address it leaves is the one that reopens it
    shown = {name: at.query_params[name] for name in ("step", "target", "K", "lam", "method", "baselines")}
    assert shown == {"step": "3", "target": "env 1", "K": "4", "lam": "30", "method": "icm", "baselines": "pca"}
    again = _open(shown)
    assert _heading(again) == HEADINGS[2] and again.session_state["ctl_target"] == "env 1"
    assert (again.session_state["ctl_K"], again.session_state["ctl_lam"]) == (4, 30.0)


def test_a_deep_link_opens_another_page_and_a_rule_chosen_k_stays_out_of_the_address():
    at = _open({"page": "explorer", "target": "env 1"})
    _ok(at)
    assert at.title[0].value == "CLIP-ICM Explorer"
    assert at.session_state["ctl_target"] == "env 1"
    assert "K" not in at.query_params and "lam" not in at.query_params  # the rule chose them: chosen again


@pytest.mark.parametrize("bad", [{"step": "99"}, {"step": "-3"}, {"step": "nonsense"}, {"target": "nowhere"},
                                 {"K": "many", "lam": "1e99"}, {"source": "mars"}, {"page": "nope"}])
def test_a_bad_address_opens_a_usable_view(bad):
    at = _open(bad)
    _ok(at)
    assert at.subheader or at.title


def test_the_choice_of_every_target_is_made_in_the_background_and_the_step_follows(monkeypatch):
    """Steps 7 and 8 never compute four model choices in a rerun: the worker makes them (started on
    any step), the step shows a status meanwhile and draws from the store once they are made."""
    import threading

    service.choice_worker().forget()  # an earlier test's finished choice of this world would be read at once
    gate, choose = threading.Event(), service.evaluate_and_choose_every_target
    monkeypatch.setattr(service, "evaluate_and_choose_every_target", lambda *a, **kw: gate.wait(60) and choose(*a, **kw))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["step"] = "choice"
    for key, value in {"ctl_source": "synthetic", "ctl_n_synth": 60}.items():
        at.session_state[key] = value
    at.run()
    _ok(at)
    assert any("in the background" in i.value for i in at.info) and not at.get("plotly_chart")
    gate.set()
    assert workers_idle()
    at.run()
    _ok(at)
    assert at.get("plotly_chart") and not any("in the background" in i.value for i in at.info)


def test_step_from_address_reads_numbers_and_slugs():
    assert story.step_from_address("failure") == 2
    assert story.step_from_address("1") == 0
    assert story.step_from_address("0") == 0
    assert story.step_from_address("99") == len(HEADINGS) - 1
    assert story.step_from_address(None) == 0 and story.step_from_address("x") == 0
    assert list(story.STEPS) == [slug for slug, _, _ in texts.STORY_STEPS]  # one function per step


def test_lam_tried_on_the_story_is_the_apps_setting():
    at = _open({"step": "projection"})
    at.select_slider(key="story_lam").set_value(100.0).run()
    _ok(at)
    assert at.session_state["ctl_lam"] == 100.0 and at.session_state["ctl_selection"] == "off"
    assert "λ = 100" in " ".join(m.value for m in at.markdown)


def test_true_factor_and_examples_on_a_toydomains_world(tmp_path):
    from clip_icm.toydomains import generate_toydomains

    root = generate_toydomains(tmp_path / "world", n_per_class_per_domain=3, image_size=16)
    paths = np.array(sorted(str(p) for p in root.rglob("*.png")))
    request = service.EmbeddingRequest(source="folder", root=str(root))
    emb = SimpleNamespace(paths=paths)
    colours = service.true_factor(request, emb, "colour")
    from clip_icm.toydomains import load_factors

    table = load_factors(root)
    first = str(Path(paths[0]).relative_to(root))
    assert colours[0] == table.loc[first, "colour"] and len(colours) == len(paths)
    assert service.true_factor(service.EmbeddingRequest(source="synthetic"), emb) is None
    assert service.true_factor(request, emb, "no such factor") is None


def test_neighbour_agreement_and_seeded_samples():
    X = np.repeat(np.eye(4), 10, axis=0) + 0.01 * np.random.default_rng(0).normal(size=(40, 4))
    grouped, mixed = np.repeat(np.arange(4), 10), np.tile(np.arange(4), 10)
    assert service.neighbour_agreement(X, grouped, k=5) == 1.0
    assert service.neighbour_agreement(X, mixed, k=5) < 0.5
    with pytest.raises(ValueError, match="k must be"):
        service.neighbour_agreement(X, grouped, k=40)
    rows = list(range(100, 200))
    sample = service.sample_rows(rows, 12)
    assert sample == service.sample_rows(rows, 12) and sample != rows[:12] and set(sample) <= set(rows)
    assert service.sample_rows([3, 1], 12) == [1, 3]
