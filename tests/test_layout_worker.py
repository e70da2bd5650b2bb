"""The background layout worker (clip_icm/service/layout_worker.py) and the layout jobs of the maps."""
import importlib
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest

from clip_icm import service
from clip_icm.errors import InvalidInput
from clip_icm.service.layout_worker import NOW, SPECULATIVE, LayoutWorker
from clip_icm.store import EmbeddingStore

WAIT_S = 60  # a bound on every wait, so that a broken worker fails the test instead of hanging it


def _blocked(worker: LayoutWorker, gate: threading.Event, ran: list):
    """A first job that holds the worker's thread until ``gate`` is set."""
    started = threading.Event()

    def hold():
        started.set()
        assert gate.wait(WAIT_S)
        ran.append("blocker")
        return np.zeros((1, 2))

    job = worker.submit("blocker", hold, label="blocker", group="a")
    assert started.wait(WAIT_S)
    return job


def _record(ran: list, name: str):
    return lambda: ran.append(name) or np.full((1, 2), len(ran), dtype=np.float32)


def test_jobs_run_by_priority_then_in_order_and_the_same_key_is_the_same_job():
    worker, gate, ran = LayoutWorker(), threading.Event(), []
    try:
        blocker = _blocked(worker, gate, ran)
        guess = worker.submit("guess", _record(ran, "guess"), label="guess", group="a", priority=SPECULATIVE)
        first = worker.submit("first", _record(ran, "first"), label="first", group="a")
        second = worker.submit("second", _record(ran, "second"), label="second", group="a")
        assert worker.submit("first", _record(ran, "again"), label="first", group="a") is first
        assert blocker.progress(0).startswith("running for") and first.progress(worker.ahead_of(first)) == \
            "queued behind 1 layout"
        assert worker.ahead_of(second) == 2 and worker.ahead_of(guess) == 3 and guess.pending
    finally:
        gate.set()
    assert worker.wait_idle(WAIT_S)
    assert ran == ["blocker", "first", "second", "guess"]
    assert first.result()[0, 0] == 2 and not first.pending and first.error() is None


def test_a_speculative_job_asked_for_now_moves_up():
    worker, gate, ran = LayoutWorker(), threading.Event(), []
    try:
        _blocked(worker, gate, ran)
        guess = worker.submit("guess", _record(ran, "guess"), label="guess", group="a", priority=SPECULATIVE)
        worker.submit("other", _record(ran, "other"), label="other", group="a")
        assert worker.submit("guess", _record(ran, "never"), label="guess", group="a") is guess
        assert guess.priority == NOW and worker.ahead_of(guess) == 2  # the running one, then "other"
    finally:
        gate.set()
    assert worker.wait_idle(WAIT_S)
    assert ran == ["blocker", "other", "guess"]


def test_a_job_the_page_moved_on_from_runs_after_those_asked_for_now():
    worker, gate, ran = LayoutWorker(), threading.Event(), []
    try:
        _blocked(worker, gate, ran)
        old = worker.submit("K = 3", _record(ran, "K = 3"), label="old", group="a")
        worker.submit("K = 4", _record(ran, "K = 4"), label="new", group="a")
        worker.demote(old)
        assert old.priority == SPECULATIVE and worker.ahead_of(old) == 2
    finally:
        gate.set()
    assert worker.wait_idle(WAIT_S)
    assert ran == ["blocker", "K = 4", "K = 3"] and old.result() is not None


def test_speculative_jobs_are_bounded_and_dropped_when_another_data_set_is_asked_for():
    worker, gate, ran = LayoutWorker(max_speculative=2), threading.Event(), []
    try:
        _blocked(worker, gate, ran)
        guesses = [worker.submit(f"guess {i}", _record(ran, f"guess {i}"), label="guess", group="a",
                                 priority=SPECULATIVE) for i in range(3)]
        assert guesses[2] is None and worker.waiting(SPECULATIVE) == 2  # the bound refuses the third
        worker.submit("b's map", _record(ran, "b's map"), label="map", group="b")
        assert all(job.future.cancelled() for job in guesses[:2]) and worker.waiting(SPECULATIVE) == 0
        assert str(guesses[0].error()) == "the layout was cancelled"
        worker.submit("b guess", _record(ran, "b guess"), label="guess", group="b", priority=SPECULATIVE)
        worker.submit("b's next map", _record(ran, "b's next map"), label="map", group="b")  # same data set: kept
    finally:
        gate.set()
    assert worker.wait_idle(WAIT_S)
    assert ran == ["blocker", "b's map", "b's next map", "b guess"]


def test_a_failing_layout_is_its_error_and_the_worker_goes_on():
    worker = LayoutWorker()

    def fail():
        raise InvalidInput("no neighbourhood")

    failed = worker.submit("bad", fail, label="bad", group="a")
    good = worker.submit("good", lambda: np.ones((2, 2)), label="good", group="a")
    assert worker.wait_idle(WAIT_S)
    assert isinstance(failed.error(), InvalidInput) and failed.result() is None and not failed.pending
    assert good.result().sum() == 4
    assert worker.submit("bad", fail, label="bad", group="a") is failed  # not retried on every rerun
    assert worker.forget_failed() == 1 and worker.get("bad") is None and worker.get("good") is good


def test_finished_jobs_kept_are_bounded():
    worker = LayoutWorker(max_kept=2)
    for i in range(4):
        worker.submit(f"job {i}", lambda: np.zeros((1, 2)), label="job", group="a")
    assert worker.wait_idle(WAIT_S)
    assert sorted(job.key for job in worker.jobs()) == ["job 2", "job 3"]


def _synthetic():
    return service.load_embeddings(service.EmbeddingRequest(source="synthetic", n_per_domain=30))


def test_layout_jobs_give_the_layouts_of_the_synchronous_path_and_find_the_stored_ones(tmp_path):
    emb, worker = _synthetic(), LayoutWorker()
    ids = service.plot_ids(emb)
    fit = service.fit(emb, "env 4", "icm", service.eval_config(8, 100.0))
    store = EmbeddingStore(tmp_path)
    inv = service.invariant_layout_job(emb, ids, "fit 8", lambda: fit, "invariant", store=store, worker=worker)
    assert worker.wait_idle(WAIT_S) and inv.error() is None
    full = service.full_layout_job(emb, ids, store=store, worker=worker).result()
    np.testing.assert_array_equal(full, service.full_layout(emb, ids).astype(np.float16))  # the store keeps float16
    np.testing.assert_array_equal(inv.result(), service.invariant_layout(emb, ids, fit, full).astype(np.float16))
    # a restarted server: a new worker finds both in the store at once, without queueing anything
    again = LayoutWorker()
    stored = service.invariant_layout_job(emb, ids, "fit 8", lambda: fit, "invariant", store=EmbeddingStore(tmp_path),
                                          worker=again)
    assert not stored.pending and again.waiting() == 0 and {job.label for job in again.jobs()} == {"full space",
                                                                                                 "invariant"}
    np.testing.assert_array_equal(stored.result(), inv.result())


def test_a_speculative_layout_fits_in_the_worker_and_a_failed_full_layout_fails_the_invariant_one(monkeypatch):
    from clip_icm import reduce

    emb, worker = _synthetic(), LayoutWorker()
    ids = service.plot_ids(emb)
    fits = []
    guess = service.invariant_layout_job(
        emb, ids, "fit 4", lambda: fits.append(1) or service.fit(emb, "env 4", "icm", service.eval_config(4, 100.0)),
        "invariant K = 4", worker=worker, priority=SPECULATIVE)
    assert worker.wait_idle(WAIT_S) and guess.result().shape == (len(ids), 2) and fits == [1]

    def broken(*args, **kwargs):
        raise RuntimeError("numba exploded")

    monkeypatch.setattr(reduce, "layout_2d", broken)
    other = service.load_embeddings(service.EmbeddingRequest(source="synthetic", n_per_domain=31))
    job = service.invariant_layout_job(other, service.plot_ids(other), "fit", lambda: pytest.fail("never fitted"),
                                       "invariant", worker=worker)
    assert worker.wait_idle(WAIT_S)
    assert isinstance(job.error(), RuntimeError) and str(job.error()) == "numba exploded"


def test_the_servers_worker_lays_out_in_a_process_of_its_own_the_same_layout_and_its_errors():
    from threadpoolctl import threadpool_limits

    from clip_icm import reduce

    worker = LayoutWorker(separate_process=True)
    X = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    init = np.random.default_rng(1).normal(size=(200, 2))
    there = worker.lay_out(X, seed=3)
    with threadpool_limits(1, user_api="blas"):  # as the dashboard's process, and the layout process, run
        np.testing.assert_array_equal(there, reduce.layout_2d(X, seed=3))
        np.testing.assert_array_equal(worker.lay_out(X, init=init), reduce.layout_2d(X, init=init))
    with pytest.raises(InvalidInput, match=r"got shape \(0, 16\)"):
        worker.lay_out(X[:0])
    np.testing.assert_array_equal(worker.lay_out(X, seed=3), there)  # the process goes on after an error


def test_a_layout_process_that_dies_is_a_clear_error_and_the_next_layout_starts_a_new_one():
    """The server's UMAP process killed (by the OOM killer, say) while the page waits on it: the layout
    fails with a sentence, never a hang, and the next layout gets a new process and the same picture."""
    worker = LayoutWorker(separate_process=True)
    X = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    before = set(multiprocessing.active_children())
    first = worker.lay_out(X, seed=3)
    (layout_process,) = set(multiprocessing.active_children()) - before
    os.kill(layout_process.pid, signal.SIGKILL)
    layout_process.join(30)
    with pytest.raises(RuntimeError, match="the layout process ended before the layout did"):
        worker.lay_out(X, seed=3)
    np.testing.assert_array_equal(worker.lay_out(X, seed=3), first)



def test_a_speculative_job_leaves_a_lane_for_the_pages_own():
    """Two lanes: a page's layout starts while a speculative one runs, and a second speculative one
    waits until nothing runs (so the page's next layout never queues behind two of them)."""
    worker, gate, ran = LayoutWorker(separate_process=True, processes=2), threading.Event(), []
    started = threading.Event()

    def guess():
        started.set()
        assert gate.wait(WAIT_S)
        ran.append("guess")
        return np.zeros((1, 2))

    def page_job():
        ran.append("page")
        return np.array([[threading.current_thread().name.endswith(" 1"), 0.0]])

    try:
        first = worker.submit("guess", guess, label="guess", group="a", priority=SPECULATIVE)
        assert started.wait(WAIT_S)
        second = worker.submit("guess 2", _record(ran, "guess 2"), label="guess", group="a", priority=SPECULATIVE)
        page = worker.submit("page", page_job, label="page", group="a")
        assert page.future.result(WAIT_S)[0, 0] == 1  # done while the first guess still runs, in the second lane
        assert ran == ["page"] and first.pending and second.pending and second.started_at is None
        assert worker.ahead_of(second) == 1  # the running guess
    finally:
        gate.set()
    assert worker.wait_idle(WAIT_S)
    assert ran == ["page", "guess", "guess 2"]
    alone = worker.submit("alone", page_job, label="page", group="a")
    assert alone.future.result(WAIT_S)[0, 0] == 0  # a job alone runs in the first lane (its process is warm)


def test_a_job_needing_one_that_no_thread_took_up_runs_it_itself():
    """outcome(): the invariant layout needs the full one; queued behind a held job in a one-thread
    worker, the full job runs in the thread that needs it, once."""
    worker, gate, ran = LayoutWorker(), threading.Event(), []
    try:
        _blocked(worker, gate, ran)
        start = worker.submit("full", _record(ran, "full"), label="full", group="a")
        assert worker.outcome(start)[0, 0] == 1 and ran == ["full"] and not start.pending  # the blocker still runs
    finally:
        gate.set()
    assert worker.wait_idle(WAIT_S) and ran.count("full") == 1


def test_the_pairs_invariant_layout_waits_for_the_full_one_in_the_other_lane_searching_its_neighbours_meanwhile():
    """Two threads: the invariant job starts beside the full one, searches its neighbours while the full
    space is laid out, then starts from it: the full space laid out once, the layouts of the synchronous path."""
    from clip_icm import reduce

    emb, worker = _synthetic(), LayoutWorker(separate_process=True, processes=2)
    ids = service.plot_ids(emb)
    fit = service.fit(emb, "env 4", "icm", service.eval_config(8, 100.0))
    gate, calls = threading.Event(), []

    def lay_out(X, *, init=None, seed=0, neighbours=None):
        if init is None:
            assert gate.wait(WAIT_S)  # the full space waits until the invariant one has its neighbours
        calls.append("invariant" if init is not None else "full")
        if init is not None:
            np.testing.assert_array_equal(neighbours[0], reduce.layout_neighbours(X)[0])
        return reduce.layout_2d(X, init=init, seed=seed, neighbours=neighbours)

    def neighbours(X):
        calls.append("neighbours")
        gate.set()
        return reduce.layout_neighbours(X)

    worker.lay_out, worker.neighbours = lay_out, neighbours
    inv = service.invariant_layout_job(emb, ids, "fit 8", lambda: fit, "invariant", worker=worker)
    assert worker.wait_idle(WAIT_S) and inv.error() is None
    assert calls == ["neighbours", "full", "invariant"] and inv.after is None  # not kept once finished
    full = service.full_layout(emb, ids)
    np.testing.assert_array_equal(service.full_layout_job(emb, ids, worker=worker).result(), full)
    np.testing.assert_array_equal(inv.result(), service.invariant_layout(emb, ids, fit, full))


def test_two_layout_processes_search_halves_of_the_neighbours_and_give_the_same_layouts(monkeypatch):
    """The exact neighbours in two halves, one per lane's process: the whole search's, bit for bit
    (halves that start at a multiple of its block), and so the same layout as one process's."""
    from threadpoolctl import threadpool_limits

    from clip_icm import reduce

    monkeypatch.setattr(importlib.import_module("clip_icm.service.layout_worker"), "SPLIT_ROWS", 600)
    worker = LayoutWorker(separate_process=True, processes=2)
    X = np.random.default_rng(0).normal(size=(1100, 16)).astype(np.float32)  # halves of 1,024 and 76 rows
    before = set(multiprocessing.active_children())
    indices, distances = worker.neighbours(X)
    assert len(set(multiprocessing.active_children()) - before) == 2  # one process per lane
    with threadpool_limits(1, user_api="blas"):
        whole = reduce.layout_neighbours(X)
        np.testing.assert_array_equal(indices, whole[0])
        np.testing.assert_array_equal(distances, whole[1])
        np.testing.assert_array_equal(worker.lay_out(X, seed=3), reduce.layout_2d(X, seed=3))
    assert worker.neighbours(X[:5, :3])[0].shape == (5, 4) and worker.neighbours(X[:4]) is None  # PCA: none


def test_warm_starts_every_lane_and_loads_the_kernels_there():
    worker = LayoutWorker(separate_process=True, processes=2)
    worker.warm()
    worker.warm()  # once
    worker._warming.join(WAIT_S * 3)
    assert all(lane.warm and lane.process is not None for lane in worker._lanes)
    X = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    np.testing.assert_array_equal(worker.lay_out(X, seed=3), worker.lay_out(X, seed=3))
    LayoutWorker().warm()  # no processes: nothing to start


def test_a_delayed_warm_up_starts_no_process_before_its_time_and_every_lane_after():
    worker = LayoutWorker(separate_process=True, processes=1)
    worker.warm(after_s=3.0)
    time.sleep(0.3)
    assert worker._lanes[0].process is None and not worker._lanes[0].warm  # the page's browser has the cores
    worker._warming.join(WAIT_S * 3)
    assert worker._lanes[0].warm and worker._lanes[0].process is not None


@pytest.mark.parametrize("value, cpus, processes", [("3", 2, 3), (" 1 ", 8, 1), ("", 1, 1), ("", 2, 1), ("", 3, 2),
                                                    ("", 16, 2), ("", None, 1)])
def test_the_layout_processes_come_from_the_environment(monkeypatch, value, cpus, processes):
    """Unset, a core is left to the page runs: min(2, CPUs - 1), at least one (os.cpu_count() may say None)."""
    from clip_icm.service.layout_worker import PROCESSES_VAR, layout_processes

    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setenv(PROCESSES_VAR, value)
    assert layout_processes() == processes


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_number_of_layout_processes_is_refused(monkeypatch, value):
    from clip_icm.service.layout_worker import PROCESSES_VAR, layout_processes

    monkeypatch.setenv(PROCESSES_VAR, value)
    with pytest.raises(InvalidInput, match=PROCESSES_VAR):
        layout_processes()
    with pytest.raises(InvalidInput, match="at least 1 process"):
        LayoutWorker(separate_process=True, processes=0)
