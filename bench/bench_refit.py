"""What a K or lambda change costs at 2k-50k images (D = 512), against today's path in one run.

    python -m bench.bench_refit [--sizes 2000 10000 50000] [--umap]

Synthetic clustered embeddings (the SCM's, 7 classes, 4 domains), BLAS limited to one thread as
the dashboard and the CLI run the fits. For each size it prints median seconds of:
- "fresh": evaluate_split with nothing kept (what every K or lambda change cost before the
  moments and the full-space rows were kept per EmbeddingSet);
- "K change" and "lam change": the same call after another K / lambda on the same EmbeddingSet;
for ICM alone (the accuracy table's ICM and CLIP rows) and for the five projection methods
evaluated one by one (as the dashboard does), with the ratios (median of 3 up to 10k rows,
one run above). ``--umap`` also times the UMAP
pair (full, then invariant from it) at the smallest size above 5,000 rows.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

from threadpoolctl import threadpool_limits

from bench.bench_core import median_seconds
from clip_icm import evaluation as ev
from clip_icm.scm import SCMConfig, make_embedding_set

METHODS = ("icm", "icm_as_released", "pca", "null_space", "orth_cali")
TARGET = "sketch"


def _evaluate(emb, methods: tuple[str, ...], K: int, lam: float, fresh: bool) -> None:
    for method in methods:
        if fresh:
            ev._Memo.clear()
        ev.evaluate_split(emb, TARGET, ev.EvalConfig(n_components=K, lam=lam, lam_mode="absolute", methods=(method,)))


def refit_rows(n: int) -> list[str]:
    emb = make_embedding_set(SCMConfig(n_invariant=32, n_variant=480, n_classes=7), n_per_domain=n // 4)
    repeats = 3 if n <= 10_000 else 1  # a fresh 50k evaluation of five methods takes minutes
    out = []
    for label, methods in (("ICM", ("icm",)), ("5 methods", METHODS)):
        fresh = median_seconds(lambda: _evaluate(emb, methods, 64, 1e4, fresh=True), repeats)
        _evaluate(emb, methods, 64, 1e4, fresh=False)
        ks = iter((32, 48, 16, 24))
        k_change = median_seconds(lambda: _evaluate(emb, methods, next(ks), 1e4, fresh=False), repeats)
        lams = iter((1e3, 3e3, 3e4, 1e5))
        lam_change = median_seconds(lambda: _evaluate(emb, methods, 64, next(lams), fresh=False), repeats)
        out.append(f"| {n:,} | {label} | {fresh:.2f} | {k_change:.2f} ({fresh / k_change:.1f}x) | "
                   f"{lam_change:.2f} ({fresh / lam_change:.1f}x) |")
    return out


def umap_pair(n: int) -> str:
    from clip_icm import reduce, service

    emb = make_embedding_set(SCMConfig(n_invariant=32, n_variant=480, n_classes=7), n_per_domain=n // 4)
    start = time.perf_counter()
    reduce.warm_up()  # what the dashboard runs in the background (numba compiles or loads its kernels)
    warm = time.perf_counter() - start
    ids = service.plot_ids(emb, n)
    config = ev.EvalConfig(n_components=64, lam=1e4, lam_mode="absolute", methods=("icm",))
    fit = service.fit(emb, TARGET, "icm", config)
    start = time.perf_counter()
    full = service.full_layout(emb, ids)
    middle = time.perf_counter()
    service.invariant_layout(emb, ids, fit, full)
    end = time.perf_counter()
    return (f"UMAP warm-up (numba compiling or loading from its cache, once per process): {warm:.1f} s\n"
            f"UMAP pair at {n:,} points (compiled): full {middle - start:.1f} s + invariant {end - middle:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 50000])
    parser.add_argument("--umap", action="store_true")
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, BLAS 1 thread, load average "
          f"{os.getloadavg()[0]:.1f}; D = 512\n")
    print("| n | methods | fresh (s) | K change (s) | lam change (s) |\n|---|---|---|---|---|")
    with threadpool_limits(1, user_api="blas"):
        for n in args.sizes:
            print("\n".join(refit_rows(n)), flush=True)
        if args.umap:
            print("\n" + umap_pair(next((n for n in sorted(args.sizes) if n > 5000), max(args.sizes))))


if __name__ == "__main__":
    main()
