"""A seconds-fast real open_clip architecture for tests: ViT width 64, 2 layers, 32 px, context 16."""
from __future__ import annotations

import json
from pathlib import Path

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def write_local_dir(folder: Path, weights_seed: int | None = None) -> Path:
    """An open_clip ``local-dir:`` folder; with ``weights_seed`` it also holds a checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": TINY_PREPROCESS}))
    if weights_seed is not None:
        save_checkpoint(folder / "open_clip_pytorch_model.bin", weights_seed)
    return folder


def save_checkpoint(path: Path, seed: int) -> Path:
    """A state dict of the tiny architecture initialised with ``seed`` (differs from seed 0)."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CFG)
    torch.save(model.state_dict(), path)
    return path
