"""Training of toy-clip (the model is :mod:`clip_icm.toyclip`) on ToyDomains.

``python -m clip_icm.toyclip_train`` is the one-command, seeded, CPU-only training script. By
default it rewrites the folder that ships in the package (:data:`clip_icm.resources.TOY_CLIP_DIR`,
run it from a checkout); ``--out`` writes elsewhere.

Pretraining data: ToyDomains images whose factors are all drawn *independently* (every class in
every style, colour and scene: like web data, CLIP has seen sketches and paintings; the
spurious links exist only in the downstream task). Each image is re-captioned every time it is
drawn; a caption always names the class and names colour, scene and style each with some
probability, in varied templates. Captions mention the variant factors only part of the time
so that they do not dominate the embedding (a prototype whose captions stressed colour/style had
intervention deltas as large as the embeddings themselves).

Loss: CLIP's symmetric InfoNCE with *multi-positive* targets. With 8 classes, "a sketch of a
star" matches many images in a batch of 256; plain InfoNCE would push those true matches apart.
Here a caption's target is spread uniformly over every image in the batch consistent with what
it says (and vice versa); the known factors make this exact.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from clip_icm import toydomains as td
from clip_icm.resources import TOY_CLIP_DIR
from clip_icm.seeding import rng
from clip_icm.toyclip import MEAN, STD, build_model, model_cfg, preprocess_cfg


@dataclass(frozen=True)
class TrainConfig:
    """Everything that changes the trained weights."""

    seed: int = 0
    image_size: int = td.DEFAULT_IMAGE_SIZE
    pool_size: int = 24_000  # distinct pretraining images (re-captioned every draw)
    steps: int = 700
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 60
    p_colour: float = 0.5  # probability that a caption names the object colour
    p_background: float = 0.4
    p_style: float = 0.5
    threads: int = 2
    notes: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- captions
def caption(f: td.Factors, gen: np.random.Generator, p_colour: float = 0.5, p_background: float = 0.4,
            p_style: float = 0.5) -> tuple[str, tuple[bool, bool, bool]]:
    """A random caption of an image and which of (colour, background, style) it names.

    The class is always named. Colour is never named for a sketch: it is not drawn there.
    """
    says_colour = f.style != "sketch" and gen.random() < p_colour
    says_bg = gen.random() < p_background
    says_style = gen.random() < p_style
    noun = f"{f.colour} {f.cls}" if says_colour else f.cls
    scene = " " + td.BACKGROUND_WORDS[f.background][int(gen.integers(2))] if says_bg else ""
    style = td.STYLE_WORDS[f.style][int(gen.integers(3))]
    form = int(gen.integers(3))
    if says_style and form == 0:
        text = f"{td.with_article(style)} of {td.with_article(noun)}{scene}."
    elif says_style and form == 1:
        text = f"{td.with_article(noun)}{scene}, {style}."
    elif says_style:
        text = f"{style} of {td.with_article(noun)}{scene}"
    else:
        prefix = ("", "an image of ", "there is ")[form]
        text = f"{prefix}{td.with_article(noun)}{scene}."
    return text, (says_colour, says_bg, says_style)


# --------------------------------------------------------------------------- data
def _render_chunk(args: tuple[list[td.Factors], int]) -> np.ndarray:
    factors, size = args
    return np.stack([np.asarray(td.render(f, size)) for f in factors])


def pretraining_factors(cfg: TrainConfig) -> list[td.Factors]:
    """Independent, uniform factors: no class-style, class-colour or class-scene link."""
    gen = rng("toyclip-pretraining", cfg.seed)
    return [td.sample_factors(gen) for _ in range(cfg.pool_size)]


def render_pool(factors: list[td.Factors], image_size: int, workers: int = 2) -> np.ndarray:
    """(N, H, W, 3) uint8 images, rendered in ``workers`` processes (rendering is deterministic)."""
    chunks = [(factors[i:i + 1000], image_size) for i in range(0, len(factors), 1000)]
    if workers <= 1 or len(chunks) == 1:  # starting processes would cost more than it saves
        return np.concatenate([_render_chunk(c) for c in chunks])
    with get_context("spawn").Pool(workers) as pool:
        return np.concatenate(pool.map(_render_chunk, chunks))


def _codes(factors: list[td.Factors]) -> np.ndarray:
    """(N, 4) integer codes of class, colour, background, style."""
    tables = (td.CLASSES, list(td.COLOURS), list(td.BACKGROUNDS), td.STYLES)
    return np.array([[t.index(v) for t, v in zip(tables, (f.cls, f.colour, f.background, f.style))]
                     for f in factors])


def match_matrix(codes: np.ndarray, says: np.ndarray) -> np.ndarray:
    """(B, B) bool: caption i is true of image j (same class, and same value for all it names)."""
    match = codes[:, None, 0] == codes[None, :, 0]
    for k in range(3):
        same = codes[:, None, k + 1] == codes[None, :, k + 1]
        match &= same | ~says[:, None, k]
    return match


# --------------------------------------------------------------------------- training
def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def soft_clip_loss(img, txt, logit_scale, match):
    """Symmetric cross-entropy against targets spread over all true matches."""
    import torch

    logits = logit_scale * txt @ img.T  # (captions, images)
    target = match.float() / match.float().sum(1, keepdim=True)
    target_t = match.T.float() / match.T.float().sum(1, keepdim=True)
    loss_t = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    loss_i = -(target_t * torch.log_softmax(logits.T, 1)).sum(1).mean()
    return (loss_t + loss_i) / 2


def train(cfg: TrainConfig, out_dir: Path = TOY_CLIP_DIR, log=print) -> dict:
    """Pretrain toy-clip and write the local-dir folder; returns the TRAINING.json record."""
    import open_clip
    import torch

    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    factors = pretraining_factors(cfg)
    images = render_pool(factors, cfg.image_size, workers=cfg.threads)
    codes = _codes(factors)
    t_data = time.time() - t_start
    log(f"rendered {len(images)} pretraining images in {t_data:.0f} s")
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    model = build_model(cfg.image_size, cfg.seed)
    tokenizer = open_clip.get_tokenizer("RN50", context_length=model_cfg()["text_cfg"]["context_length"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    gen = rng("toyclip-batches", cfg.seed)
    losses = []
    model.train()
    for step in range(cfg.steps):
        idx = gen.choice(len(images), cfg.batch_size, replace=False)
        caps = [caption(factors[i], gen, cfg.p_colour, cfg.p_background, cfg.p_style) for i in idx]
        says = np.array([c[1] for c in caps])
        x = (torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        tokens = tokenizer([c[0] for c in caps])
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        img, txt, scale = model(x, tokens)
        loss = soft_clip_loss(img, txt, scale, torch.from_numpy(match_matrix(codes[idx], says)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 25 == 0 or step == cfg.steps - 1:
            log(f"step {step:4d}/{cfg.steps} loss {np.mean(losses[-25:]):.4f} "
                f"scale {scale.item():.1f} lr {_lr(step, cfg):.2e} t {time.time() - t_start:.0f}s")
    record = {
        "train_config": asdict(cfg),
        "model_cfg": model_cfg(cfg.image_size),
        "preprocess_cfg": preprocess_cfg(cfg.image_size),
        "data_recipe": {
            "generator": "clip_icm.toydomains.sample_factors (independent uniform factors), seed "
                         f"rng('toyclip-pretraining', {cfg.seed})",
            "pool_size": cfg.pool_size, "classes": list(td.CLASSES), "styles": list(td.STYLES),
            "colours": list(td.COLOURS), "backgrounds": list(td.BACKGROUNDS),
            "captions": f"clip_icm.toyclip_train.caption, p_colour={cfg.p_colour}, p_background={cfg.p_background}, "
                        f"p_style={cfg.p_style}; class always named; colour never named for sketches",
            "loss": "symmetric InfoNCE with multi-positive targets (soft_clip_loss)",
        },
        "final_loss": float(np.mean(losses[-25:])),
        "loss_curve": [round(float(np.mean(losses[i:i + 25])), 4) for i in range(0, len(losses), 25)],
        "data_seconds": round(t_data, 1),
        "train_seconds": round(time.time() - t_start, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{cfg.threads} threads",
        "open_clip_version": open_clip.__version__,
        "script_commit": _git_commit(),
    }
    save(model, out_dir, record)
    return record


def _git_commit() -> str:
    """Commit of this script; '+dirty' if it differs from that commit."""
    here = Path(__file__).resolve()
    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%H", "--", here.name], cwd=here.parent,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", here.name], cwd=here.parent).returncode
        return commit + ("+dirty" if dirty else "") if commit else "uncommitted"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save(model, out_dir: Path, record: dict) -> None:
    """Write the open_clip local-dir folder: config, fp16 safetensors, TRAINING.json."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    config = {"model_cfg": record["model_cfg"], "preprocess_cfg": record["preprocess_cfg"]}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TOY_CLIP_DIR)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--pool-size", type=int, default=TrainConfig.pool_size)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    args = parser.parse_args(argv)
    cfg = TrainConfig(seed=args.seed, steps=args.steps, pool_size=args.pool_size)
    record = train(cfg, args.out, log=lambda s: print(s, flush=True))
    print(f"wrote {args.out} (final loss {record['final_loss']:.4f}, {record['train_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
