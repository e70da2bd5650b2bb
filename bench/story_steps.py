"""Each Story step's render time on the demo once its data are embedded (goal: 3 s or less).

    python -m bench.story_steps [--rounds N] [--target cartoon] [--cold-results]

The page runs under AppTest in this process (the server's own work, no browser). The embeddings
are loaded once before any timing (the page's resource cache holds them, as a running server
does). Per step, two figures:

- "first visit": a new session with Streamlit's data caches emptied, so the step computes or reads
  from the on-disk store everything it shows (fits, accuracy tables, the model choice, layouts
  that the store holds);
- "again": a new session with those caches warm (what a second visitor, or a step revisited, costs).

With ``--cold-results`` each first visit also gets an empty results store (a temporary folder in
place of the kept accuracy tables, model choices, confusions and layouts; the embeddings stay
loaded): the step computes everything it shows, as on a server that never showed it.

A map that is not in the store, and the model choice of every target (steps 7 and 8), are made by
the background worker; the step does not wait for them (it shows a placeholder and a status that
polls). "complete" is the time from opening the step until that work is done and the step drawn
with it.
Prints the machine's load (1-minute load average, cores) beside the figures: on a shared machine
they move with it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")


def _session(step: int, target: str | None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=600)
    at.query_params["step"] = str(step)
    if target:
        at.query_params["target"] = target
    return at


def _first_visit(at) -> tuple[float, float]:
    """Seconds to the step drawn, and to the step complete: what the background worker was asked for
    (a map, the model choice of every target) done and the step drawn again with it."""
    start = time.perf_counter()
    drawn = _timed_run(at)
    from clip_icm import service

    service.layout_worker().wait_idle(600)
    service.choice_worker().wait_idle(600)
    at.run()
    return drawn, time.perf_counter() - start


def _timed_run(at) -> float:
    start = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - start
    if at.exception:
        raise SystemExit(f"the page failed: {at.exception[0].value}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--target", default=None, help="the held-out domain (default: the page's)")
    parser.add_argument("--cold-results", action="store_true", help="an empty results store for each first visit")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import streamlit as st

    from clip_icm import service
    from clip_icm.store import EmbeddingStore
    from dashboard import cached, texts

    kept_results = cached.store

    warm = _session(1, args.target)
    embed = _timed_run(warm)  # loads the embeddings into the resource cache (and draws step 1)
    worker_start = time.perf_counter()
    service.layout_worker().wait_idle(600)
    print(f"embeddings loaded and step 1 drawn: {embed:.1f} s; the maps' layouts (background worker): "
          f"{time.perf_counter() - worker_start:.1f} s more")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"results store: {'empty for each first visit' if args.cold_results else 'as kept'}; "
          f"{args.rounds} round(s), medians")
    print(f"{'step':<32} {'first visit (s)':>16} {'complete':>10} {'again (s)':>10}")
    worst = 0.0
    for step, (_, short, _) in enumerate(texts.STORY_STEPS, 1):
        first, complete, again = [], [], []
        for _ in range(args.rounds):
            st.cache_data.clear()  # the resource cache (embeddings, store, worker) stays, as in a server
            with tempfile.TemporaryDirectory() as empty:
                if args.cold_results:
                    cached.store = lambda store=EmbeddingStore(empty): store
                    service.layout_worker().forget()  # its finished jobs wrote into another store
                drawn, done = _first_visit(_session(step, args.target))
                first.append(drawn)
                complete.append(done)
                again.append(_timed_run(_session(step, args.target)))
                service.layout_worker().wait_idle(600)
                cached.store = kept_results
        row = (statistics.median(first), statistics.median(complete), statistics.median(again))
        worst = max(worst, row[0], row[2])
        print(f"{step}. {short:<29} {row[0]:>16.2f} {row[1]:>10.2f} {row[2]:>10.2f}", flush=True)
    print(f"slowest step drawn: {worst:.2f} s (goal 3 s); load average {os.getloadavg()[0]:.1f} at the end")
    service.layout_worker().wait_idle(600)


if __name__ == "__main__":
    main()
