"""Small DomainBed-layout folders for tests, messy on purpose (shared by several test files).

``make_messy_domainbed(tmp_path)`` writes::

    <root>/.DS_Store, stray.png                     stray files at the top (README.txt there is metadata)
    <root>/photo/{dog,giraffe,guitar_case}/         image 0 of each class is an RGBA PNG
    <root>/Real World/{dog,giraffe,guitar_case}/    domain with a space; image 0 is a CMYK JPEG
    <root>/sketch/{dog,giraffe}/                    lacks guitar_case; image 0 is a grey PNG
    photo/dog/corrupt.jpg          random bytes
    Real World/giraffe/empty.jpg   zero bytes
    Real World/dog/notes.txt       not an image
    sketch/dog/.hidden.jpg         a valid image, but hidden

and returns a :class:`MessyFolder` describing what a correct scan must find.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DOMAINS = ("Real World", "photo", "sketch")  # sorted, as a scan lists them
CLASSES = ("dog", "giraffe", "guitar_case")
MISSING = (("sketch", "guitar_case"),)
_FIRST_FORMAT = {"photo": "RGBA", "Real World": "CMYK", "sketch": "L"}
_TINT = {"photo": (1.0, 1.0, 1.0), "Real World": (1.0, 0.8, 0.6), "sketch": (0.5, 0.5, 0.5)}


@dataclass(frozen=True)
class MessyFolder:
    root: Path
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    n_images: int                    # readable images a scan must keep (verify="header")
    skipped: dict[str, str]          # file name -> start of the reason it must be skipped for
    missing: tuple[tuple[str, str], ...]
    truncated: Path | None = None    # a JPEG cut in half: passes a header check, fails to decode


def class_image(label: int, domain: str, index: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """An RGB uint8 image: a class-specific pattern, a domain tint, a little seeded noise."""
    g = np.random.default_rng([seed, label, index, len(domain)])
    yy, xx = np.mgrid[0:size, 0:size] / size
    pattern = [np.sin(8 * xx), np.cos(8 * yy), np.sin(8 * (xx + yy))][label % 3]
    base = np.stack([pattern, np.roll(pattern, label + 1, axis=0), xx * yy], axis=-1)
    rgb = (base * 0.5 + 0.5) * np.array(_TINT.get(domain, (1.0, 1.0, 1.0)))
    rgb = rgb + g.normal(0, 0.05, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _save(array: np.ndarray, path: Path, mode: str) -> None:
    im = Image.fromarray(array)
    if mode == "RGBA":
        im.putalpha(200)
        im.save(path.with_suffix(".png"))
    elif mode == "L":
        im.convert("L").save(path.with_suffix(".png"))
    else:
        im.convert(mode).save(path.with_suffix(".jpg"), quality=90)


def make_messy_domainbed(
    root: Path, n_per_class: int = 3, size: int = 32, seed: int = 0, truncated: bool = False
) -> MessyFolder:
    """Write the messy folder under ``root`` (created if needed); see the module docstring.

    ``truncated=True`` adds ``photo/giraffe/truncated.jpg``, which only a full decode catches.
    """
    root = Path(root)
    count = 0
    for domain in DOMAINS:
        for label, cls in enumerate(CLASSES):
            if (domain, cls) in MISSING:
                continue
            folder = root / domain / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                _save(class_image(label, domain, i, size, seed), folder / f"{cls}_{i:03d}", _FIRST_FORMAT[domain] if i == 0 else "RGB")
                count += 1
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "README.txt").write_text("not part of any domain\n")  # metadata: not reported
    Image.fromarray(class_image(0, "photo", 97, size, seed)).save(root / "stray.png")  # an image outside any domain
    (root / "photo" / "dog" / "corrupt.jpg").write_bytes(np.random.default_rng(seed).bytes(500))
    (root / "Real World" / "giraffe" / "empty.jpg").write_bytes(b"")
    (root / "Real World" / "dog" / "notes.txt").write_text("labelling notes\n")
    Image.fromarray(class_image(0, "sketch", 99, size, seed)).save(root / "sketch" / "dog" / ".hidden.jpg")
    cut = None
    if truncated:
        cut = root / "photo" / "giraffe" / "truncated.jpg"
        Image.fromarray(class_image(1, "photo", 98, 128, seed)).save(cut, quality=95)
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
        count += 1  # a header check keeps it
    skipped = {
        ".DS_Store": "hidden file",
        "stray.png": "not inside a class folder",
        "corrupt.jpg": "unreadable image",
        "empty.jpg": "empty file",
        "notes.txt": "not an image file",
        ".hidden.jpg": "hidden file",
    }
    return MessyFolder(root, DOMAINS, CLASSES, count, skipped, MISSING, cut)
