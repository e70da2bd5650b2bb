"""toy-clip: captions, the multi-positive loss, the training script, and the shipped checkpoint."""
from __future__ import annotations

import json

import numpy as np

from clip_icm import toyclip as tc
from clip_icm import toyclip_train as train
from clip_icm import toydomains as td
from clip_icm.resources import TOY_CLIP_DIR as SHIPPED
from clip_icm.seeding import rng


def test_captions_name_the_class_and_say_what_they_name():
    gen = rng("test captions")
    for _ in range(300):
        f = td.sample_factors(gen)
        text, (says_colour, says_bg, says_style) = train.caption(f, gen)
        assert f.cls in text
        assert (f"{f.colour} {f.cls}" in text) == says_colour  # the colour qualifies the object
        assert says_bg == any(w in text for w in td.BACKGROUND_WORDS[f.background])
        assert says_style == any(w in text for w in td.STYLE_WORDS[f.style])
        if f.style == "sketch":
            assert not says_colour  # colour is not drawn in a sketch


def test_match_matrix_follows_what_captions_say():
    # codes: class, colour, background, style
    codes = np.array([[0, 1, 2, 3], [0, 5, 2, 3], [1, 1, 2, 3]])
    says = np.array([[True, False, False], [False, False, False], [False, False, True]])
    match = train.match_matrix(codes, says)
    assert match.diagonal().all()
    assert not match[0, 1]  # caption 0 names colour 1; image 1 is colour 5
    assert match[1, 0]  # caption 1 names only the class
    assert not match[0, 2] and not match[2, 0]  # another class never matches


def test_soft_loss_prefers_aligned_embeddings():
    import torch

    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(16, 8, generator=gen), dim=-1)
    match = torch.eye(16, dtype=torch.bool)
    aligned = train.soft_clip_loss(img, img, torch.tensor(10.0), match)
    shuffled = train.soft_clip_loss(img, img[torch.randperm(16, generator=gen)], torch.tensor(10.0), match)
    assert aligned < shuffled


def test_training_script_writes_a_loadable_local_dir(tmp_path):
    import open_clip

    cfg = train.TrainConfig(steps=2, pool_size=40, batch_size=8, warmup_steps=1)
    record = train.train(cfg, tmp_path, log=lambda s: None)
    assert {"train_config", "data_recipe", "final_loss", "train_seconds", "script_commit"} <= set(record)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    image = preprocess(td.render(td.sample_factors(rng("one image")))).unsqueeze(0)
    assert image.shape[-1] == cfg.image_size
    assert model.eval().encode_image(image).shape == (1, tc.model_cfg()["embed_dim"])


class TestShippedCheckpoint:  # committed to the repo: a missing file is a failure, not a skip
    def test_files_record_how_it_was_made(self):
        assert (SHIPPED / "open_clip_model.safetensors").stat().st_size < 20 * 2**20
        record = json.loads((SHIPPED / "TRAINING.json").read_text())
        assert record["train_config"]["seed"] == 0
        assert record["final_loss"] < record["loss_curve"][0]
        assert "+dirty" not in record["script_commit"] and record["script_commit"] not in ("unknown", "uncommitted")
        config = json.loads((SHIPPED / "open_clip_config.json").read_text())
        assert config["model_cfg"] == tc.model_cfg() and config["preprocess_cfg"] == tc.preprocess_cfg()

    def test_weights_are_fp16(self):
        from safetensors import safe_open

        with safe_open(str(SHIPPED / "open_clip_model.safetensors"), "pt") as fh:
            dtypes = {str(fh.get_tensor(k).dtype) for k in fh.keys()}
        assert dtypes == {"torch.float16"}

    def test_loads_offline_through_local_dir_and_classifies_zero_shot(self):
        import open_clip
        import torch

        name = f"local-dir:{SHIPPED}"
        model, _, preprocess = open_clip.create_model_and_transforms(name)
        tokenizer = open_clip.get_tokenizer(name)
        model.eval()
        gen = rng("test zero-shot")
        factors = [td.sample_factors(gen, cls=c, style=s) for c in td.CLASSES for s in ("photo", "cartoon")]
        with torch.no_grad():
            images = model.encode_image(torch.stack([preprocess(td.render(f)) for f in factors]))
            texts = model.encode_text(tokenizer([f"a photo of a {c}." for c in td.CLASSES]))
        assert images.shape == (len(factors), tc.model_cfg()["embed_dim"]) and texts.shape[0] == len(td.CLASSES)
        pred = (torch.nn.functional.normalize(images, dim=-1) @ torch.nn.functional.normalize(texts, dim=-1).T).argmax(1)
        truth = torch.tensor([td.CLASSES.index(f.cls) for f in factors])
        assert (pred == truth).float().mean() > 0.5  # chance is 1/8
