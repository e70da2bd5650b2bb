"""The Ray engine against the local path on a folder of a few hundred images (issue 21, item 2).

    python -m bench.ray_vs_local [--images 300] [--model ViT-B-32]   # needs the [distributed] extra

Writes ``--images`` synthetic JPEGs (bench_embed.make_images) and embeds them, with one image
intervention's pairs, twice into two empty stores: locally, then with ``--engine ray`` on a local
Ray (``ray.init(num_cpus=os.cpu_count())``). Prints each path's seconds, whether both stores hold
the same keys, and the largest absolute difference of their vectors.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_embed import make_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import ray

    from clip_icm.backend import ModelConfig
    from clip_icm.distributed import RayEncoder
    from clip_icm.pipeline import DataConfig, InterventionConfig, embed_dataset
    from clip_icm.store import EmbeddingStore

    tmp = Path(tempfile.mkdtemp(prefix="ray-vs-local-"))
    try:
        make_images(tmp / "data", args.images)
        model = ModelConfig(args.model, "none", "cpu", "fp32", args.batch_size, 0)
        pairs = InterventionConfig(image=("grayscale",), text_banks=(), templates="single", intervened_val=())
        runs = {}
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        for name, engine in (("local", None), ("ray", RayEncoder)):
            start = time.perf_counter()
            runs[name] = embed_dataset(DataConfig(str(tmp / "data")), model, pairs, EmbeddingStore(tmp / name),
                                       engine=engine)
            print(f"{name}: {time.perf_counter() - start:.1f} s, {runs[name].computed} entries computed")
        keys = [{p.name for p in (tmp / name).glob("??/*.json")} for name in runs]
        a, b = runs["local"].embeddings, runs["ray"].embeddings
        difference = max(np.abs(a.features - b.features).max(),
                         *(np.abs(p.z_do - q.z_do).max() for p, q in zip(a.pairs, b.pairs)))
        print(f"{len(a.features)} images, {args.model} (random weights): same keys: {keys[0] == keys[1]} "
              f"({len(keys[0])} entries); max abs difference of the vectors: {difference:.2e}")
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
