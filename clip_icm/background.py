"""Work handed to a separate Python process: it runs on a core of its own and, unlike a thread,
never holds this process's GIL (numba's compilation and the demo's image rendering are pure
Python-bound work that would stall the page beside them), and its memory is returned when it ends."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def start(code: str, *args: str, low_priority: bool = False) -> subprocess.Popen | None:
    """Run ``code`` (Python source; ``sys.argv[1:]`` = ``args``) in a new interpreter that imports
    this copy of clip_icm, with output discarded; ``low_priority`` lowers its scheduling priority
    where the OS allows. None when no process can be started: the caller then does the work itself."""
    if low_priority:
        code = "import os\nif hasattr(os, 'nice'): os.nice(10)\n" + code
    path = os.pathsep.join(filter(None, (PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))
    try:
        return subprocess.Popen([sys.executable, "-c", code, *args], env={**os.environ, "PYTHONPATH": path},
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def wait(process: subprocess.Popen | None, timeout_s: float) -> bool:
    """Wait for ``process`` (if any); whether it ended, successfully, within ``timeout_s``."""
    if process is None:
        return False
    try:
        return process.wait(timeout=timeout_s) == 0
    except subprocess.TimeoutExpired:
        return False


def one_blas_thread(low_priority: bool = False) -> None:
    """In a process this one started: one BLAS thread, as the dashboard's own process runs (app.py), so
    that its matrix products round as they would have there (scipy's BLAS build loaded first, so that the
    limit covers it); ``low_priority`` also lowers its scheduling priority where the OS allows."""
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    if low_priority and hasattr(os, "nice"):
        os.nice(10)
    threadpool_limits(1, user_api="blas")


def run(function: Callable[..., T], *args, low_priority: bool = False) -> T:
    """``function(*args)`` (a module-level function; the arguments are pickled) in a new, spawned
    process (the server has threads) with one BLAS thread (one_blas_thread), which ends with the call:
    its result, or what it raised. RuntimeError if the process itself ended first (out of memory?);
    OSError if none could be started."""
    with ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), initializer=one_blas_thread,
                             initargs=(low_priority,)) as process:
        try:
            return process.submit(function, *args).result()
        except BrokenProcessPool as error:
            raise RuntimeError("the background process ended before its work did (out of memory?)") from error
