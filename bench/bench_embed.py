"""Embedding throughput: the full pipeline vs the pure model forward vs a naive per-image loop.

Same model, same images (synthetic 256x256 JPEGs in a DomainBed layout, about PACS-sized):

- forward bound: ``encode_image`` on tensors decoded and transformed beforehand, at the best
  of several batch sizes (what the model alone can do: the compute bound);
- pipeline: ``clip_icm.pipeline.embed_dataset`` into an empty store (scan, content hashes,
  decode + resize in DataLoader workers, forward, float16 store writes; model build excluded
  from the image rate, included in the wall time), for each worker count asked;
- naive: load, transform and encode one image at a time (batch 1, no workers);
- cached: the same embed_dataset call again (every entry hit; the model is not loaded).

CPU (here):  python -m bench.bench_embed
GPU variant: python -m bench.bench_embed --device cuda --model ViT-B-16 --pretrained none \
                 --precision bf16 --images 4096 --batch-sizes 64,128,256,512 --workers 4,8,16
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(root: Path, n: int, size: int = 256, seed: int = 0, start: int = 0) -> list[Path]:
    """n JPEGs with smooth structure plus noise (realistic JPEG size and decode cost), numbered
    from ``start`` (so that processes can each write a share of one folder: give each its own seed)."""
    g = np.random.default_rng(seed)
    paths = []
    for i in range(start, start + n):
        folder = root / f"domain{i % 2}" / f"class{(i // 2) % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = g.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
        image = np.clip(image + g.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(image).save(paths[-1], quality=90)
    return paths


def forward_bound(backend, paths: list[Path], batch_sizes: list[int], per_size: int) -> dict[int, float]:
    """Images/s of the bare forward on pre-decoded tensors, per batch size."""
    import torch

    from clip_icm.datasets import load_image

    tensors = torch.stack([backend.transform(load_image(p)) for p in paths[:per_size]])
    if backend.device.startswith("cuda"):
        tensors = tensors.pin_memory()
    rates = {}
    for bs in batch_sizes:
        backend.forward_images(tensors[:bs])  # warm-up (allocator, kernels)
        start = time.perf_counter()
        for i in range(0, len(tensors), bs):
            backend.forward_images(tensors[i:i + bs])  # returns numpy: synchronises a GPU
        rates[bs] = len(tensors) / (time.perf_counter() - start)
    return rates


def naive_loop(backend, paths: list[Path]) -> float:
    """Images/s of load -> transform -> encode, one image at a time."""
    from clip_icm.datasets import load_image

    start = time.perf_counter()
    for p in paths:
        backend.forward_images(backend.transform(load_image(p))[None])
    return len(paths) / (time.perf_counter() - start)


def pipeline_run(root: Path, cache: Path, model_cfg) -> tuple[float, float, bool]:
    """(wall seconds, steady image rate, model loaded?) of one embed_dataset call.

    The steady rate counts the images after the first batch over the time from the first
    batch's end to the last's: it leaves out the model build, which happens lazily on the
    first cache miss. The wall time includes everything.
    """
    from clip_icm.pipeline import DataConfig, InterventionConfig, embed_dataset
    from clip_icm.store import EmbeddingStore

    marks: list[tuple[float, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "images" and done > 0:
            marks.append((time.perf_counter(), done))

    no_pairs = InterventionConfig(image=(), text_banks=(), templates="single")
    start = time.perf_counter()
    run = embed_dataset(DataConfig(str(root), val_fraction=0.2), model_cfg, no_pairs, EmbeddingStore(cache), progress)
    wall = time.perf_counter() - start
    steady = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0]) if len(marks) > 1 else float("nan")
    return wall, steady, run.model_loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--images", type=int, default=160, help="images for the pipeline runs")
    parser.add_argument("--batch-sizes", default="8,32,64", help="batch sizes tried for the forward bound")
    parser.add_argument("--forward-images", type=int, default=64, help="images timed per forward batch size")
    parser.add_argument("--naive-images", type=int, default=32)
    parser.add_argument("--workers", default="0,1", help="DataLoader worker counts tried for the pipeline")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()

    import torch

    from clip_icm.backend import ModelConfig, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        paths = make_images(tmp / "data", args.images)
        base = ModelConfig(args.model, args.pretrained, args.device, args.precision, max(batch_sizes), 0)
        start = time.perf_counter()
        backend = load_model(base)
        build = time.perf_counter() - start
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{torch.get_num_threads()} torch threads; device {backend.device}, precision {backend.precision}")
        print(f"model {args.model} (pretrained {args.pretrained}), input {backend.resolved.preprocess['size']} px; "
              f"{args.images} JPEGs 256x256; model build {build:.1f} s")
        bound = forward_bound(backend, paths, batch_sizes, args.forward_images)
        best_bs = max(bound, key=bound.get)
        for bs, rate in bound.items():
            print(f"forward bound, batch {bs:4d}: {rate:8.1f} images/s")
        naive = naive_loop(backend, paths[:args.naive_images])
        print(f"naive per-image loop:      {naive:8.1f} images/s")
        del backend
        for workers in [int(w) for w in args.workers.split(",")]:
            cfg = ModelConfig(args.model, args.pretrained, args.device, args.precision, best_bs, workers)
            cache = tmp / f"cache-{workers}"
            wall, rate, _ = pipeline_run(tmp / "data", cache, cfg)
            print(f"pipeline, batch {best_bs}, {workers} workers: {rate:8.1f} images/s steady "
                  f"({rate / bound[best_bs]:.0%} of the forward bound, {rate / naive:.1f}x the naive loop); "
                  f"wall {wall:.1f} s incl. scan, hashing and model build "
                  f"({args.images / wall:.1f} images/s, {args.images / wall / bound[best_bs]:.0%} of the bound)")
            cached_wall, _, cached_loaded = pipeline_run(tmp / "data", cache, cfg)
            print(f"  second run (cache): {cached_wall:.2f} s = {cached_wall / wall:.1%} of the first; "
                  f"model loaded: {cached_loaded}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
