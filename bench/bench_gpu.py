"""The GPU run of issue 21 (item 3): JPEG files to vectors, and the refit, on one device.

    bash bench/gpu.sh                 # on a lent GPU: ViT-B-16, random weights, at most 5 minutes
    python -m bench.bench_gpu --device cpu --model ViT-B-32 --images 48 --batch-sizes 16 \\
        --workers 0,1 --precisions fp32 --refit-dims 128 --refit-rows 20000     # the tiny CPU check

Writes ``--images`` synthetic 256x256 JPEGs (bench_embed.make_images, in parallel), then per
precision (fp32, bf16 autocast):
- forward bound: ``forward_images`` on tensors decoded beforehand, per batch size (the model alone);
- decode bound: the same DataLoader as the embedding pass with the forward replaced by nothing, per
  decode worker count (what the CPUs can feed);
- end to end: ``encode_images`` on the JPEG files at the best batch size, per worker count, with the
  device's peak memory, and the decode share: the part of its time the forward bound does not explain;
- pipeline: ``embed_dataset`` with its scan, content hashes and store writes, at the best setting.
Then the refit: the moments Z'Z and Delta'Delta of ``--refit-rows`` pairs and the eigendecomposition
of M = Z'Z - lam Delta'Delta, on the device (torch, float64) against the CPU path (PairMoments.of,
scipy eigh), with the largest eigenvalue difference. A step that would start past ``--budget``
seconds is skipped and says so, so the whole run stays inside the lent time.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.bench_embed import forward_bound, make_images, pipeline_run


def write_jpegs(root: Path, n: int, processes: int) -> list[Path]:
    """``n`` distinct JPEGs (each process its own seed and numbers: no two files alike, so the
    content-keyed store never serves one image for another)."""
    shares = np.array_split(np.arange(n), max(1, processes))
    with ProcessPoolExecutor(max_workers=max(1, processes)) as pool:
        jobs = [pool.submit(make_images, root, len(s), 256, seed, int(s[0])) for seed, s in enumerate(shares) if len(s)]
        return sorted(p for job in jobs for p in job.result())


def decode_bound(backend, paths: list[Path], workers: int) -> float:
    """Images/s of the embedding pass's own DataLoader with the forward replaced by nothing."""
    real = backend.forward_images
    backend.num_workers = workers
    backend.forward_images = lambda batch: np.zeros((len(batch), backend.embed_dim), np.float32)
    try:
        start = time.perf_counter()
        for _ in backend.iter_encode(paths):
            pass
        return len(paths) / (time.perf_counter() - start)
    finally:
        backend.forward_images = real


def end_to_end(backend, paths: list[Path], workers: int) -> tuple[float, float | None]:
    """(images/s from the files, peak device memory in GiB or None on CPU)."""
    import torch

    cuda = backend.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    backend.num_workers = workers
    start = time.perf_counter()
    backend.encode_images(paths)
    rate = len(paths) / (time.perf_counter() - start)
    return rate, (torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def refit(device: str, dim: int, rows: int, lam: float = 1.0) -> str:
    """One line: the moments and eigh of M on ``device`` (torch, float64) against the CPU path."""
    import scipy.linalg
    import torch

    from clip_icm.projection import PairMoments

    gen = np.random.default_rng(dim)
    Z = gen.normal(size=(rows, dim)).astype(np.float32)
    Z_do = Z + 0.3 * gen.normal(size=(rows, dim)).astype(np.float32) * (np.arange(dim) < dim // 4)
    start = time.perf_counter()
    moments = PairMoments.of(Z, Z_do)
    cpu_values = scipy.linalg.eigh(moments.matrix(lam), eigvals_only=True)
    cpu = time.perf_counter() - start
    z, z_do = torch.from_numpy(Z).to(device), torch.from_numpy(Z_do).to(device)  # the transfer is not timed
    _sync(device)
    start = time.perf_counter()
    z64, delta = z.double(), (z - z_do).double()
    matrix = (z64.T @ z64 - lam * (delta.T @ delta)) / rows
    values = torch.linalg.eigh(matrix)[0].cpu().numpy()  # .cpu() waits for the device
    device_s = time.perf_counter() - start
    difference = float(np.abs(values - cpu_values).max() / np.abs(cpu_values).max())
    return (f"refit D={dim}, {rows:,} pairs: moments + eigh on {device} {device_s:.3f} s, on the CPU path "
            f"{cpu:.3f} s ({cpu / device_s:.1f}x); eigenvalues differ by {difference:.1e} relative")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-sizes", type=_ints, default=[128, 256, 512])
    parser.add_argument("--forward-images", type=int, default=2048, help="pre-decoded images per forward timing")
    parser.add_argument("--workers", type=_ints, default=[4, 8, 16], help="decode worker counts")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--refit-dims", type=_ints, default=[512, 768])
    parser.add_argument("--refit-rows", type=int, default=200_000)
    parser.add_argument("--budget", type=float, default=240.0, help="seconds after which no new step starts")
    args = parser.parse_args()
    began = time.perf_counter()

    def in_budget(step: str) -> bool:
        if time.perf_counter() - began < args.budget:
            return True
        print(f"{step}: skipped (past the {args.budget:.0f} s budget)", flush=True)
        return False

    import torch

    from clip_icm.backend import ModelConfig, load_model

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name(0)}" if args.device.startswith("cuda") else ""), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        paths = write_jpegs(tmp / "data", args.images, os.cpu_count() or 1)
        print(f"{len(paths)} JPEGs 256x256 written in {time.perf_counter() - began:.1f} s", flush=True)
        for precision in args.precisions.split(","):
            if not in_budget(f"{precision}"):
                continue
            cfg = ModelConfig(args.model, "none", args.device, precision, max(args.batch_sizes), 0)
            backend = load_model(cfg)
            print(f"\n{args.model} (random weights), {backend.precision} on {backend.device}:", flush=True)
            bound = forward_bound(backend, paths, args.batch_sizes, min(args.forward_images, len(paths)))
            for bs, rate in bound.items():
                print(f"  forward bound, batch {bs:4d}: {rate:9.1f} images/s", flush=True)
            best = max(bound, key=bound.get)
            backend.batch_size = best
            for workers in args.workers:
                if not in_budget(f"  {precision}, {workers} workers"):
                    break
                decode = decode_bound(backend, paths, workers)
                rate, memory = end_to_end(backend, paths, workers)
                share = 1 - rate / bound[best]
                memory_text = f", peak device memory {memory:.2f} GiB" if memory is not None else ""
                print(f"  {workers:2d} workers: decode bound {decode:9.1f} images/s; JPEG to vector {rate:9.1f} "
                      f"images/s at batch {best} ({rate / bound[best]:.0%} of the forward bound; decode share "
                      f"{max(share, 0):.0%}){memory_text}", flush=True)
            if in_budget(f"  {precision} pipeline"):
                pipe_cfg = ModelConfig(args.model, "none", args.device, precision, best, max(args.workers))
                wall, steady, _ = pipeline_run(tmp / "data", tmp / f"cache-{precision}", pipe_cfg)
                print(f"  pipeline (embed_dataset, {max(args.workers)} workers, batch {best}): {steady:9.1f} "
                      f"images/s steady, wall {wall:.1f} s with scan, hashes, model build and store writes "
                      f"({len(paths) / wall:.1f} images/s)", flush=True)
            del backend
        for dim in args.refit_dims:
            if in_budget(f"refit D={dim}"):
                print(refit(args.device, dim, args.refit_rows), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
