"""CLIP models through open_clip: resolve weights offline-first, encode images and texts.

Every model name ends as one code path: an architecture config plus (maybe) a local
checkpoint file. Tags and ``hf-hub:`` names are first looked up in the local caches;
only when they are missing and the network is reachable does open_clip download them.
Offline and missing, :func:`load_model` fails at once with a message saying where the
weights were looked for and how to provide them - it never waits on a network timeout.

The model key (:func:`model_key`) is computed from the resolved config alone, so a
cache hit in the embedding store never builds the model.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import sys
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from clip_icm.errors import InvalidInput
from clip_icm.hashing import file_digest, json_digest
from clip_icm.registry import Registry
from clip_icm.resources import TOY_CLIP_DIR
from clip_icm.store import atomic_write

HF_PREFIX, LOCAL_PREFIX = "hf-hub:", "local-dir:"
# open_clip's own preference order for a checkpoint inside a model folder.
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

ProgressFn = Callable[[int, int], None]
Intervention = Callable[..., object]  # (PIL.Image, seed) -> PIL.Image


class ModelUnavailableError(InvalidInput):
    """The model name is unknown, or its weights are not on disk and cannot be fetched.

    A user error (and a ValueError): it is always about what the user asked for (the CLI answers in one line)."""


@dataclass(frozen=True)
class ModelPreset:
    """A named model: an open_clip name (maybe ``local-dir:``) and its default pretrained tag."""

    model: str
    pretrained: str | None = None
    description: str = ""
    missing_hint: str = ""  # what to do when its files are absent


MODELS: Registry[ModelPreset] = Registry("model")
MODELS.register(
    "toy-clip",
    ModelPreset(f"{LOCAL_PREFIX}{TOY_CLIP_DIR}", None,
                "tiny CLIP trained on the bundled ToyDomains world (ships with the package)",
                "it ships with the package; reinstall it, or rebuild it with: python -m clip_icm.toyclip_train"),
)


@dataclass(frozen=True)
class ModelConfig:
    """Which model to run and how.

    name:        a preset of :data:`MODELS`, an open_clip architecture (``open_clip.list_models()``),
                 ``hf-hub:org/repo`` or ``local-dir:/path/with/open_clip_config.json``
    pretrained:  None = the preset's default; an open_clip tag; a checkpoint file; "none" = random init
    device:      "auto" = cuda, then mps, then cpu
    precision:   "auto" = bf16 autocast on cuda (fp16 where bf16 is unsupported), fp32 elsewhere;
                 or "fp32", "bf16", "fp16"
    num_workers: DataLoader decode workers; None = one per spare core (0 on a 2-core CPU run,
                 see bench/RESULTS.md for why)
    """

    name: str = "toy-clip"
    pretrained: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    num_workers: int | None = None

    def __post_init__(self) -> None:
        """The names and counts, checked here; whether the device exists is asked when it is picked."""
        if self.device != "auto":
            _check_device_name(self.device)
        if self.precision not in PRECISIONS:
            raise InvalidInput(f"precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, "
                               f"not {self.precision!r}")
        if self.batch_size < 1 or (self.num_workers is not None and self.num_workers < 0):
            raise InvalidInput(f"batch_size must be >= 1 and num_workers >= 0, got {self.batch_size} and "
                               f"{self.num_workers}")


@dataclass(frozen=True)
class ResolvedModel:
    """Everything that determines the vectors, found without building the model."""

    arch: str                    # open_clip model name (built-in or local-dir:)
    checkpoint: str | None       # local weights file, None = random init
    weights_id: str              # stable identity of the weights
    model_cfg: dict
    preprocess: dict
    quick_gelu: bool
    device: str
    precision: str
    display: str                 # what the user asked for, for messages

    @property
    def key(self) -> str:
        payload = {k: v for k, v in asdict(self).items() if k not in ("checkpoint", "device", "display", "arch")}
        # A local-dir path differs between machines; its config and weights identity do not.
        payload["arch"] = "local-dir" if self.arch.startswith(LOCAL_PREFIX) else self.arch
        return json_digest(payload)[:32]


# ---------------------------------------------------------------- resolution (no model built)

def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (not import time)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _network_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """True if ``host`` answers within ``timeout``; DNS can block, so the probe runs in a thread."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def _missing(display: str, looked: Sequence[str | Path]) -> ModelUnavailableError:
    where = "; ".join(str(p) for p in looked)
    return ModelUnavailableError(
        f"weights for model {display} are not on disk (looked in: {where}) and there is no network. "
        f"Put them in the Hugging Face cache ({hf_cache_dir()}, set HF_HUB_CACHE to use another), "
        "or pass a local checkpoint file as --pretrained / a local-dir: folder, "
        "or use --pretrained none for random weights."
    )


def _may_download(display: str, looked: Sequence[str | Path]) -> None:
    if _offline() or not _network_reachable():
        raise _missing(display, looked)


def _cached_hf_file(repo_id: str, filenames: Sequence[str]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=str(hf_cache_dir()))
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def _hf_candidates(filename: str) -> list[str]:
    """open_clip prefers a .safetensors twin of a .bin/.pth file."""
    stem, ext = os.path.splitext(filename)
    return [stem + ".safetensors", filename] if ext in (".bin", ".pth") else [filename]


def _tag_checkpoint(arch: str, tag: str, display: str) -> str:
    """Local file for an open_clip pretrained tag; download only when online."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if cfg.get("file"):
        return cfg["file"]
    looked: list[str | Path] = []
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        hit = _cached_hf_file(repo_id, _hf_candidates(filename) if filename else _HF_WEIGHT_FILES)
        if hit:
            return hit
        looked.append(hf_cache_dir() / f"models--{repo_id.replace('/', '--')}")
    if cfg.get("url"):
        name = os.path.basename(cfg["url"])
        for folder in (hf_cache_dir(), Path("~/.cache/clip").expanduser()):
            if (folder / name).is_file():
                return str(folder / name)
            looked.append(folder / name)
    _may_download(display, looked)
    return open_clip.download_pretrained(cfg, cache_dir=str(hf_cache_dir()))


def _hf_hub_folder(repo_id: str, display: str) -> str:
    """The cached snapshot folder of an ``hf-hub:`` model (config + weights), as a local dir."""
    config = _cached_hf_file(repo_id, ["open_clip_config.json"])
    if config is None or _cached_hf_file(repo_id, _HF_WEIGHT_FILES) is None:
        _may_download(display, [hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"])
        from open_clip.pretrained import download_pretrained_from_hf

        config = download_pretrained_from_hf(repo_id, filename="open_clip_config.json",
                                             cache_dir=str(hf_cache_dir()))
        download_pretrained_from_hf(repo_id, cache_dir=str(hf_cache_dir()))
    return str(Path(config).parent)


# What open_clip picks for a local-dir model, written out: resolving one (the bundled demo's toy-clip) then
# imports neither open_clip nor torch, 4-6 s of CPU that a demo page served from its seed store never needs
# (bench/RESULTS.md). tests/test_backend.py holds them to open_clip's own (transform.PreprocessCfg,
# transform.merge_preprocess_dict, factory._find_checkpoint_in_dir).
PREPROCESS_DEFAULTS = {"size": 224, "mode": "RGB", "mean": (0.48145466, 0.4578275, 0.40821073),
                       "std": (0.26862954, 0.26130258, 0.27577711), "interpolation": "bicubic",
                       "resize_mode": "shortest", "fill_color": 0}
_CHECKPOINT_SUFFIXES = ("*.safetensors", "*.bin", "*.pth")
_PREFERRED_CHECKPOINTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                          "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                          "pytorch_model.bin", "pytorch_model.pth", "model.pth")


def merge_preprocess(base: dict, overlay: dict | None) -> dict:
    """``base`` with ``overlay``'s preprocessing settings (those not None) on top; other keys dropped."""
    merged = {k: v for k, v in base.items() if k in PREPROCESS_DEFAULTS}
    merged.update({k: v for k, v in (overlay or {}).items() if k in PREPROCESS_DEFAULTS and v is not None})
    return merged


def _dir_checkpoint(folder: Path) -> str | None:
    """The weights file open_clip loads from ``folder``: a preferred name, else the first by name,
    safetensors first."""
    found = sorted(path for pattern in _CHECKPOINT_SUFFIXES for path in folder.glob(pattern))
    found.sort(key=lambda path: path.suffix == ".safetensors", reverse=True)
    preferred = sorted((path for path in found if path.name in _PREFERRED_CHECKPOINTS),
                       key=lambda path: _PREFERRED_CHECKPOINTS.index(path.name))
    return str(preferred[0]) if preferred else str(found[0]) if found else None


def file_stamp(path: str | Path) -> list[int]:
    """What a memo of a file's hash trusts instead of reading the bytes again: size, mtime,
    inode and ctime. Resetting the mtime of a rewritten file (``touch -r``, ``cp -p``,
    ``rsync -t``) leaves size and mtime as they were, but the kernel moves ctime on every
    write, rename or utime, and no user call can set it back."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


_HASHES: dict[tuple, str] = {}


def file_identity(path: str | Path) -> str:
    """sha256 of a weights file (memoised within the process per path and :func:`file_stamp`)."""
    memo = (str(Path(path).resolve()), *file_stamp(path))
    if memo not in _HASHES:
        _HASHES[memo] = "sha256:" + file_digest(path)
    return _HASHES[memo]


DEVICE_KINDS = ("cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device(device: str = "auto") -> str:
    """The device to run on: ``auto`` picks one; an explicit one must exist on this machine
    (torch would only fail at the first tensor moved there, with a driver traceback)."""
    if device == "auto" and not _may_have_accelerator():
        return "cpu"  # without importing torch (about 2 s), which a page served from the store never needs
    import torch

    if device != "auto":
        _check_device(device, torch)
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# Device nodes through which torch.cuda reaches a GPU on Linux (in containers too): NVIDIA's driver,
# WSL2's GPU paravirtualisation, Jetson's integrated GPU, ROCm.
_GPU_NODES = ("/dev/nvidiactl", "/dev/dxg", "/dev/nvhost-ctrl-gpu", "/dev/kfd")


def _may_have_accelerator() -> bool:
    """False only where torch could not find one: Linux without any _GPU_NODES, torch not imported
    yet. This spares the import to a caption or a page whose embeddings all come from the store
    (resolving a built-in or hub model imports open_clip, and with it torch, first)."""
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(node) for node in _GPU_NODES)


def _check_device_name(device: str) -> None:
    kind, colon, index = device.partition(":")
    if kind not in DEVICE_KINDS or (colon and not index.isdigit()):
        raise InvalidInput(f"unknown device {device!r}; use auto, {', '.join(DEVICE_KINDS)} or cuda:N")


def _check_device(device: str, torch) -> None:
    _check_device_name(device)
    kind, colon, index = device.partition(":")
    if kind == "cuda" and int(index or 0) >= torch.cuda.device_count():
        found = torch.cuda.device_count()
        raise InvalidInput(f"device {device!r} is not available here ({found} CUDA device(s) found); "
                           "use auto or cpu")
    if kind == "mps" and (colon or not torch.backends.mps.is_available()):
        raise InvalidInput(f"device {device!r} is not available here (no Apple MPS); use auto or cpu")


def pick_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _arch_and_weights(cfg: ModelConfig) -> tuple[str, str | None, str]:
    """(open_clip name, pretrained request, display name)."""
    if cfg.name in MODELS:
        preset = MODELS.get(cfg.name)
        return preset.model, cfg.pretrained if cfg.pretrained is not None else preset.pretrained, cfg.name
    if cfg.name.startswith((HF_PREFIX, LOCAL_PREFIX)):
        return cfg.name, cfg.pretrained, cfg.name
    import open_clip

    if cfg.name in open_clip.list_models():
        return cfg.name, cfg.pretrained, cfg.name
    raise ModelUnavailableError(
        f"unknown model {cfg.name!r}; use a preset ({', '.join(MODELS.available())}), an open_clip "
        "architecture (python -c 'import open_clip; print(open_clip.list_models())'), "
        "hf-hub:org/repo or local-dir:/path/to/folder"
    )


def resolve_model(cfg: ModelConfig) -> ResolvedModel:
    """Find config, weights and preprocessing for ``cfg`` without building the model."""
    arch, pretrained, display = _arch_and_weights(cfg)
    if arch.startswith(LOCAL_PREFIX) and not Path(arch[len(LOCAL_PREFIX):], "open_clip_config.json").is_file():
        hint = MODELS.get(cfg.name).missing_hint if cfg.name in MODELS else ""
        raise ModelUnavailableError(f"model {display}: no open_clip_config.json in {arch[len(LOCAL_PREFIX):]}"
                                    + (f"; {hint}" if hint else ""))
    if arch.startswith(HF_PREFIX):
        arch = LOCAL_PREFIX + _hf_hub_folder(arch[len(HF_PREFIX):], display)
    preprocess, tag_cfg, checkpoint = dict(PREPROCESS_DEFAULTS), {}, None
    if arch.startswith(LOCAL_PREFIX):
        folder = Path(arch[len(LOCAL_PREFIX):])
        config_file = folder / "open_clip_config.json"
        model_cfg, local_preprocess = _local_config(config_file, display)
        preprocess = merge_preprocess(preprocess, local_preprocess)
        checkpoint = _dir_checkpoint(folder)
        if pretrained not in (None, "none"):
            checkpoint = _checkpoint_file(pretrained, display)
        elif checkpoint is None and pretrained is None:
            raise _missing(display, [folder])
    else:
        import open_clip  # after the cheap checks: importing it (and torch) takes seconds

        model_cfg = open_clip.get_model_config(arch)
        if pretrained is None:
            raise ModelUnavailableError(
                f"model {display}: pass a pretrained tag ({_known_tags(arch)}), a checkpoint file, "
                "or 'none' for random weights"
            )
        if pretrained != "none":
            tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
            checkpoint = (_tag_checkpoint(arch, pretrained, display) if tag_cfg
                          else _checkpoint_file(pretrained, display, arch))
    if pretrained == "none":
        checkpoint = None
    quick_gelu = bool(tag_cfg.get("quick_gelu", model_cfg.get("quick_gelu", False)))
    preprocess = merge_preprocess(preprocess, tag_cfg)
    preprocess["size"] = model_cfg["vision_cfg"]["image_size"]
    device = pick_device(cfg.device)
    weights = (f"tag:{arch}:{pretrained}" if tag_cfg else file_identity(checkpoint)) if checkpoint else "random:0"
    return ResolvedModel(arch, checkpoint, weights, model_cfg, json.loads(json.dumps(preprocess)),
                         quick_gelu, device, pick_precision(cfg.precision, device), display)


def _local_config(config_file: Path, display: str) -> tuple[dict, dict]:
    """(model config, preprocess config) of a local-dir folder's open_clip_config.json, checked as
    far as this module reads it; a file that is not such a config (damaged, another tool's) is a
    ModelUnavailableError naming it, not a KeyError or AttributeError from deep inside."""
    try:
        local = json.loads(config_file.read_text())
        model_cfg = local.get("model_cfg", local)
        size = model_cfg["vision_cfg"]["image_size"]
        preprocess = local.get("preprocess_cfg", {})
        if not (isinstance(size, int) or (isinstance(size, list) and len(size) == 2
                                          and all(isinstance(v, int) for v in size))):
            raise ValueError(f"vision_cfg.image_size is {size!r}, not a size in pixels")
        if not isinstance(preprocess, dict):
            raise ValueError(f"preprocess_cfg is a {type(preprocess).__name__}, not a mapping")
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
        reason = f"no {err}" if isinstance(err, KeyError) else str(err)
        raise ModelUnavailableError(f"model {display}: {config_file} is not an open_clip model config "
                                    f"({reason})") from None
    return model_cfg, preprocess


def _known_tags(arch: str) -> str:
    import open_clip

    return ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"


def _checkpoint_file(pretrained: str, display: str, arch: str | None = None) -> str:
    if os.path.isfile(pretrained):
        return pretrained
    hint = f" (known tags for {arch}: {_known_tags(arch)})" if arch is not None else ""
    raise ModelUnavailableError(f"model {display}: pretrained {pretrained!r} is neither a known tag nor a file{hint}")


def model_key(cfg: ModelConfig, memo_dir: str | Path | None = None) -> str:
    """Stable key of (architecture, weights, preprocessing, precision); builds nothing.

    With ``memo_dir``, the answer is remembered there together with the :func:`file_stamp`
    of the files that determined it, so a later call whose files are unchanged returns
    without importing torch or open_clip (seconds saved on every fully cached run).
    """
    if memo_dir is None:
        return resolve_model(cfg).key
    memo_file = Path(memo_dir) / f"{_memo_name(cfg)}.json"
    try:
        memo = json.loads(memo_file.read_text())
        if isinstance(memo["key"], str) and all(file_stamp(path) == stat for path, stat in memo["files"].items()):
            return memo["key"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no memo yet, or a stale or broken one (even valid JSON of another shape): resolve again
    resolved = resolve_model(cfg)
    sources = _memo_sources(cfg, resolved)
    if sources is not None:
        memo = {"key": resolved.key, "files": {p: file_stamp(p) for p in sources}}
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(memo_file, lambda fh: fh.write(json.dumps(memo).encode()))
    return resolved.key


def _memo_name(cfg: ModelConfig) -> str:
    from importlib.metadata import version

    # What "auto" would pick, approximated without importing torch.
    hint = [sys.platform, os.path.exists("/dev/nvidiactl"), os.environ.get("CUDA_VISIBLE_DEVICES")]
    parts = [cfg.name, cfg.pretrained, cfg.device, cfg.precision, hint if cfg.device == "auto" else None,
             version("open_clip_torch"), str(hf_cache_dir())]
    return json_digest(parts)[:32]  # a list without dicts: sorting keys changes nothing


def _memo_sources(cfg: ModelConfig, resolved: ResolvedModel) -> list[str] | None:
    """Files whose :func:`file_stamp` pins the resolution; None = do not memoise."""
    if cfg.name.startswith(HF_PREFIX):
        return None  # a new revision may arrive in the hub cache under the same name
    if resolved.arch.startswith(LOCAL_PREFIX):
        folder = resolved.arch[len(LOCAL_PREFIX):]
        files = [folder, os.path.join(folder, "open_clip_config.json")]  # folder mtime: files added/removed
    else:
        spec = importlib.util.find_spec("open_clip")
        packaged = Path(spec.submodule_search_locations[0]) / "model_configs" / f"{resolved.arch}.json"
        if not packaged.is_file():
            return None  # registered at run time (add_model_config): nothing on disk to watch
        files = [str(packaged)]
    return files + ([resolved.checkpoint] if resolved.checkpoint else [])


# ---------------------------------------------------------------- the loaded model

class ImageDecodeError(OSError):
    """Some images could not be decoded; ``failures`` maps item index to the reason."""

    def __init__(self, failures: dict[int, str], items: Sequence) -> None:
        self.failures = failures
        shown = "; ".join(f"{items[i]}: {why}" for i, why in list(failures.items())[:5])
        super().__init__(f"{len(failures)} image(s) could not be decoded: {shown}")


# What a broken image file raises while decoding (a header check at scan time can miss these).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError)


class _ImageDataset:
    """Decode (path or PIL image), intervene, eval-transform; runs inside DataLoader workers.

    ``items`` only needs ``len`` and ``[]``, so it can render images lazily (ToyDomains
    counterfactuals are drawn inside the workers). An item that fails to decode yields a
    zero tensor and its error text instead of stopping the whole run.
    """

    def __init__(self, items: Sequence, transform: Callable, intervention: Intervention | None,
                 seeds: Sequence[int], size: tuple[int, int]) -> None:
        self.items, self.transform, self.intervention, self.seeds = items, transform, intervention, seeds
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        from clip_icm.datasets import load_image

        item = self.items[i]
        try:
            image = item.convert("RGB") if isinstance(item, Image.Image) else load_image(item)
        except _DECODE_ERRORS as err:
            return torch.zeros(3, *self.size), f"{type(err).__name__}: {err}"
        if self.intervention is not None:
            image = self.intervention(image, int(self.seeds[i]))
        return self.transform(image), ""


@dataclass
class ClipBackend:
    """A built open_clip model with its eval transform and tokenizer."""

    model: object
    transform: Callable
    tokenizer: Callable
    resolved: ResolvedModel
    batch_size: int = 64
    num_workers: int | None = None

    @property
    def key(self) -> str:
        return self.resolved.key

    @property
    def device(self) -> str:
        return self.resolved.device

    @property
    def precision(self) -> str:
        return self.resolved.precision

    @property
    def embed_dim(self) -> int:
        return int(self.resolved.model_cfg["embed_dim"])

    def _autocast(self):
        import torch

        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    def workers(self) -> int:
        """Decode workers. On CPU the model already uses every core, so workers only pay off
        when there are cores to spare (measured in bench/RESULTS.md)."""
        if self.num_workers is not None:
            return self.num_workers
        spare = (os.cpu_count() or 1) - (0 if self.device != "cpu" else 2)
        return max(0, min(8, spare))

    def forward_images(self, batch) -> np.ndarray:
        """The pure model forward on a pre-transformed (B, 3, H, W) tensor."""
        import torch

        with torch.inference_mode(), self._autocast():
            out = self.model.encode_image(batch.to(self.device, non_blocking=True))
        return out.float().cpu().numpy()

    def iter_encode(self, images: Sequence, intervention: Intervention | None = None,
                    seeds: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray, dict[int, str]]]:
        """Yield (offset, raw float32 embeddings of a batch, {index: decode error}) in order.

        Rows of images that failed to decode are zeros; their indices (into ``images``) and
        reasons come in the dict. ``intervention(image, seeds[i])`` runs on the decoded image
        before the eval transform (default seed: the index).
        """
        from torch.utils.data import DataLoader

        seeds = list(range(len(images))) if seeds is None else list(seeds)
        if len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds for {len(images)} images")
        size = self.resolved.preprocess["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        workers = self.workers() if len(images) > self.batch_size else 0
        loader = DataLoader(_ImageDataset(images, self.transform, intervention, seeds, size),
                            batch_size=self.batch_size, num_workers=workers,
                            pin_memory=self.device.startswith("cuda"),
                            prefetch_factor=4 if workers else None)
        offset = 0
        for batch, errors in loader:
            failed = {offset + j: e for j, e in enumerate(errors) if e}
            out = self.forward_images(batch)
            out[[i - offset for i in failed]] = 0.0
            yield offset, out, failed
            offset += len(batch)

    def encode_images(self, images: Sequence, intervention: Intervention | None = None,
                      seeds: Sequence[int] | None = None, progress: ProgressFn | None = None) -> np.ndarray:
        """Raw (un-normalised) float32 image embeddings, (n, D), of file paths or PIL images.

        Raises :class:`ImageDecodeError` naming the files that could not be decoded.
        """
        out = np.zeros((len(images), self.embed_dim), np.float32)
        failures: dict[int, str] = {}
        for offset, batch, failed in self.iter_encode(images, intervention, seeds):
            out[offset:offset + len(batch)] = batch
            failures.update(failed)
            if progress is not None:
                progress(offset + len(batch), len(images))
        if failures:
            raise ImageDecodeError(failures, images)
        return out

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Raw (un-normalised) float32 text embeddings, (n, D)."""
        import torch

        out = np.zeros((len(texts), self.embed_dim), np.float32)
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size])).to(self.device)
            with torch.inference_mode(), self._autocast():
                out[start:start + len(tokens)] = self.model.encode_text(tokens).float().cpu().numpy()
        return out


@contextmanager
def _quiet_open_clip():
    """open_clip logs expected events ("initialized randomly") as root-logger warnings."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def load_model(cfg: ModelConfig) -> ClipBackend:
    """Build the model of ``cfg`` on its device (random init is seeded, so reproducible)."""
    import open_clip
    import torch

    resolved = resolve_model(cfg)
    with torch.random.fork_rng(devices=[]), _quiet_open_clip(), _local_config_at_fault(resolved):
        torch.manual_seed(0)
        model, _, eval_transform = open_clip.create_model_and_transforms(
            resolved.arch, pretrained=None, load_weights=False, device="cpu",
            force_quick_gelu=resolved.quick_gelu, pretrained_image=False, pretrained_text=False,
            image_mean=resolved.preprocess["mean"], image_std=resolved.preprocess["std"],
            image_interpolation=resolved.preprocess["interpolation"],
            image_resize_mode=resolved.preprocess["resize_mode"],
        )
    if resolved.checkpoint:
        _load_weights(open_clip, model, resolved)
    model = model.to(resolved.device).eval()
    tokenizer = open_clip.get_tokenizer(resolved.arch)
    return ClipBackend(model, eval_transform, tokenizer, resolved, cfg.batch_size, cfg.num_workers)


@contextmanager
def _local_config_at_fault(resolved: ResolvedModel):
    """A local-dir model whose config open_clip cannot build from (a width of "x", a mean of two
    numbers...) fails anywhere in open_clip or torch, with any exception type: as with a bad
    checkpoint, the user's file is at fault, so it is one ModelUnavailableError naming it."""
    try:
        yield
    except Exception as err:  # noqa: BLE001  (see the docstring)
        if not resolved.arch.startswith(LOCAL_PREFIX):
            raise
        reason = (str(err).strip().splitlines() or [""])[0][:200] or "no message"
        raise ModelUnavailableError(
            f"model {resolved.display}: open_clip cannot build a model from "
            f"{Path(resolved.arch[len(LOCAL_PREFIX):]) / 'open_clip_config.json'} ({type(err).__name__}: {reason})"
        ) from err


def _load_weights(open_clip, model, resolved: ResolvedModel) -> None:
    """Load the checkpoint, any failure as one ModelUnavailableError naming the file. A file of
    the wrong kind fails anywhere in torch, safetensors or open_clip's key conversion, each with
    its own exception type (UnpicklingError, SafetensorError, KeyError, IndexError, an
    AssertionError on a shape): all of them mean "this file is not weights for this model"."""
    try:
        open_clip.load_checkpoint(model, resolved.checkpoint)
    except Exception as err:  # noqa: BLE001  (see the docstring: the file, not the code, is at fault)
        reason = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:200] or "no message"
        raise ModelUnavailableError(
            f"model {resolved.display}: {resolved.checkpoint} is not a usable checkpoint for this architecture "
            f"({type(err).__name__}: {reason})"
        ) from err
