"""Peak memory of an ICM fit from the store: the streamed Gram sums against the stack in memory.

    python -m bench.bench_streamed [--n 200000] [--dim 512] [--chunk 4096]

Writes ``n`` synthetic unit-norm pairs (Z, Z_do) of dimension ``dim`` into a fresh store under a
temporary folder, in entries of ``chunk`` rows (float16, as the pipeline stores vectors), then fits
ICM (K = 64, relative lam 1) in two child processes, each measured on its own (peak resident set,
ru_maxrss, which includes the interpreter and numpy/scipy, about 100 MB):
- "streamed": PairMoments.streamed over the memory-mapped entries (stored_pairs), 8,192 rows at a time;
- "in memory": every entry read and stacked, then PairMoments.of (what a fit on an EmbeddingSet does).
Prints the seconds and the peak MB of each, and the largest difference of their moments.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from clip_icm.store import EmbeddingStore, make_key


def write_pairs(root: str, n: int, dim: int, chunk: int) -> list[tuple[str, str]]:
    """``n`` pairs in entries of ``chunk`` rows; never more than one chunk in memory."""
    store, keys, gen = EmbeddingStore(root), [], np.random.default_rng(0)
    mean = 3 * gen.normal(size=dim)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        Z = gen.normal(size=(rows, dim)) + mean
        Z_do = Z + 0.3 * gen.normal(size=(rows, dim)) * (np.arange(dim) < dim // 4)
        norm = np.linalg.norm(Z, axis=1, keepdims=True)
        keys.append((make_key("bench z", start), make_key("bench z_do", start)))
        store.put(keys[-1][0], Z / norm)
        store.put(keys[-1][1], Z_do / norm)
    return keys


def fit_in_child(root: str, keys: list[tuple[str, str]], how: str) -> dict:
    """One fit in a fresh process (its peak memory is its own); returns its report."""
    out = subprocess.run([sys.executable, "-m", "bench.bench_streamed", "--child", how, "--root", root],
                         input=json.dumps(keys), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def child(how: str, root: str) -> None:
    from clip_icm.projection import InvariantProjection, PairMoments
    from clip_icm.store import stored_pairs

    keys = json.load(sys.stdin)
    start = time.perf_counter()
    store = EmbeddingStore(root)
    if how == "streamed":
        moments = PairMoments.streamed(stored_pairs(store, keys))
    else:
        parts = list(stored_pairs(store, keys))
        moments = PairMoments.of(np.concatenate([np.asarray(z) for z, _ in parts]),
                                 np.concatenate([np.asarray(z_do) for _, z_do in parts]))
    InvariantProjection(n_components=64, lam=1.0, lam_mode="relative").fit_moments(moments)
    seconds = time.perf_counter() - start
    np.save(os.path.join(root, f"{how}.npy"), np.stack([moments.zz, moments.dd]))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "n": moments.n}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--child", choices=("streamed", "in memory"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.root)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; n={args.n:,} pairs, D={args.dim}, "
          f"entries of {args.chunk} rows (float16)")
    with tempfile.TemporaryDirectory(prefix="bench-streamed-") as root:
        start = time.perf_counter()
        keys = write_pairs(root, args.n, args.dim, args.chunk)
        print(f"wrote {2 * len(keys)} entries in {time.perf_counter() - start:.1f} s")
        for how in ("streamed", "in memory"):
            report = fit_in_child(root, keys, how)
            print(f"{how:>10}: fit {report['seconds']:.1f} s, peak memory {report['peak_mb']:.0f} MB "
                  f"(n = {report['n']:,})")
        a, b = np.load(os.path.join(root, "streamed.npy")), np.load(os.path.join(root, "in memory.npy"))
        print(f"moments: max relative difference {float(np.abs(a - b).max() / np.abs(b).max()):.1e}")


if __name__ == "__main__":
    main()
