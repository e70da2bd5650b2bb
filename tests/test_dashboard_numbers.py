"""From EVALUATE_AHEAD_FROM images (lowered here to the synthetic source's 400) a slider move onto a setting
whose numbers the store lacks returns at once: the background evaluation job makes them (in the server's
evaluation process) while the page shows the last numbers under a status, and redraws once they land
(streamlit.testing.v1.AppTest; the evaluation is held on an event to show the pending state)."""
import json
import threading

import pytest

from clip_icm import service
from dashboard import cached
from dashboard.screens import explorer
from tests.test_dashboard import workers_idle
from tests.test_dashboard_layouts import _app, _settled, _titles


@pytest.fixture(autouse=True)
def large(tmp_path, monkeypatch):
    """An empty store, idle workers, and the synthetic source's 400 images treated as a large data set."""
    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path))
    monkeypatch.setattr(explorer, "EVALUATE_AHEAD_FROM", 0)
    cached.clear()
    yield
    cached.clear()
    assert workers_idle()


def _evaluating(at) -> list[str]:
    return [i.value for i in at.info if i.value.startswith("Evaluating")]


def _accuracy_title(at) -> str:
    return next(t for t in _titles(at) if t.startswith("Accuracy per domain"))


def _hold_evaluations(monkeypatch) -> tuple[threading.Event, list]:
    """Every background evaluation from now on waits for the returned event (at most a minute), then runs."""
    gate, started, evaluate_ahead = threading.Event(), [], service.evaluate_ahead

    def held(*args, **kwargs):
        started.append(args[3][0])
        gate.wait(60)
        return evaluate_ahead(*args, **kwargs)

    monkeypatch.setattr(service, "evaluate_ahead", held)
    return gate, started


def _numbers_job(K: int) -> service.LayoutJob:
    return next(job for job in service.ahead_worker().jobs() if job.label == f"K = {K}, λ = 1"
                and job.priority == service.NOW)


def test_a_move_shows_the_pending_state_then_the_new_numbers_as_a_synchronous_page_computes_them(monkeypatch, tmp_path):
    at = _settled(_app(ctl_selection="off"))
    assert not at.exception and _accuracy_title(at) == "Accuracy per domain (ICM, K = 8, lam = 1)"
    assert not _evaluating(at)  # a data set's first page computes its own numbers
    before = _confusions(at)
    gate, started = _hold_evaluations(monkeypatch)
    try:
        at.sidebar.slider(key="ctl_K").set_value(11).run()  # two steps: not a neighbour evaluated ahead
        assert not at.exception and not at.error
        status = _evaluating(at)
        assert len(status) == 1 and "Evaluating K = 11, λ = 1 in the background" in status[0]
        assert "K = 8, λ = 1's" in status[0]  # which numbers stand in meanwhile, by their setting
        # the last chart and confusions, under their own titles; no headline, export or hand-setting note of them
        assert _accuracy_title(at) == "Accuracy per domain (ICM, K = 8, lam = 1)"
        assert _confusions(at) == before
        assert not at.metric and "Accuracy table (.csv)" not in [b.label for b in at.get("download_button")]
        assert _numbers_job(11).pending
    finally:
        gate.set()
    at = _settled(at)
    assert not at.exception and not at.error and not _evaluating(at)
    assert _accuracy_title(at) == "Accuracy per domain (ICM, K = 11, lam = 1)"
    assert _confusions(at) != before and at.metric
    made_ahead = (at.dataframe[0].value, _confusions(at))
    assert [configs[0].n_components for configs in started][0] == 11  # the move's own setting first

    # the same move on a page that evaluates in its rerun (below EVALUATE_AHEAD_FROM), from an empty store
    monkeypatch.setattr(explorer, "EVALUATE_AHEAD_FROM", 10 ** 9)
    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path / "synchronous"))
    assert workers_idle()
    cached.clear()
    at = _settled(_app(ctl_selection="off"))
    at.sidebar.slider(key="ctl_K").set_value(11).run()
    assert not at.exception and not _evaluating(at)
    assert _accuracy_title(at) == "Accuracy per domain (ICM, K = 11, lam = 1)"
    assert at.dataframe[0].value.equals(made_ahead[0])
    assert _confusions(at) == made_ahead[1]


def _confusions(at) -> list:
    """The confusion matrices' counts, as drawn."""
    for chart in at.get("plotly_chart"):
        traces = json.loads(chart.proto.spec)["data"]
        if traces and all(trace.get("type") == "heatmap" for trace in traces):
            return [trace["z"] for trace in traces]
    raise AssertionError("no confusion matrices on the page")


def test_an_evaluation_that_fails_says_why_on_the_page_and_evaluate_again_retries(monkeypatch):
    at = _settled(_app(ctl_selection="off"))
    evaluate_ahead = service.evaluate_ahead

    def failing(*args, **kwargs):
        raise service.ServiceError("the probe found no rows")

    monkeypatch.setattr(service, "evaluate_ahead", failing)
    at.sidebar.slider(key="ctl_K").set_value(11).run()
    at = _settled(at)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors == ["Could not evaluate K = 11, λ = 1: the probe found no rows"]
    assert not _evaluating(at) and "Accuracy per domain (ICM, K = 8, lam = 1)" not in _titles(at)
    monkeypatch.setattr(service, "evaluate_ahead", evaluate_ahead)
    at.button(key="evaluate_again").click().run()
    at = _settled(at)
    assert not at.exception and not at.error
    assert _accuracy_title(at) == "Accuracy per domain (ICM, K = 11, lam = 1)"


def test_a_data_set_change_drops_what_waits_for_the_old_one(monkeypatch):
    at = _settled(_app(ctl_selection="off"))
    old = {job.group for job in service.ahead_worker().jobs()}
    gate, started = _hold_evaluations(monkeypatch)
    try:
        at.sidebar.slider(key="ctl_K").set_value(11).run()
        for _ in range(600):  # the worker takes up K = 11's job (held)
            if started:
                break
            threading.Event().wait(0.1)
        at.sidebar.slider(key="ctl_K").set_value(13).run()  # queued behind it
        passed, left = _numbers_job(11), _numbers_job(13)
        assert passed.started_at is not None and left.pending and left.started_at is None
        assert "Evaluating K = 13, λ = 1" in _evaluating(at)[0]
        at.sidebar.slider(key="ctl_n_synth").set_value(150).run()  # another data set: its first page
        assert not at.exception and not _evaluating(at)
        assert "600 images" in at.caption[0].value.replace(",", "")  # the new set's numbers, made by its page
        assert left.future.cancelled()  # the stop the page left on the old data set, never run
        waiting = [job for job in service.ahead_worker().jobs() if job.group in old and job.started_at is None]
        assert waiting == []  # nor the old one's neighbours
    finally:
        gate.set()
    assert workers_idle()
    assert left.started_at is None  # dropped before it ran, and not run after
