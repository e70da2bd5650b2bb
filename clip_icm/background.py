"""Work handed to a separate Python process: it runs on a core of its own and, unlike a thread,
never holds this process's GIL (numba's compilation and the demo's image rendering are pure
Python-bound work that would stall the page beside them), and its memory is returned when it ends."""
from __future__ import annotations

import mmap
import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
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


# Arrays of at least this many bytes reach run()'s process through files it maps, not through its pipe: a pickled
# copy of 50,000 images' EmbeddingSet (0.6 GB) raised the server's peak memory by as much, for every call.
MAPPED_BYTES = 1 << 20


def run(function: Callable[..., T], *args, low_priority: bool = False) -> T:
    """``function(*args)`` (a module-level function) in a new, spawned process (the server has threads) with
    one BLAS thread (one_blas_thread), which ends with the call: its result, or what it raised. The arguments
    are pickled, their arrays of MAPPED_BYTES or more written to temporary files that the process maps
    read-only (no copy in this process's memory, one page cache for both). RuntimeError if the process itself
    ended first (out of memory?); OSError if none could be started."""
    with tempfile.TemporaryDirectory(prefix="clip-icm-handover-") as folder:
        files: list[str] = []

        def out_of_band(buffer: pickle.PickleBuffer) -> bool:
            view = buffer.raw()
            if view.nbytes < MAPPED_BYTES:
                return True  # in the pickle itself
            files.append(os.path.join(folder, str(len(files))))
            with open(files[-1], "wb") as file:
                file.write(view)
            return False

        data = pickle.dumps((function, args), protocol=5, buffer_callback=out_of_band)
        with ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), initializer=one_blas_thread,
                                 initargs=(low_priority,)) as process:
            try:
                return process.submit(_call_handed_over, data, files).result()
            except BrokenProcessPool as error:
                raise RuntimeError("the background process ended before its work did (out of memory?)") from error


def _call_handed_over(data: bytes, files: list[str]):
    """In run()'s process: its function called on its arguments, their large arrays mapped from ``files``."""
    buffers = []
    for path in files:
        with open(path, "rb") as file:
            buffers.append(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(path) else b"")
    function, args = pickle.loads(data, buffers=buffers)
    return function(*args)
