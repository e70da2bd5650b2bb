"""The page behind the server's cap on heavy jobs (service.gate through dashboard.cached): a waiting page
shows its place in the queue, a cached value never waits, and a page stopped while it waits leaves no
place or slot behind. The playground page stands in for every heavy call: its table passes the gate."""
import os
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from clip_icm.service import gate
from dashboard import cached

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240


@pytest.fixture(autouse=True)
def one_slot(monkeypatch):
    """A gate of one slot for this test (the server's own, as heavy_jobs() returns it), caches cleared."""
    monkeypatch.setattr(gate, "_shared", gate.Gate(1))
    cached.clear()
    yield gate.heavy_jobs()
    cached.clear()


def _shown_place(ahead: int) -> list[str]:
    def script(ahead):
        from dashboard import cached

        cached.queue_place().__enter__()(ahead)  # the box as a waiting page draws it (left open: still waiting)

    at = AppTest.from_function(script, args=(ahead,), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return [box.value for box in at.info]


def test_a_waiting_page_shows_its_place_in_the_queue():
    assert any(text.startswith("queued: 2 ahead of you") for text in _shown_place(2))
    assert any(text.startswith("queued: next in line") and "one heavy job at a time" in text
               for text in _shown_place(0))


def _playground() -> AppTest:
    script = f"import sys; sys.path.insert(0, {str(ROOT)!r})\nfrom dashboard.screens import playground\nplayground.playground_page()\n"
    return AppTest.from_string(script, default_timeout=TIMEOUT)


def _hold(g: gate.Gate) -> tuple[threading.Event, threading.Thread]:
    """Another session's heavy job: holds the only slot until the event is set."""
    entered, release = threading.Event(), threading.Event()

    def run():
        with g.slot():
            entered.set()
            release.wait(TIMEOUT)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert entered.wait(TIMEOUT)
    return release, thread


def test_a_cached_table_comes_at_once_while_the_gate_is_full(one_slot):
    at = _playground().run()
    before = at.dataframe[0].value
    release, holder = _hold(one_slot)
    try:
        at.run(timeout=60)  # the same table: a cache hit, so it does not queue behind the holder
        assert not at.exception and at.dataframe[0].value.equals(before)
        assert one_slot.waiting() == 0
    finally:
        release.set()
        holder.join(TIMEOUT)


def test_a_page_stopped_while_it_waits_gives_its_place_up_and_the_next_run_computes(one_slot):
    at = _playground().run()
    before = at.dataframe[0].value
    release, holder = _hold(one_slot)
    try:
        at.slider(key="pg_noise").set_value(1.0)
        with pytest.raises(RuntimeError, match="timed out"):  # AppTest stops a run past its timeout, as a
            at.run(timeout=3)                                 # server stops the run of a session that left
        assert one_slot.waiting() == 0 and one_slot.running() == 1  # only the holder
    finally:
        release.set()
        holder.join(TIMEOUT)
    at.run()
    assert not at.exception and not at.dataframe[0].value.equals(before)
    assert (one_slot.running(), one_slot.waiting()) == (0, 0)


def test_a_session_that_waited_for_the_embeddings_takes_those_another_one_built(one_slot):
    slot, built, got = {}, [], []
    release, holder = _hold(one_slot)  # the session that embeds first

    def second_session():
        notes = []
        emb = cached.build_once(slot, notes, lambda: built.append("again") or "rebuilt")
        got.append((emb, notes))
    waiter = threading.Thread(target=second_session, daemon=True)
    waiter.start()
    for _ in range(TIMEOUT * 100):
        if one_slot.waiting() == 1:
            break
        threading.Event().wait(0.01)
    assert one_slot.waiting() == 1
    slot.update(emb="embeddings", notes=["2 images skipped"])  # what the first session filled in
    release.set()
    holder.join(TIMEOUT)
    waiter.join(TIMEOUT)
    assert got == [("embeddings", ["2 images skipped"])] and built == []
    assert cached.build_once({}, [], lambda: "built") == "built"  # an empty slot is built


def test_the_dashboard_limits_blas_to_one_thread_once_per_process():
    """numpy's and scipy's BLAS run one thread in the dashboard's process (the fits are many small LAPACK
    calls, up to 100x slower with OpenBLAS's threads); set up once, not on every page run."""
    import subprocess
    import sys

    script = ("import numpy, threadpoolctl, dashboard\n"
              "dashboard.one_blas_thread(); dashboard.one_blas_thread()\n"
              "print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'}),"
              " dashboard.one_blas_thread.cache_info().misses)")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    assert out == ["[1]", "1"]


@pytest.mark.parametrize("source", ["demo", "synthetic"])
def test_a_first_page_on_the_demo_starts_drawing_its_world_once(monkeypatch, tmp_path, source):
    """A fresh install's first page waits for the demo world to be drawn: app.py starts the drawing
    before the page (and its libraries' imports) runs, once a process, only where the page reads the demo."""
    import dashboard
    from clip_icm import toydomains

    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(toydomains, "draw_demo_data_elsewhere", lambda root=None: calls.append(root))
    dashboard.draw_the_demo_early.cache_clear()
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    at.query_params.update(page="about", source=source)
    at.run()
    at.run()
    assert not at.exception
    assert calls == ([None] if source == "demo" else [])  # once a process, not on every run
    dashboard.draw_the_demo_early.cache_clear()


def test_a_process_the_server_spawns_does_not_run_the_page_script():
    """Streamlit runs app.py as the module __main__, and multiprocessing's spawn runs that script again in every
    process it starts (the layout lanes, the model choice): there it must not draw a page nor import the
    dashboard, seconds before the process's first job."""
    import subprocess
    import sys

    script = f"""
import sys, types, multiprocessing
from concurrent.futures import ProcessPoolExecutor
main = types.ModuleType("__main__")
main.__file__ = {str(ROOT / "dashboard" / "app.py")!r}  # as Streamlit's script runner sets it
sys.modules["__main__"] = main
with ProcessPoolExecutor(1, multiprocessing.get_context("spawn")) as pool:
    loaded = pool.submit(eval, "sorted(__import__('sys').modules)").result()  # the new process's modules
print(sorted(m for m in loaded if m.split(".")[0] in ("dashboard", "streamlit", "sklearn")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"]
