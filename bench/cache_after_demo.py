"""What the cache holds after the demo: the figures of the README's "The cache" section.

    python -m bench.cache_after_demo [--cache DIR]

Into an empty cache folder (``$CLIP_ICM_CACHE``: a temp folder, or ``--cache DIR``, kept), runs
``python -m clip_icm evaluate`` (the demo, every target), then a dashboard session on the default
demo under ``streamlit.testing.v1.AppTest`` (dashboard/app.py: the Explorer, then each other
target domain held out in turn), then prints ``python -m clip_icm cache info`` and the machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", metavar="DIR", default=None, help="fill this (empty) folder and keep it")
    args = parser.parse_args()
    folder = args.cache or tempfile.mkdtemp(prefix="clip-icm-cache-bench-")
    env = {**os.environ, "CLIP_ICM_CACHE": folder, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "clip_icm", "evaluate", "--target", "all", "--quiet"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-c", SESSION], env=env, check=True, cwd=ROOT)
    info = subprocess.run([sys.executable, "-m", "clip_icm", "cache", "info"], env=env, check=True,
                          capture_output=True, text=True).stdout
    print(info.replace(folder, "$CLIP_ICM_CACHE"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")


# The dashboard session, in a process of its own (AppTest imports the app in-process).
SESSION = """
from streamlit.testing.v1 import AppTest

at = AppTest.from_file("dashboard/app.py", default_timeout=900)
at.query_params["page"] = "explorer"  # the page whose figures the README's table reports ("/" is the Story)
at.run()
assert not at.exception, [e.value for e in at.exception]
target = at.sidebar.selectbox(key="ctl_target")
for domain in [d for d in target.options if d != target.value]:
    at.sidebar.selectbox(key="ctl_target").set_value(domain).run()
    assert not at.exception, [e.value for e in at.exception]
"""

if __name__ == "__main__":
    main()
