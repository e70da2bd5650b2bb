"""Work handed to a separate Python process: it runs on a core of its own and, unlike a thread,
never holds this process's GIL (numba's compilation and the demo's image rendering are pure
Python-bound work that would stall the page beside them)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
