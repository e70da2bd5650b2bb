"""How long a wrong name takes to fail on the command line (each in a fresh process, as a user
runs it): every name is checked before the maths is imported or a model is looked up.

Prints the median wall-clock seconds over a few runs per wrong name, and `python -c pass` for
scale. Run from the repository root: python -m bench.bench_cli_checks
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time

WRONG = {
    "--templates": "ensembel",
    "--text-banks": "styles,stlyes",
    "--interventions": "greyscale",
    "--pair-sets": "true:colur",
    "--methods": "icm,magic",
    "--protocol": "relesed",
}


def _seconds(argv: list[str], repeats: int = 3) -> tuple[float, str]:
    times, last = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    return statistics.median(times), last


def main() -> None:
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    base, _ = _seconds(["-c", "pass"])
    print(f"python -c pass: {base:.2f} s")
    for flag, wrong in WRONG.items():
        seconds, message = _seconds(["-m", "clip_icm", "evaluate", flag, wrong])
        print(f"evaluate {flag} {wrong}: {seconds:.2f} s  ({message[:90]})")


if __name__ == "__main__":
    main()
