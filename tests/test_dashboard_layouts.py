"""The Explorer's maps come from the background layout worker: a rerun never waits for a layout
(streamlit.testing.v1.AppTest on the synthetic source; a layout is held on an event to show it)."""
import json
import re
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from clip_icm import service
from dashboard import cached, texts
from tests.test_dashboard import workers_idle

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
TIMEOUT = 240


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """An empty store (no layout of an earlier test is found there) and an idle worker."""
    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path))
    cached.clear()
    yield
    cached.clear()
    assert workers_idle()


def _app(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["page"] = "explorer"  # "/" opens the Story
    for key, value in {"ctl_source": "synthetic", "ctl_n_synth": 100, **state}.items():
        at.session_state[key] = value
    return at.run()


def _settled(at: AppTest) -> AppTest:
    """The page once the worker has laid out all it was asked for (what its status's polling redraws)."""
    assert workers_idle()
    return at.run()


def _titles(at: AppTest) -> list[str]:
    return [json.loads(chart.proto.spec)["layout"].get("title", {}).get("text", "") for chart in at.get("plotly_chart")]


def _map_titles(at: AppTest) -> list[str]:
    """The two maps' titles (the confusion matrices and the accuracy chart are drawn beside them)."""
    return [t for t in _titles(at) if t.startswith(("Full CLIP space", "Invariant space", "Stale: "))]


def _laying_out(at: AppTest) -> list[str]:
    return [i.value for i in at.info if "laying out" in i.value]


def _lay_out_with(monkeypatch, replacement) -> None:
    """The server's worker computes its layouts with ``replacement(lay_out, X, init=..., seed=...)``,
    ``lay_out`` its own (UMAP in the worker's process)."""
    worker = service.layout_worker()
    lay_out = worker.lay_out
    monkeypatch.setattr(worker, "lay_out", lambda X, **kwargs: replacement(lay_out, X, **kwargs))


def _hold_layouts(monkeypatch) -> tuple[threading.Event, list]:
    """Every layout from now on waits for the returned event (at most a minute: never a hung test)."""
    gate, started = threading.Event(), []

    def held(lay_out, X, **kwargs):
        started.append(kwargs.get("init") is not None)
        gate.wait(60)
        return lay_out(X, **kwargs)

    _lay_out_with(monkeypatch, held)
    return gate, started


def _once_started(at: AppTest, started: list, jobs: int = 1) -> AppTest:
    """The page again once the worker has taken up ``jobs`` held layouts (under load the worker
    thread may not have picked one up by the time the first rerun draws its status)."""
    for _ in range(600):
        if len(started) >= jobs:
            return at.run()
        threading.Event().wait(0.1)
    raise AssertionError(f"the worker took up {len(started)} of {jobs} layouts in a minute")


def test_a_k_change_returns_before_its_layout_shows_the_stale_map_and_then_the_new_one(monkeypatch):
    at = _settled(_app(ctl_selection="off"))
    assert not at.exception and not _laying_out(at)
    assert _map_titles(at) == ["Full CLIP space", "Invariant space (ICM, K = 8, lam = 1)"]
    gate, started = _hold_layouts(monkeypatch)
    try:
        at.sidebar.slider(key="ctl_K").set_value(3).run()
        # the rerun is back while the invariant layout is still held in the worker
        at = _once_started(at, started)
        assert not gate.is_set() and started == [True]
        assert not at.exception and not at.error
        assert _titles(at)[0] == "Accuracy per domain (ICM, K = 3, lam = 1)"  # the numbers are already new
        status = _laying_out(at)
        assert len(status) == 1 and "invariant space (ICM, K = 3, λ = 1)" in status[0] and "running for" in status[0]
        # the last map of that space, marked stale, and no export of a map this setting has not drawn
        assert _map_titles(at) == ["Full CLIP space", "Stale: Invariant space (ICM, K = 8, lam = 1); laying out "
                                                       "K = 3, lam = 1"]
        assert "umap_invariant (.html)" not in [b.label for b in at.get("download_button")]
    finally:
        gate.set()
    _settled(at)
    assert not at.exception and not _laying_out(at)
    assert _map_titles(at) == ["Full CLIP space", "Invariant space (ICM, K = 3, lam = 1)"]
    assert "umap_invariant (.html)" in [b.label for b in at.get("download_button")]


def test_a_move_next_to_the_sliders_reads_the_numbers_made_ahead_and_a_move_further_waits_for_them(monkeypatch):
    """From EVALUATE_AHEAD_FROM images (lowered here) the settings next to the page's are evaluated in the
    background: a K move by one reruns without evaluating or predicting in the page; a move by two does not
    either: its numbers are made in the evaluation process while the page shows the last ones
    (tests/test_dashboard_numbers.py), and drawn once they land."""
    from clip_icm import evaluation
    from dashboard.screens import explorer

    monkeypatch.setattr(explorer, "EVALUATE_AHEAD_FROM", 0)
    at = _settled(_app(ctl_selection="off"))
    assert not at.exception
    assert {"K = 9, λ = 1", "K = 7, λ = 1", "K = 8, λ = 3", "K = 8, λ = 0.3"} <= {
        job.label for job in service.ahead_worker().jobs() if job.priority == service.SPECULATIVE}
    calls, split, predict = [], evaluation.evaluate_split, evaluation.predict_all
    monkeypatch.setattr(evaluation, "evaluate_split", lambda *a, **kw: calls.append("table") or split(*a, **kw))
    monkeypatch.setattr(evaluation, "predict_all", lambda *a, **kw: calls.append("confusion") or predict(*a, **kw))
    at.sidebar.slider(key="ctl_K").set_value(9).run()
    assert not at.exception and not at.error
    assert _titles(at)[0] == "Accuracy per domain (ICM, K = 9, lam = 1)" and calls == []
    at = _settled(at)
    at.sidebar.slider(key="ctl_K").set_value(11).run()
    assert not at.exception and calls == []
    at = _settled(at)
    assert not at.exception and _titles(at)[0] == "Accuracy per domain (ICM, K = 11, lam = 1)"
    assert calls == []


def test_a_new_data_set_shows_placeholders_until_both_maps_are_laid_out(monkeypatch):
    gate, started = _hold_layouts(monkeypatch)
    worker = service.layout_worker()
    try:
        at = _app(ctl_selection="off")
        for _ in range(600):  # with two lanes, until the second has taken up the invariant job too
            if worker.slots == 1 or all(job.started_at is not None for job in worker.jobs()):
                break
            threading.Event().wait(0.1)
        at = _once_started(at, started)
        assert not at.exception and not gate.is_set() and started == [False]  # the full space first
        assert _titles(at)[0].startswith("Accuracy per domain") and len(at.get("plotly_chart")) == 2  # + confusions
        assert "full space, running for" in _laying_out(at)[0]
        # with two layout processes, taken up by the worker's other thread, which waits for the full space's layout
        where = "waiting for the full space layout" if worker.slots > 1 else "queued behind 1 layout"
        assert f"invariant space (ICM, K = 8, λ = 1), {where}" in _laying_out(at)[0]
        placeholders = [i.value for i in at.info if i.value.endswith("appears here when ready.")]
        assert len(placeholders) == 2
    finally:
        gate.set()
    _settled(at)
    assert len(at.get("plotly_chart")) == 4 and not _laying_out(at)


def test_a_failing_layout_is_a_message_on_the_page_and_can_be_tried_again(monkeypatch):
    failing = [True]

    def invariant_fails(lay_out, X, **kwargs):
        if failing[0] and kwargs.get("init") is not None:
            raise RuntimeError("numba exploded")
        return lay_out(X, **kwargs)

    _lay_out_with(monkeypatch, invariant_fails)
    at = _settled(_app(ctl_selection="off"))
    assert not at.exception and not _laying_out(at)
    # (a message is shown as plain text: texts.plain escapes what markdown would read)
    assert [e.value for e in at.error] == ["The invariant space (ICM, K = 8, λ = 1) layout failed: "
                                           + texts.plain("RuntimeError: numba exploded")]
    assert "Full CLIP space" in _titles(at) and len(at.get("plotly_chart")) == 3  # the full map is drawn
    at.run()  # a rerun shows the same message: the failed layout is not tried on every rerun
    assert len(at.error) == 1 and service.layout_worker().waiting() == 0
    failing[0] = False
    at.button(key="relayout_umap_invariant").click().run()
    _settled(at)
    assert not at.error and "Invariant space (ICM, K = 8, lam = 1)" in _titles(at)


def test_a_user_error_in_the_layout_process_reads_as_its_message(monkeypatch):
    def refuses(lay_out, X, **kwargs):
        return lay_out(X[:0], **kwargs)  # no rows: the layout process refuses them, with reduce's message

    _lay_out_with(monkeypatch, refuses)
    at = _settled(_app(ctl_selection="off"))
    assert not at.exception
    # the full layout fails, and the invariant one, which starts from it, says the same
    why = texts.plain("layout_2d needs a non-empty 2-D array, got shape (0, 16)")
    assert [e.value for e in at.error] == [f"The full space layout failed: {why}",
                                           f"The invariant space (ICM, K = 8, λ = 1) layout failed: {why}"]


def test_the_cells_the_selection_considered_are_laid_out_before_a_slider_lands_on_them(monkeypatch):
    at = _settled(_app(ctl_selection="source_val"))
    assert not at.exception and not _laying_out(at)
    K, lam = at.sidebar.slider(key="ctl_K").value, at.sidebar.select_slider(key="ctl_lam").value
    cells = {(int(k), float(l)) for k, l in (re.search(r"K = (\d+), λ = (\S+)\)", job.label).groups()
                                             for job in service.layout_worker().jobs() if "invariant" in job.label)}
    assert len(cells) > 2  # the chosen cell and neighbours of it
    # a cell one slider away from the chosen one (moving a slider turns the selection off)
    neighbour = next(c for c in sorted(cells) if (c[0] == K) != (c[1] == lam))

    def no_more(lay_out, X, **kwargs):
        raise AssertionError("a layout was computed after the slider moved")

    _lay_out_with(monkeypatch, no_more)
    if neighbour[0] != K:
        at.sidebar.slider(key="ctl_K").set_value(neighbour[0]).run()
    else:
        at.sidebar.select_slider(key="ctl_lam").set_value(neighbour[1]).run()
    assert not at.exception and not at.error and not _laying_out(at)
    assert at.sidebar.selectbox(key="ctl_selection").value == "off"
    assert f"Invariant space (ICM, K = {neighbour[0]}, lam = {neighbour[1]:g})" in _titles(at)


class _FinishesWhileLookedAt:
    """A finished layout job that says it is still laying out the first time it is asked anything,
    and is finished from then on: a job that finishes in the middle of a page's run."""

    def __init__(self, job) -> None:
        self.job, self.asked = job, False

    def _first(self) -> bool:
        first, self.asked = not self.asked, True
        return first

    @property
    def pending(self) -> bool:
        return True if self._first() else self.job.pending

    def result(self):
        return None if self._first() else self.job.result()

    def __getattr__(self, name):
        return getattr(self.job, name)


def test_a_layout_finishing_during_a_run_leaves_no_map_waiting_without_a_status(monkeypatch):
    """The lost rerun of the classroom bench (bench/RESULTS.md): the page read the job as pending when it drew
    a stale map or a placeholder, then as finished when it chose whether to poll, and nothing polled again."""
    at = _settled(_app(ctl_selection="off"))
    real, lying = service.invariant_layout_job, []

    def once(*args, **kwargs):
        job = real(*args, **kwargs)
        if "priority" in kwargs or lying:  # the speculative ones, and every run after the first
            return job
        lying.append(_FinishesWhileLookedAt(job))
        return lying[-1]

    monkeypatch.setattr(service, "invariant_layout_job", once)
    at.run()
    assert lying and not at.exception
    waiting = [i.value for i in at.info if i.value.endswith("appears here when ready.")]
    stale = [t for t in _map_titles(at) if t.startswith("Stale: ")]
    status = [i.value for i in at.info if i.value.startswith("Maps laying out in the background")]
    if waiting or stale:  # drawn as not ready: then a status polls for it
        assert status, (waiting, stale)
    assert _map_titles(at) == ["Full CLIP space", "Invariant space (ICM, K = 8, lam = 1)"] or status


def test_a_k_change_asks_for_its_layout_before_the_numbers_and_a_first_page_after_them(monkeypatch):
    """The invariant layout of a K change runs while the rerun draws the accuracy table; a data set's first
    page asks for its pair only beside its maps, after its numbers, which the pair would slow."""
    from dashboard.screens import explorer

    seen, real = [], explorer._accuracy_section

    def recording(ctx, K, lam, evaluating):
        seen.append((K, any(f"K = {K}," in job.label for job in service.layout_worker().jobs())))
        return real(ctx, K, lam, evaluating)

    monkeypatch.setattr(explorer, "_accuracy_section", recording)
    at = _settled(_app(ctl_selection="off"))
    assert seen[0] == (8, False)
    at.sidebar.slider(key="ctl_K").set_value(3).run()
    assert seen[-1] == (3, True) and not at.exception
    _settled(at)
    assert "Invariant space (ICM, K = 3, lam = 1)" in _map_titles(at)
