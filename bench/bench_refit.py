"""What a K or lambda change costs at 2k-50k images (D = 512), against today's path in one run.

    python -m bench.bench_refit [--sizes 2000 10000 50000] [--umap] [--knn] [--no-refits]

Synthetic clustered embeddings (the SCM's, 7 classes, 4 domains), BLAS limited to one thread as
the dashboard and the CLI run the fits. For each size it prints median seconds of:
- "fresh": evaluate_split with nothing kept (what every K or lambda change cost before the
  moments and the full-space rows were kept per EmbeddingSet);
- "K change" and "lam change": the same call after another K / lambda on the same EmbeddingSet;
for ICM alone (the accuracy table's ICM and CLIP rows) and for the five projection methods
evaluated one by one (as the dashboard does), with the ratios (median of 3 up to 10k rows,
one run above). ``--umap`` also times the UMAP
pair (full, then invariant from it) at the smallest size above 5,000 rows, with the process's peak
memory. ``--knn`` times, at the largest size, each in a new process (BLAS one thread), the 15 nearest
neighbours of every row that UMAP starts from: exact by blocks of matrix products
(reduce.exact_neighbours) and by pynndescent's descent as umap calls it (its first call in a process
includes numba's compilation, which numba cannot cache), with the share of the exact neighbours the
descent finds and each process's peak memory. ``--no-refits`` skips the refit table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

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
            f"UMAP pair at {n:,} points (compiled): full {middle - start:.1f} s + invariant {end - middle:.1f} s; "
            f"peak memory of the process {peak_rss_mb():.0f} MB")


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """The peak resident memory of this process (or of its largest child that ended), in MB (Linux: kB)."""
    return resource.getrusage(who).ru_maxrss / 1024


# Run in a new process, argv[1]: rows, argv[2]: "exact" or "descent".
KNN_CHILD = r'''
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from bench.bench_refit import peak_rss_mb
from clip_icm import reduce
from clip_icm.embeddings import unit_rows
from clip_icm.scm import SCMConfig, make_embedding_set

threadpool_limits(1, user_api="blas")
n, how = int(sys.argv[1]), sys.argv[2]
X = unit_rows(make_embedding_set(SCMConfig(n_invariant=32, n_variant=480, n_classes=7), n_per_domain=n // 4).features.astype(np.float32))
before = peak_rss_mb()
out = {}
for call in ("first", "second") if how == "descent" else ("first",):  # exact: nothing to compile
    start = time.perf_counter()
    if how == "exact":
        indices, _ = reduce.exact_neighbours(X, 15)
    else:
        from umap.umap_ import nearest_neighbors
        indices, _, _ = nearest_neighbors(X, 15, "cosine", {}, False, np.random.RandomState(0), n_jobs=1)
    out[call] = time.perf_counter() - start
np.save(sys.argv[3], indices)
out["peak_mb"], out["data_mb"] = peak_rss_mb(), before
print("RESULT " + json.dumps(out))
'''


def knn_rows(n: int) -> list[str]:
    import tempfile

    import numpy as np

    root = Path(__file__).resolve().parent.parent
    found, rows = {}, []
    with tempfile.TemporaryDirectory() as scratch:
        for how in ("exact", "descent"):
            path = os.path.join(scratch, f"{how}.npy")
            done = subprocess.run([sys.executable, "-c", KNN_CHILD, str(n), how, path], cwd=root, capture_output=True,
                                  text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, check=False)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"the {how} search failed:\n{done.stderr[-3000:]}")
            found[how] = (json.loads(line[len("RESULT "):]), np.load(path))
    exact = found["exact"][1]
    for how, (t, indices) in found.items():
        recall = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(indices, exact)])
        second = f"{t['second']:.1f}" if "second" in t else "(the same)"
        rows.append(f"| {n:,} | {how} | {t['first']:.1f} | {second} | {recall:.3f} | "
                    f"{t['data_mb']:.0f} -> {t['peak_mb']:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 50000])
    parser.add_argument("--umap", action="store_true")
    parser.add_argument("--knn", action="store_true")
    parser.add_argument("--no-refits", action="store_true")
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, BLAS 1 thread, load average "
          f"{os.getloadavg()[0]:.1f}; D = 512\n")
    with threadpool_limits(1, user_api="blas"):
        if not args.no_refits:
            print("| n | methods | fresh (s) | K change (s) | lam change (s) |\n|---|---|---|---|---|")
            for n in args.sizes:
                print("\n".join(refit_rows(n)), flush=True)
        if args.umap:
            print("\n" + umap_pair(next((n for n in sorted(args.sizes) if n > 5000), max(args.sizes))), flush=True)
    if args.knn:
        print("\n| n | neighbours | first call in a process (s) | second call (s) | share of the exact 15 | "
              "peak memory: data -> search (MB) |\n|---|---|---|---|---|---|")
        print("\n".join(knn_rows(max(args.sizes))))
    print(f"\n(load average {os.getloadavg()[0]:.1f} at the end; peak memory of this process {peak_rss_mb():.0f} MB)")


if __name__ == "__main__":
    main()
