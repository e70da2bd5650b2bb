"""The embedding pass on Ray Data (the ``[distributed]`` extra: ``pip install .[distributed]``).

:class:`RayEncoder` is a :data:`clip_icm.pipeline.Engine`: ``embed_dataset(..., engine=RayEncoder)``
(or ``python -m clip_icm embed --engine ray [--address ADDR]``) reads the images of each missing
chunk with Ray Data, decodes, intervenes and transforms them in CPU tasks, and encodes them in
batches on actors (one GPU each where the cluster has GPUs, else CPU). The pipeline keeps
everything else: which chunks are missing, their content keys, and each chunk's store write as
soon as its last row is back, so the local store serves the results unchanged, and a rerun after
a killed job computes only the chunks that were not written. Text prompts (a few hundred) are
encoded in this process.
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from clip_icm.backend import ClipBackend, Intervention, ModelConfig, load_model, resolve_model
from clip_icm.errors import InvalidInput

MISSING_RAY = "the [distributed] extra is not installed (ray); pip install '.[distributed]'"


def ray_available() -> None:
    """Raise InvalidInput, saying how to install it, when Ray Data cannot be imported."""
    _ray()


def _ray():
    # Ray Data's progress bars otherwise replace builtins.print, for good, in this process: numba then
    # cannot compile any function that prints (pynndescent's neighbour descent, on the next large UMAP
    # map in the same process, failed with "Untyped global name 'print'").
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InvalidInput(f"--engine ray: {MISSING_RAY}") from None
    return ray


class RayEncoder:
    """ClipBackend's image encoding on Ray Data; texts through a model built here."""

    def __init__(self, config: ModelConfig, address: str | None = None, encoders: int | None = None) -> None:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.config, self.resolved = config, resolve_model(config)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.gpus_per_encoder = 1 if gpus else 0
        self.encoders = encoders or max(1, gpus)
        self._local: ClipBackend | None = None

    @property
    def local(self) -> ClipBackend:
        """The model in this process: its eval transform goes to the decode tasks, and it encodes the
        texts (at the config's device and precision, which their keys name)."""
        if self._local is None:
            self._local = load_model(self.config)
        return self._local

    def _encoder_config(self) -> ModelConfig:
        """The actors' config: a GPU each where the cluster has them, at the precision this process
        resolved, which the store's keys name (an actor resolving "auto" on a GPU would pick bf16
        under a key that says fp32)."""
        from dataclasses import replace

        return replace(self.config, device="cuda" if self.gpus_per_encoder else "cpu",
                       precision=self.resolved.precision)

    def _size(self) -> tuple[int, int]:
        size = self.resolved.preprocess["size"]
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def embed_dim(self) -> int:
        return int(self.resolved.model_cfg["embed_dim"])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.local.encode_texts(texts)

    def iter_encode(self, images: Sequence, intervention: Intervention | None = None,
                    seeds: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray, dict[int, str]]]:
        """As ClipBackend.iter_encode: (offset, float32 embeddings, {row: decode error}) in row order."""
        ray = _ray()
        seeds = list(range(len(images))) if seeds is None else [int(s) for s in seeds]
        # Lazily rendered items (ToyDomains' counterfactuals) are rendered here: tasks get the images.
        rows = [{"row": i, "item": images[i], "seed": seeds[i]} for i in range(len(images))]
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # batches come back in row order
        dataset = ray.data.from_items(rows).map_batches(
            _decode, batch_size=self.config.batch_size, batch_format="pandas",
            fn_kwargs={"transform": self.local.transform, "intervention": intervention, "size": self._size()})
        dataset = dataset.map_batches(
            _Encoder, fn_constructor_kwargs={"config": self._encoder_config()}, batch_size=self.config.batch_size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=self.encoders),
            num_gpus=self.gpus_per_encoder)
        offset = 0
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            if not np.array_equal(batch["row"], np.arange(offset, offset + len(batch["row"]))):
                raise RuntimeError("Ray Data returned rows out of order")  # preserve_order promises it
            failed = {int(row): str(why) for row, why in zip(batch["row"], batch["error"]) if why}
            yield offset, np.asarray(batch["vector"], np.float32), failed
            offset += len(batch["row"])


def _decode(batch, transform, intervention, size: tuple[int, int]):
    """Decode, intervene, transform (a CPU task): ClipBackend's own per-item step, so both paths
    feed the model the same pixels (``size``: the zeros a failed decode leaves)."""
    from clip_icm.backend import _ImageDataset

    items = _ImageDataset(list(batch["item"]), transform, intervention, list(batch["seed"]), size)
    decoded = [items[i] for i in range(len(items))]
    return {"row": batch["row"].to_numpy(), "pixels": np.stack([t.numpy() for t, _ in decoded]),
            "error": np.array([e for _, e in decoded], dtype=object)}


class _Encoder:
    """An actor holding the model on its device; encodes batches of transformed pixels."""

    def __init__(self, config: ModelConfig) -> None:
        self.backend = load_model(config)

    def __call__(self, batch: dict) -> dict:
        import torch

        vectors = self.backend.forward_images(torch.from_numpy(np.ascontiguousarray(batch["pixels"])))
        vectors[np.array([bool(e) for e in batch["error"]], dtype=bool)] = 0.0  # as a failed decode locally
        return {"row": batch["row"], "vector": vectors, "error": batch["error"]}
