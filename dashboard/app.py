"""CLIP-ICM Explorer: `streamlit run dashboard/app.py` (opens on the bundled demo, offline)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# The fits are small LAPACK calls; OpenBLAS's threads make them up to ~100x slower here (a 128 x 128
# eigh: 0.5 s vs 6 ms, bench/RESULTS.md). The variable reaches BLAS builds loaded from now on
# (scipy's own); dashboard.one_blas_thread, on the first page run, reaches those already loaded (numpy's).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# `streamlit run` puts dashboard/ on the path, not the repository root.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Streamlit runs this script as the module __main__, on every page run. multiprocessing's spawn, which starts the
# layout, model-choice and evaluation processes, runs the parent's __main__ script again in each new process, as
# __mp_main__: there this script must not import the dashboard and run its page script (which each process did,
# 3-6 s before its first job on the 2-core machine, bench/RESULTS.md).
if __name__ == "__main__":
    from dashboard.shell import main

    main()
