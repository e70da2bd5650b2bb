"""toy-clip: a tiny CLIP, built from open_clip's own architecture, pretrained on ToyDomains.

This module is the model's definition: its open_clip config, its preprocessing and a fresh,
seeded instance. The weights ship inside the package (:data:`clip_icm.resources.TOY_CLIP_DIR`)
as an open_clip ``local-dir:`` folder (``open_clip_config.json`` with ``model_cfg`` and
``preprocess_cfg``, fp16 ``open_clip_model.safetensors``, and ``TRAINING.json``: config, seed,
data recipe, loss curve, time, git commit of the training script), so
``open_clip.create_model_and_transforms(f"local-dir:{TOY_CLIP_DIR}")`` and
``open_clip.get_tokenizer(f"local-dir:{TOY_CLIP_DIR}")`` load it offline. How it was trained,
and the one command that trains it again, live apart in :mod:`clip_icm.toyclip_train` (as
open_clip keeps ``open_clip_train`` apart from the model).
"""
from __future__ import annotations

from clip_icm.toydomains import DEFAULT_IMAGE_SIZE

MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, so preprocessing is the familiar one
STD = (0.26862954, 0.26130258, 0.27577711)


def model_cfg(image_size: int = DEFAULT_IMAGE_SIZE) -> dict:
    """open_clip CLIP config: ModifiedResNet image tower, small text transformer.

    The standard 49,408-token vocabulary is kept so that open_clip's own tokenizer works with
    no extra files; it is most of the text tower's weights, which is why the text width is small.
    """
    return {
        "embed_dim": 128,
        "vision_cfg": {"image_size": image_size, "layers": [1, 1, 1, 1], "width": 24, "head_width": 64},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 112, "heads": 2, "layers": 3},
    }


def preprocess_cfg(image_size: int = DEFAULT_IMAGE_SIZE) -> dict:
    return {"size": image_size, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
            "resize_mode": "shortest"}


def build_model(image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0):
    """A freshly initialised toy-clip (``open_clip.CLIP``), its initial weights fixed by ``seed``."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    return open_clip.CLIP(**model_cfg(image_size))
