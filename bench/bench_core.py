"""Timings of the core (projection fit, one leave-one-domain-out split, the playground).

Prints median wall-clock seconds over a few repeats; copy the output, with the
machine named, into bench/RESULTS.md. Run from the repository root:
OPENBLAS_NUM_THREADS=1 python -m bench.bench_core
"""
from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np

from clip_icm.evaluation import EvalConfig, evaluate_split
from clip_icm.projection import InvariantProjection
from clip_icm.scm import SCMConfig, make_embedding_set, run_playground


def median_seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    gen = np.random.default_rng(0)
    for dim in (256, 512, 1024):
        Z, Z_do = gen.normal(size=(4000, dim)), gen.normal(size=(4000, dim))
        seconds = median_seconds(lambda: InvariantProjection(64, 1000.0).fit(Z, Z_do))
        print(f"InvariantProjection.fit, n=4000 pairs, D={dim}: {seconds:.3f} s")
    emb = make_embedding_set(SCMConfig(n_invariant=32, n_variant=224, n_classes=7), n_per_domain=500)
    config = EvalConfig(n_components=32, lam=1e4, lam_mode="absolute")
    seconds = median_seconds(lambda: evaluate_split(emb, "sketch", config))
    print(f"evaluate_split, n=2000 images, D=256, 7 classes, CLIP + 5 methods x 2 protocols: {seconds:.3f} s")
    seconds = median_seconds(lambda: make_embedding_set(SCMConfig(n_invariant=32, n_variant=96)))
    print(f"make_embedding_set, D=128, 4 x 200 images: {seconds:.3f} s")
    print(f"run_playground, default config and shifts: {median_seconds(run_playground):.3f} s")


if __name__ == "__main__":
    main()
