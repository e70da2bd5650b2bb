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
import threading
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


class ProcessEnded(RuntimeError):
    """A background process ended before the call it ran returned (out of memory, killed)."""


# Arrays of at least this many bytes reach run()'s process through files it maps, not through its pipe: a pickled
# copy of 50,000 images' EmbeddingSet (0.6 GB) raised the server's peak memory by as much, for every call.
MAPPED_BYTES = 1 << 20


def run(function: Callable[..., T], *args, low_priority: bool = False) -> T:
    """``function(*args)`` (a module-level function) in a new, spawned process (the server has threads) with
    one BLAS thread (one_blas_thread), which ends with the call: its result, or what it raised. The arguments
    are pickled, their arrays of MAPPED_BYTES or more written to temporary files that the process maps
    read-only (no copy in this process's memory, one page cache for both). RuntimeError if the process itself
    ended first (out of memory?); OSError if none could be started."""
    with ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), initializer=one_blas_thread,
                             initargs=(low_priority,)) as process:
        return _handed_to(process, function, args)


class Resident:
    """One spawned process (one BLAS thread, as run()'s) kept between calls, so that what a call leaves in
    its module globals (a data set handed over once, the memos of clip_icm.evaluation) serves the next:
    started on the first call, replaced on the call after it died. Calls run one at a time, in order."""

    def __init__(self, low_priority: bool = False) -> None:
        self.low_priority = low_priority
        self._process: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def call(self, function: Callable[..., T], *args) -> T:
        """``function(*args)`` in the process, its arguments handed over as run()'s; RuntimeError if the
        process ended first (the next call starts another)."""
        with self._lock:
            if self._process is None:
                self._process = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"),
                                                    initializer=one_blas_thread, initargs=(self.low_priority,))
            process = self._process
        try:
            return _handed_to(process, function, args)
        except ProcessEnded:
            with self._lock:
                if self._process is process:
                    self._process = None
            process.shutdown(wait=False)
            raise

    def close(self) -> None:
        """End the process (a call after this starts a new one)."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            process.shutdown(wait=True, cancel_futures=True)


def _handed_to(process: ProcessPoolExecutor, function: Callable[..., T], args: tuple) -> T:
    """``function(*args)`` in ``process``: pickled, arrays of MAPPED_BYTES or more through temporary files it maps
    (deleted after the call: a mapping outlives its file's name, so the process may keep what it was given)."""
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
        try:
            return process.submit(_call_handed_over, data, files).result()
        except BrokenProcessPool as error:
            raise ProcessEnded("the background process ended before its work did (out of memory?)") from error


def _call_handed_over(data: bytes, files: list[str]):
    """In run()'s process: its function called on its arguments, their large arrays mapped from ``files``."""
    buffers = []
    for path in files:
        with open(path, "rb") as file:
            buffers.append(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(path) else b"")
    function, args = pickle.loads(data, buffers=buffers)
    return function(*args)
