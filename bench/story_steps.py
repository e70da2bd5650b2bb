"""Each Story step's render time on the demo once its data are embedded (goal: 3 s or less).

    python -m bench.story_steps [--rounds N] [--target cartoon]

The page runs under AppTest in this process (the server's own work, no browser). The embeddings
are loaded once before any timing (the page's resource cache holds them, as a running server
does). Per step, two figures:

- "first visit": a new session with Streamlit's data caches emptied, so the step computes or reads
  from the on-disk store everything it shows (fits, accuracy tables, the model choice, layouts
  that the store holds);
- "again": a new session with those caches warm (what a second visitor, or a step revisited, costs).

A map that is not in the store is laid out by the background worker; the step does not wait for
it (it shows the placeholder), so its time is not in these figures: the worker's is printed apart.
Prints the machine's load (1-minute load average, cores) beside the figures: on a shared machine
they move with it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
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
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import streamlit as st

    from clip_icm import service
    from dashboard import texts

    warm = _session(1, args.target)
    embed = _timed_run(warm)  # loads the embeddings into the resource cache (and draws step 1)
    worker_start = time.perf_counter()
    service.layout_worker().wait_idle(600)
    print(f"embeddings loaded and step 1 drawn: {embed:.1f} s; the maps' layouts (background worker): "
          f"{time.perf_counter() - worker_start:.1f} s more")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"{'step':<32} {'first visit (s)':>16} {'again (s)':>10}")
    worst = 0.0
    for step, (_, short, _) in enumerate(texts.STORY_STEPS, 1):
        first, again = [], []
        for _ in range(args.rounds):
            st.cache_data.clear()  # the resource cache (embeddings, store, worker) stays, as in a server
            first.append(_timed_run(_session(step, args.target)))
            again.append(_timed_run(_session(step, args.target)))
        row = (statistics.median(first), statistics.median(again))
        worst = max(worst, *row)
        print(f"{step}. {short:<29} {row[0]:>16.2f} {row[1]:>10.2f}", flush=True)
    print(f"slowest: {worst:.2f} s (goal 3 s); load average {os.getloadavg()[0]:.1f} at the end")
    service.layout_worker().wait_idle(600)


if __name__ == "__main__":
    main()
