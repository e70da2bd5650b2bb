import json
import time

import numpy as np
import pytest
from PIL import Image

from clip_icm.backend import (MODELS, ModelConfig, ModelUnavailableError, load_model, model_key,
                              pick_precision, resolve_model)
from clip_icm.resources import TOY_CLIP_DIR
from tests.tiny_clip import TINY_CFG, save_checkpoint, write_local_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_local_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def random_backend(tiny_dir):
    return load_model(ModelConfig(f"local-dir:{tiny_dir}", pretrained="none", batch_size=4, num_workers=0))


def _images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40 + 3 * i, 50, 3), dtype=np.uint8)) for i in range(n)]


def test_random_init_encodes_raw_float32_and_is_reproducible(tiny_dir, random_backend):
    images = _images()
    z = random_backend.encode_images(images)
    assert z.shape == (6, 32) and z.dtype == np.float32
    assert not np.allclose(np.linalg.norm(z, axis=1), 1.0)  # raw, as the released code uses them
    again = load_model(ModelConfig(f"local-dir:{tiny_dir}", pretrained="none", num_workers=0))
    np.testing.assert_allclose(again.encode_images(images), z, rtol=1e-5, atol=1e-5)
    t = random_backend.encode_texts(["a photo of a dog", "a sketch of a cat", "x"])
    assert t.shape == (3, 32) and t.dtype == np.float32 and np.isfinite(t).all()


def test_eval_transform_is_deterministic_and_not_the_augmenting_one(random_backend):
    assert "Random" not in repr(random_backend.transform)
    images = _images(2)
    np.testing.assert_array_equal(random_backend.encode_images(images), random_backend.encode_images(images))


def test_paths_workers_and_batches_agree_with_in_memory(tmp_path, random_backend, tiny_dir):
    images = _images(7)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    in_memory = random_backend.encode_images(images)
    calls = []
    workers = load_model(ModelConfig(f"local-dir:{tiny_dir}", pretrained="none", batch_size=3, num_workers=2))
    from_disk = workers.encode_images([str(p) for p in paths], progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_allclose(from_disk, in_memory, rtol=1e-4, atol=1e-4)
    assert calls == [(3, 7), (6, 7), (7, 7)]


def test_intervention_gets_the_given_seed(random_backend):
    seen = []

    def grey_if_odd(image, seed):
        seen.append(seed)
        return image.convert("L").convert("RGB") if seed % 2 else image

    images = _images(4)
    z = random_backend.encode_images(images, intervention=grey_if_odd, seeds=[10, 11, 12, 13])
    plain = random_backend.encode_images(images)
    assert sorted(seen) == [10, 11, 12, 13]
    np.testing.assert_allclose(z[0], plain[0], atol=1e-5)
    assert not np.allclose(z[1], plain[1], atol=1e-3)
    with pytest.raises(ValueError, match="seeds"):
        random_backend.encode_images(images, seeds=[1])


def test_key_is_known_without_building_and_matches_model(tiny_dir, random_backend):
    cfg = ModelConfig(f"local-dir:{tiny_dir}", pretrained="none")
    assert model_key(cfg) == random_backend.key
    built = dict(random_backend.model.visual.preprocess_cfg)
    built["size"] = built["size"][0] if isinstance(built["size"], tuple) else built["size"]
    assert json.loads(json.dumps(built)) == random_backend.resolved.preprocess
    assert model_key(ModelConfig(f"local-dir:{tiny_dir}", pretrained="none", precision="bf16")) != random_backend.key


def test_checkpoint_file_is_loaded_and_keyed_by_content(tmp_path, tiny_dir, random_backend):
    ckpt = save_checkpoint(tmp_path / "tiny.pt", seed=123)
    cfg = ModelConfig(f"local-dir:{tiny_dir}", pretrained=str(ckpt), num_workers=0)
    loaded = load_model(cfg)
    images = _images(3)
    import open_clip
    import torch

    torch.manual_seed(123)
    reference = open_clip.CLIP(**TINY_CFG).eval()
    with torch.inference_mode():
        expected = reference.encode_image(torch.stack([loaded.transform(i) for i in images])).numpy()
    np.testing.assert_allclose(loaded.encode_images(images), expected, rtol=1e-4, atol=1e-4)
    assert loaded.key != random_backend.key
    key = loaded.key
    save_checkpoint(ckpt, seed=124)  # same path, new content -> new key
    assert model_key(cfg) != key


def test_registered_architecture_with_checkpoint_and_local_dir_weights(tmp_path):
    import open_clip
    import torch

    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "icm-test-tiny.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(tmp_path / "cfgs")
    ckpt = save_checkpoint(tmp_path / "w.bin", seed=5)
    by_arch = load_model(ModelConfig("icm-test-tiny", pretrained=str(ckpt), num_workers=0))
    folder = write_local_dir(tmp_path / "withweights", weights_seed=5)
    by_dir = load_model(ModelConfig(f"local-dir:{folder}", num_workers=0))
    assert by_dir.resolved.checkpoint.endswith("open_clip_pytorch_model.bin")
    # Same weights (seed 5), so the same forward on the same tensor; their preprocessing differs
    # (the folder says mean/std 0.5, the bare architecture takes open_clip's default).
    batch = torch.stack([by_dir.transform(i) for i in _images(2)])
    np.testing.assert_allclose(by_arch.forward_images(batch), by_dir.forward_images(batch), rtol=1e-5, atol=1e-5)
    assert by_arch.resolved.preprocess["mean"] != by_dir.resolved.preprocess["mean"]
    with pytest.raises(ModelUnavailableError, match="pass a pretrained tag"):
        resolve_model(ModelConfig("icm-test-tiny"))
    with pytest.raises(ModelUnavailableError, match="neither a known tag nor a file"):
        resolve_model(ModelConfig("icm-test-tiny", pretrained="no-such-tag"))


def test_unknown_model_lists_presets():
    with pytest.raises(ModelUnavailableError, match="toy-clip"):
        resolve_model(ModelConfig("ViT-Nope-99"))
    assert "toy-clip" in MODELS.available()
    assert MODELS.get("toy-clip").model == f"local-dir:{TOY_CLIP_DIR}"


@pytest.mark.parametrize("offline", [True, False])
def test_missing_weights_offline_fail_fast_with_help(tmp_path, monkeypatch, offline):
    import clip_icm.backend as backend

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(backend, "_network_reachable", lambda *a, **k: False)
    if not offline:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        load_model(ModelConfig("ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert time.perf_counter() - start < 10  # a bound against hanging, not a speed claim
    message = str(err.value)
    assert "ViT-B-32" in message and str(tmp_path / "hub") in message and "HF_HUB_CACHE" in message
    with pytest.raises(ModelUnavailableError, match="hf-hub:org/absent"):
        load_model(ModelConfig("hf-hub:org/absent"))


def _fake_hf_snapshot(hub, repo_id, files):
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for name, write in files.items():
        write(snap / name)
    return snap


def test_cached_tag_and_hf_hub_models_resolve_offline(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    snap = _fake_hf_snapshot(hub, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
                             {"open_clip_model.safetensors": lambda p: p.write_bytes(b"x")})
    resolved = resolve_model(ModelConfig("ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert resolved.checkpoint == str(snap / "open_clip_model.safetensors")
    assert resolved.weights_id == "tag:ViT-B-32:laion2b_s34b_b79k"

    snap = _fake_hf_snapshot(hub, "me/tiny", {
        "open_clip_config.json": lambda p: p.write_text(json.dumps({"model_cfg": TINY_CFG})),
        "open_clip_pytorch_model.bin": lambda p: save_checkpoint(p, seed=9),
    })
    backend = load_model(ModelConfig("hf-hub:me/tiny", num_workers=0))
    assert backend.resolved.arch == f"local-dir:{snap}"
    assert backend.encode_images(_images(1)).shape == (1, 32)


def test_precision_choice():
    assert pick_precision("auto", "cpu") == "fp32"
    assert pick_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        pick_precision("int4", "cpu")


_DEVICE_IN_A_FRESH_PROCESS = """
import json, sys
from clip_icm.service import device_and_precision
print(json.dumps([device_and_precision(), "torch" in sys.modules]))
"""


def test_auto_device_agrees_with_torch_and_skips_importing_it_where_there_is_no_accelerator():
    """A page served from the store must not import torch (about 2 s) just to caption the device:
    on Linux without GPU device nodes "auto" is the CPU, without asking torch; anywhere else torch
    decides. Either way the answer is torch's own."""
    import os
    import subprocess
    import sys

    import torch

    from clip_icm.backend import _GPU_NODES, _may_have_accelerator, pick_device

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _DEVICE_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                         check=True, cwd=root, env={**os.environ, "PYTHONPATH": root}).stdout
    (device, precision), imported = json.loads(out.splitlines()[-1])
    assert device == pick_device("auto")  # torch is imported here, so this one asked torch
    assert precision == pick_precision("auto", device)
    no_nodes = sys.platform.startswith("linux") and not any(os.path.exists(p) for p in _GPU_NODES)
    assert imported is not no_nodes
    if no_nodes:
        assert not torch.cuda.is_available() and device == "cpu"
    assert _may_have_accelerator()  # torch is imported in this process: it is asked


def test_bf16_autocast_on_cpu_is_close_to_fp32(tiny_dir, random_backend):
    bf16 = load_model(ModelConfig(f"local-dir:{tiny_dir}", pretrained="none", precision="bf16", num_workers=0))
    images = _images(3)
    full, low = random_backend.encode_images(images), bf16.encode_images(images)
    assert low.dtype == np.float32
    assert np.abs(low - full).max() < 0.1 * np.abs(full).max()


def test_undecodable_file_is_named_not_fatal_to_the_batch(tmp_path, random_backend):
    good = tmp_path / "good.png"
    _images(1)[0].save(good)
    full = tmp_path / "cut.jpg"
    _images(1, seed=3)[0].resize((64, 64)).save(full, quality=95)
    (tmp_path / "cut2.jpg").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    items = [str(good), str(tmp_path / "cut2.jpg"), str(good)]
    batches = list(random_backend.iter_encode(items))
    failed = {i: why for _, _, errs in batches for i, why in errs.items()}
    assert list(failed) == [1] and "truncated" in failed[1]
    z = np.concatenate([b for _, b, _ in batches])
    np.testing.assert_allclose(z[0], z[2], atol=1e-6)
    assert not z[1].any()
    with pytest.raises(OSError, match="cut2.jpg"):
        random_backend.encode_images(items)


def test_model_key_memo_skips_resolution_until_files_change(tmp_path, monkeypatch):
    import clip_icm.backend as backend

    folder = write_local_dir(tmp_path / "m", weights_seed=1)
    cfg = ModelConfig(f"local-dir:{folder}")
    key = model_key(cfg, memo_dir=tmp_path / "memo")
    assert key == model_key(cfg)

    def no_resolve(cfg):
        raise AssertionError("resolved again")

    monkeypatch.setattr(backend, "resolve_model", no_resolve)
    assert model_key(cfg, memo_dir=tmp_path / "memo") == key
    monkeypatch.undo()
    save_checkpoint(folder / "open_clip_pytorch_model.bin", seed=2)  # new weights: memo is stale
    assert model_key(cfg, memo_dir=tmp_path / "memo") not in (key, None)
    assert model_key(cfg, memo_dir=tmp_path / "memo") == model_key(cfg)


def test_open_clips_preprocessing_defaults_and_merge_are_written_out_as_open_clip_has_them():
    """backend resolves a local-dir model without importing open_clip: its copies of open_clip's
    choices must stay what open_clip does, or a key would name other preprocessing."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    import clip_icm.backend as backend

    assert backend.PREPROCESS_DEFAULTS == asdict(PreprocessCfg())
    overlays = [{}, None, {"size": 64, "mean": [0.5] * 3, "other": 1}, {"interpolation": None, "resize_mode": "squash"},
                {"fill_color": 3, "std": (0.2, 0.2, 0.2)}]
    for overlay in overlays:
        assert backend.merge_preprocess(dict(backend.PREPROCESS_DEFAULTS), overlay) == \
            merge_preprocess_dict(PreprocessCfg(), overlay)


@pytest.mark.parametrize("names", [
    ["model.pth", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
    ["b.bin", "a.pth", "z.safetensors"],
    ["b.bin", "a.bin"],
    ["pytorch_model.pth", "model.safetensors", "x.safetensors"],
    ["notes.txt"],
])
def test_a_local_dirs_weights_file_is_the_one_open_clip_picks(tmp_path, names):
    from open_clip.factory import _find_checkpoint_in_dir

    import clip_icm.backend as backend

    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert backend._dir_checkpoint(tmp_path) == _find_checkpoint_in_dir(tmp_path)


def test_resolving_the_demo_model_imports_neither_open_clip_nor_torch():
    """A demo page served from the seed store needs the model's key, not the model (4-6 s of imports)."""
    import subprocess
    import sys

    code = ("import sys\nfrom clip_icm.backend import ModelConfig, resolve_model, model_key\n"
            "print(resolve_model(ModelConfig()).key == model_key(ModelConfig()), "
            "'torch' in sys.modules, 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(TOY_CLIP_DIR.parent.parent)).stdout.split()
    key_matches, torch_imported, open_clip_imported = out
    assert key_matches == "True" and open_clip_imported == "False"
    # torch only to ask for a GPU, where this machine may have one (backend._may_have_accelerator)
    import os

    import clip_icm.backend as backend

    may_have_gpu = not sys.platform.startswith("linux") or any(os.path.exists(n) for n in backend._GPU_NODES)
    assert torch_imported == str(may_have_gpu)
