"""Multi-domain image folders in the DomainBed layout: metadata, scanning, splits, loading.

Layout: ``root/<domain>/<class>/**/<image>`` (DomainBed's ``MultipleEnvironmentImageFolder``),
optionally one level deeper as ``root/<dataset>/<domain>/...``. The scan never crashes on
messy folders: hidden, empty, non-image and unreadable files are skipped and listed in
:attr:`DomainScan.skipped`. A domain lacking a class keeps the class index of every other
class (one sorted union of class folders), and the gap is reported with a warning.
"""
from __future__ import annotations

import os
import stat
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clip_icm.errors import InvalidInput
from clip_icm.registry import Registry
from clip_icm.seeding import rng

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Folders that archives and file managers leave behind; never domains or classes.
_SYSTEM_FOLDERS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information"})


def readable_name(folder: str) -> str:
    """A folder name as words for prompts: ``"art_painting" -> "art painting"``.

    Underscores and hyphens become spaces, runs of spaces collapse, and the result is
    lower-cased (OfficeHome's ``"Alarm_Clock"`` reads ``"alarm clock"`` in a prompt).
    """
    return " ".join(folder.replace("_", " ").replace("-", " ").split()).lower()


def released_name(folder: str) -> str:
    """A folder name as the released code puts it in a prompt: only ``_`` becomes a space
    (``engine.get_text_features``), so DomainNet's ``"t-shirt"`` stays ``"t-shirt"`` and
    OfficeHome's ``"Alarm_Clock"`` reads ``"Alarm Clock"``."""
    return folder.replace("_", " ")


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a known multi-domain dataset (DomainBed's ``ENVIRONMENTS``, as data).

    domains: domain folder names; classes: class folder names (None = discover on disk);
    folders: names the dataset's own folder may have under a data root, DomainBed's first.
    """

    name: str
    domains: tuple[str, ...]
    classes: tuple[str, ...] | None = None
    folders: tuple[str, ...] = ()

    @property
    def readable_domains(self) -> tuple[str, ...]:
        return tuple(readable_name(d) for d in self.domains)

    @property
    def readable_classes(self) -> tuple[str, ...] | None:
        return None if self.classes is None else tuple(readable_name(c) for c in self.classes)

    def locate(self, root: str | os.PathLike) -> Path | None:
        """The dataset's folder: ``root/<folder>``, or ``root`` itself when it holds all the domains."""
        root = Path(root)
        for folder in (*self.folders, self.name):
            if (root / folder).is_dir():
                return root / folder
        # root itself only when every domain is there: two PACS-like names are too common.
        return root if all((root / d).is_dir() for d in self.domains) else None


DATASETS: Registry[DatasetInfo] = Registry("dataset")
for _info in (
    DatasetInfo(
        "PACS",
        ("art_painting", "cartoon", "photo", "sketch"),
        ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
        ("PACS",),
    ),
    DatasetInfo(
        "VLCS",
        ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
        ("bird", "car", "chair", "dog", "person"),
        ("VLCS",),
    ),
    # 65 classes; discovered on disk rather than copied here.
    DatasetInfo("OfficeHome", ("Art", "Clipart", "Product", "Real World"), None, ("office_home", "OfficeHome")),
    DatasetInfo(
        "TerraIncognita",
        ("location_100", "location_38", "location_43", "location_46"),
        ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel"),
        ("terra_incognita", "TerraIncognita"),
    ),
    # 345 classes; discovered on disk.
    DatasetInfo(
        "DomainNet",
        ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
        None,
        ("domain_net", "DomainNet"),
    ),
    # The bundled synthetic world (clip_icm.toydomains; generated into the user's cache, resources.demo_dir()).
    DatasetInfo(
        "ToyDomains",
        ("art_painting", "cartoon", "photo", "sketch"),
        ("arrow", "circle", "crescent", "cross", "heart", "square", "star", "triangle"),
        ("toydomains", "ToyDomains"),
    ),
):
    DATASETS.register(_info.name, _info)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _SYSTEM_FOLDERS


def _visible_subdirs(folder: Path, skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """The folders in ``folder`` a scan reads: not hidden, and not symbolic links (reported in
    ``skipped`` when given), which could loop back to the root or repeat another domain's images."""
    folders = sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))
    if skipped is not None:
        skipped.extend((str(p), _LINKED_FOLDER) for p in folders if p.is_symlink())
    return [p for p in folders if not p.is_symlink()]


_LINKED_FOLDER = ("linked folder: not followed (a link can loop back or repeat another folder's images; "
                  "put the folder itself here)")


def is_domainbed_folder(root: str | os.PathLike) -> bool:
    """True when ``root`` has at least two domain folders that each hold a class folder."""
    root = Path(root)
    if not root.is_dir():
        return False
    return sum(bool(_visible_subdirs(d)) for d in _visible_subdirs(root)) >= 2


def layout_problem(root: str | os.PathLike) -> str:
    """Why ``root`` cannot be scanned as a data set (call it when :func:`is_domainbed_folder` says no)."""
    folders = _visible_subdirs(Path(root))
    domains = [d for d in folders if _visible_subdirs(d)]
    if len(domains) == 1:
        return (f"it holds one domain folder with class folders ({domains[0].name!r}); domain generalisation "
                "needs at least two domain folders")
    if any(f.suffix.lower() in IMAGE_EXTENSIONS for d in folders for f in d.iterdir()):
        return ("its folders hold images directly, so it looks like one domain (<class>/images); "
                "enter the folder above it, which holds the domain folders")
    return "it does not look like <domain>/<class>/images (no folder in it holds class folders)"


def detect_datasets(root: str | os.PathLike) -> list[str]:
    """Names of the known datasets found at ``root`` (as ``root/<dataset>`` or ``root`` itself).

    Use :func:`is_domainbed_folder` to ask whether ``root`` itself can be scanned as an
    unnamed dataset.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return [name for name in DATASETS if DATASETS.get(name).locate(root) is not None]


@dataclass(frozen=True, eq=False)
class DomainScan:
    """The images of a multi-domain folder, one row per image, plus what was skipped.

    paths, labels, domains: (n,) arrays; ``labels`` index ``class_names`` / ``class_folders``
    (the same index in every domain); ``domains`` holds domain folder names.
    skipped: (path, reason) for every file or folder that was left out.
    missing: (domain, class folder) for each class a domain lacks.
    notes: what the scan also warned about (empty domains, missing classes), as data, because
    capturing warnings is not thread-safe (the dashboard runs UMAP in another thread).
    """

    root: str
    paths: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    class_folders: tuple[str, ...]
    class_names: tuple[str, ...]
    domain_names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    missing: tuple[tuple[str, str], ...] = ()
    dataset: str | None = None
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def folder(self) -> Path:
        """The folder the data's files lie in: ``root``, or a manifest's folder."""
        root = Path(self.root)
        return root.parent if root.is_file() else root

    def skipped_summary(self) -> dict[str, int]:
        """How many files were skipped for each kind of reason (text before the first ':')."""
        counts: dict[str, int] = {}
        for _, reason in self.skipped:
            kind = reason.split(":")[0]
            counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items()))

    def counts(self) -> dict[str, int]:
        """Number of images per domain, in ``domain_names`` order."""
        return {d: int(np.sum(self.domains == d)) for d in self.domain_names}


Verify = Literal["none", "header", "full"]


# Larger images are skipped from their header, before decoding: 64 Mpx (8192 x 8192, 200 MB as
# RGB) is beyond any camera a data set comes from and far beyond CLIP's 224 px input. It is set
# below Pillow's own bomb limit (89 Mpx), which Pillow would only warn about, decoding up to twice
# it (0.6 GB) first; above that limit Pillow still warns once while opening. Longer than wide (or
# the reverse) by more than MAX_ASPECT is a strip, not a photo: resized to CLIP's square it is noise.
MAX_PIXELS = 1 << 26
MAX_ASPECT = 50


class RejectedImage(ValueError):
    """An image that decodes, but not to anything the model should see (too large, a strip, a
    32-bit image with no known scale to 8 bits); the message is the reason."""


def _size_problem(size: tuple[int, int]) -> str | None:
    width, height = size
    if width * height > MAX_PIXELS:
        return (f"too large: {width}x{height} pixels, over the limit of {MAX_PIXELS:,} "
                "(a decompression bomb or a scan; resize it to use it)")
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        return f"absurd aspect ratio: {width}x{height} pixels (more than {MAX_ASPECT}:1)"
    return None


def _open(path: str | os.PathLike) -> Image.Image:
    """``Image.open`` with the size checked from the header, before any pixel is decoded."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:  # over twice Pillow's own limit: ours is lower, say it alike
        raise RejectedImage(f"too large: {e}") from None
    problem = _size_problem(im.size)
    if problem:
        im.close()
        raise RejectedImage(problem)
    return im


def _check_image(path: Path, verify: Verify) -> str | None:
    """None if the file looks like a usable image, else the reason to skip it."""
    if verify == "none":
        return None
    try:
        if verify == "full":
            load_image(path)  # decodes everything as the model will: catches truncated JPEGs, costs milliseconds
        else:
            with _open(path) as im:
                im.verify()  # header and structure only: cheap
    except RejectedImage as e:
        return str(e)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"unreadable image: {type(e).__name__}: {e}"
    return None


def _triage(path: Path, base: Path) -> str | None:
    """Reasons that need no decoding: hidden, not an image by extension, not a regular file (a
    FIFO would block the reader forever, a device never ends), a link leaving the data folder, empty."""
    if _is_hidden(path.name):
        return "hidden file"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file: {path.suffix or '(no extension)'}"
    try:
        info = path.stat()
    except OSError as e:  # a dangling or looping link, a file removed mid-scan, no permission
        return f"unreadable file: {type(e).__name__}: {e}"
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file: {_FILE_KINDS.get(stat.S_IFMT(info.st_mode), 'special file')}"
    if path.is_symlink() and not path.resolve().is_relative_to(base.resolve()):
        return f"link leaving the data folder: points to {path.resolve()}"
    return "empty file: 0 bytes" if info.st_size == 0 else None


_FILE_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def _class_files(class_dir: Path, base: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    """Candidate image files under one class folder (recursively, like ImageFolder; a folder named
    like an image is a folder here, never opened as an image)."""
    files = []

    def unreadable(err: OSError) -> None:  # os.walk drops a folder it cannot list unless told
        skipped.append((err.filename or str(class_dir), f"unreadable folder: {type(err).__name__}: {err.strerror}"))

    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=unreadable):
        for d in [d for d in dirnames if _is_hidden(d)]:
            skipped.append((str(Path(dirpath) / d), "hidden folder"))
            dirnames.remove(d)
        for d in [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:  # os.walk drops them silently
            skipped.append((str(Path(dirpath) / d), _LINKED_FOLDER))
            dirnames.remove(d)
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            reason = _triage(path, base)
            if reason is None:
                files.append(path)
            else:
                skipped.append((str(path), reason))
    return files


def _stray_files(folder: Path, where: str, skipped: list[tuple[str, str]], metadata_ok: bool = False) -> None:
    """Report files and hidden folders that sit where only folders belong.

    With ``metadata_ok`` (the dataset root) visible non-image files are the data set's own
    metadata (a README, ToyDomains' factors.csv), not lost images, so they are not reported.
    """
    for p in sorted(folder.iterdir()):
        if p.is_dir() and _is_hidden(p.name):
            skipped.append((str(p), "hidden folder"))
        elif metadata_ok and not _is_hidden(p.name) and p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        elif not p.is_dir():
            skipped.append((str(p), "hidden file" if _is_hidden(p.name) else f"not inside a class folder ({where})"))


def _round_robin(files_by_class: dict[str, list[Path]], seed: int, domain: str) -> list[tuple[str, Path]]:
    """All (class, file) pairs, interleaving classes, each class in a seeded order."""
    queues = {c: [f[i] for i in rng("subsample", seed, domain, c).permutation(len(f))] for c, f in files_by_class.items()}
    order = []
    for i in range(max(map(len, queues.values()), default=0)):
        order.extend((c, q[i]) for c, q in queues.items() if i < len(q))
    return order


def _resolve_root(root: Path, dataset: str | None) -> Path:
    if not root.is_dir():
        raise InvalidInput(f"dataset root {str(root)!r} does not exist or is not a folder")
    if dataset is None:
        return root
    if dataset not in DATASETS:
        raise InvalidInput(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS.available())}")
    info = DATASETS.get(dataset)
    found = info.locate(root)
    if found is None:
        raise InvalidInput(
            f"dataset {dataset!r} not found under {str(root)!r}: expected a folder named "
            f"{' or '.join(info.folders)} holding the domain folders {', '.join(info.domains)}"
        )
    return found


def scan_domain_folder(
    root: str | os.PathLike,
    dataset: str | None = None,
    max_per_domain: int | None = None,
    seed: int = 0,
    verify: Verify = "header",
) -> DomainScan:
    """Scan a DomainBed-layout folder into paths, labels and domains.

    Parameters
    ----------
    root: the folder holding the domain folders, or a data root holding ``<dataset>/``.
    dataset: a name from ``DATASETS``; its folder under ``root`` is scanned.
    max_per_domain: keep at most this many readable images per domain (seeded, round-robin
        over classes) for quick looks; only the files needed are verified, so this is fast
        on big folders, and files never reached are not checked or reported.
    verify: "header" opens each image and checks its structure (cheap; a truncated
        JPEG can still pass, so loaders must still catch decode errors), "full"
        decodes every image, "none" trusts the extension.
    """
    if verify not in ("none", "header", "full"):
        raise InvalidInput(f"verify must be 'none', 'header' or 'full', got {verify!r}")
    if max_per_domain is not None and max_per_domain < 1:
        raise InvalidInput(f"max_per_domain must be at least 1, got {max_per_domain}")
    base = _resolve_root(Path(root), dataset)
    skipped: list[tuple[str, str]] = []
    _stray_files(base, "at the dataset root", skipped, metadata_ok=True)
    per_domain: dict[str, dict[str, list[Path]]] = {}
    for domain_dir in _visible_subdirs(base, skipped):
        try:
            _stray_files(domain_dir, f"domain {domain_dir.name!r}", skipped)
            per_domain[domain_dir.name] = {c.name: _class_files(c, base, skipped)
                                           for c in _visible_subdirs(domain_dir, skipped)}
        except OSError as e:
            skipped.append((str(domain_dir), f"unreadable folder: {type(e).__name__}: {e}"))
    per_domain = {d: _verified(f, verify, skipped, max_per_domain, seed, d) for d, f in per_domain.items()}
    return _assemble(base, per_domain, skipped, dataset)


MANIFEST_COLUMNS = ("path", "label", "domain")


def _listed_file_problem(path: Path, base: Path) -> str | None:
    """Why a file a table names cannot be an image, found without decoding: missing, or any reason
    the folder scan skips a file for (:func:`_triage`); None if it may be one."""
    return "missing file: no such file" if not os.path.lexists(path) else _triage(path, base)


def image_file_problem(path: Path, base: Path, verify: Verify = "header") -> str | None:
    """Why the file at ``path`` (named by a user's table, under ``base``) cannot be used as an
    image, as the scans say it; None when it can."""
    return _listed_file_problem(path, base) or _check_image(path, verify)


def is_manifest(root: str | os.PathLike) -> bool:
    """True when ``root`` names a data set manifest (a table: .csv, .jsonl, .parquet) rather than a folder."""
    from clip_icm.tables import table_format

    return table_format(root) is not None and not Path(root).is_dir()


def scan_manifest(
    manifest: str | os.PathLike,
    max_per_domain: int | None = None,
    seed: int = 0,
    verify: Verify = "header",
) -> DomainScan:
    """Scan a data set listed in a table (CSV, JSONL or Parquet) with the columns ``path`` (relative
    to the table's folder), ``label`` (the class, as a folder name would be) and ``domain``: the same
    DomainScan, class indices and skipped-file report as :func:`scan_domain_folder` gives the same
    images in folders (``root`` is the table; :attr:`DomainScan.folder` its folder).

    A bad table is one InvalidInput line (:func:`clip_icm.tables.read_table`), and so is a row whose
    path leaves the table's folder (the table was written for another folder, or to read files it
    should not). Rows with an empty cell, a path listed before, or a file that is missing, a folder
    or not a readable image are skipped, each with its line or path and the reason.
    """
    from clip_icm.tables import read_table

    if verify not in ("none", "header", "full"):
        raise InvalidInput(f"verify must be 'none', 'header' or 'full', got {verify!r}")
    if max_per_domain is not None and max_per_domain < 1:
        raise InvalidInput(f"max_per_domain must be at least 1, got {max_per_domain}")
    table = read_table(manifest, MANIFEST_COLUMNS, what="data set manifest")
    folder = table.path.parent
    inside = folder.resolve()
    skipped: list[tuple[str, str]] = []
    per_domain: dict[str, dict[str, list[Path]]] = {}
    first: dict[Path, int] = {}
    for i, row in enumerate(table.rows):
        empty = [c for c in MANIFEST_COLUMNS if not row[c]]
        if empty:
            skipped.append((table.where(i), f"empty cell: {', '.join(empty)} is empty"))
            continue
        path = folder / row["path"]
        if not path.resolve().is_relative_to(inside):
            raise InvalidInput(f"data set manifest {str(table.path)!r}: {table.where(i)} names {row['path']!r}, "
                               f"outside the manifest's folder {str(inside)!r}; paths must lie inside it")
        if path.resolve() in first:
            skipped.append((table.where(i), f"duplicate row: the image of line {table.lines[first[path.resolve()]]}"))
            continue
        first[path.resolve()] = i
        reason = _listed_file_problem(path, inside)
        if reason:
            skipped.append((str(path), reason))
            continue
        per_domain.setdefault(row["domain"], {}).setdefault(row["label"], []).append(path)
    # sorted as a folder scan lists domains, classes and files, so both scans of one data set agree row for row
    per_domain = {d: _verified({c: sorted(f) for c, f in sorted(per_domain[d].items())}, verify, skipped,
                               max_per_domain, seed, d) for d in sorted(per_domain)}
    return _assemble(table.path, per_domain, skipped, None)


def _verified(
    files_by_class: dict[str, list[Path]], verify: Verify, skipped: list, limit: int | None, seed: int, domain: str
) -> dict[str, list[Path]]:
    """The readable files; with ``limit``, the first that many of a seeded round-robin over classes."""
    candidates = (
        [(c, p) for c, files in files_by_class.items() for p in files]
        if limit is None
        else _round_robin(files_by_class, seed, domain)
    )
    kept: dict[str, list[Path]] = {c: [] for c in files_by_class}
    n_kept = 0
    for c, path in candidates:
        if limit is not None and n_kept >= limit:
            break
        reason = _check_image(path, verify)
        if reason is None:
            kept[c].append(path)
            n_kept += 1
        else:
            skipped.append((str(path), reason))
    return {c: sorted(f) for c, f in kept.items()}


def _assemble(base: Path, per_domain: dict, skipped: list, dataset: str | None) -> DomainScan:
    """Fix one class index over all domains, warn about gaps, reject degenerate folders."""
    per_domain = {d: {c: f for c, f in fc.items() if f} for d, fc in per_domain.items()}
    notes = [f"domain {d!r} in {str(base)!r} has no readable images; it is left out"
             for d, fc in per_domain.items() if not fc]
    per_domain = {d: fc for d, fc in per_domain.items() if fc}
    if not per_domain:
        layout = "" if base.is_file() else " (layout: <domain>/<class>/<image>)"
        raise InvalidInput(f"no readable images found in {str(base)!r}{layout}")
    if len(per_domain) < 2:
        raise InvalidInput(
            f"only one domain with images in {str(base)!r} ({next(iter(per_domain))!r}); "
            "domain generalisation needs at least two domains"
        )
    classes = tuple(sorted(set().union(*per_domain.values())))
    if len(classes) < 2:
        raise InvalidInput(f"only one class ({classes[0]!r}) in {str(base)!r}; classification needs at least two")
    notes += _name_collisions("class", classes) + _name_collisions("domain", tuple(per_domain))
    missing = tuple((d, c) for d, fc in per_domain.items() for c in classes if c not in fc)
    reasons = dict(skipped)
    for d, c in missing:
        why = reasons.get(str(base / d / c))
        because = f" ({why})" if why else ""
        notes.append(f"domain {d!r} has no images of class {c!r}{because}; other class indices are unchanged")
    for note in notes:
        warnings.warn(note, stacklevel=3)
    rows = [(str(p), classes.index(c), d) for d, fc in per_domain.items() for c, files in fc.items() for p in files]
    paths, labels, domains = zip(*rows)
    return DomainScan(
        root=str(base),
        paths=np.array(paths, dtype=str),
        labels=np.array(labels, dtype=np.int64),
        domains=np.array(domains, dtype=str),
        class_folders=classes,
        class_names=tuple(readable_name(c) for c in classes),
        domain_names=tuple(per_domain),
        skipped=tuple(skipped),
        missing=missing,
        dataset=dataset,
        notes=tuple(notes),
    )


def _name_collisions(kind: str, folders: tuple[str, ...]) -> list[str]:
    """A note for each group of folders that read as one name (``Dog``/``dog``, ``dog_x``/``dog-x``,
    ``café`` in NFC and NFD): their prompts are identical, so zero-shot cannot tell them apart, and
    a case-insensitive file system would merge them."""
    groups: dict[str, list[str]] = {}
    for folder in folders:
        groups.setdefault(unicodedata.normalize("NFKC", readable_name(folder)).casefold(), []).append(folder)
    return [f"{kind} folders {_shown(same)} all read as {name!r} (identical prompts; one folder "
            "on a case-insensitive disk); rename all but one" for name, same in groups.items() if len(same) > 1]


def _shown(folders: list[str]) -> str:
    """The folders quoted; as code points (``ascii``) when some differ only in Unicode form
    (NFC and NFD ``café`` print alike)."""
    alike = len({unicodedata.normalize("NFC", f) for f in folders}) < len(folders)
    return ", ".join(map(ascii if alike else repr, folders))


def _wide_values_to_8_bits(values: np.ndarray) -> np.ndarray:
    """32-bit grey (Pillow's "I" and "F": scientific TIFFs) as 8 bits. The file does not say its
    scale, so it is read from the range the values are in; converting as Pillow does would clip
    0-1 floats to a black image, silently."""
    if not np.isfinite(values).all():
        raise RejectedImage("32-bit image with NaN or infinite values")
    low, high = values.min(), values.max()
    scale = next((top for top in (1.0, 255.0, 65535.0) if low >= 0 and high <= top), None)
    if scale is None:
        raise RejectedImage(f"32-bit image with values from {low:g} to {high:g}: no known scale to 8 bits "
                            "(convert it to 0-1, 0-255 or 0-65535)")
    return np.round(values * (255.0 / scale)).astype(np.uint8)


def split_mask(labels: np.ndarray, domains: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Seeded train/validation split per (domain, class); True marks a training row.

    Each (domain, class) group is shuffled with a seed derived from its own names, so an
    image's split does not depend on which other domains are present. Groups of two or
    more keep at least one row on each side when ``val_fraction`` > 0.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidInput(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels, domains = np.asarray(labels), np.asarray(domains)
    if labels.shape != domains.shape or labels.ndim != 1:
        raise InvalidInput(f"labels {labels.shape} and domains {domains.shape} must be 1-D of equal length")
    is_train = np.ones(len(labels), dtype=bool)
    for d in np.unique(domains):
        for y in np.unique(labels[domains == d]):
            idx = np.flatnonzero((domains == d) & (labels == y))
            n_val = int(round(val_fraction * len(idx)))
            if val_fraction > 0 and len(idx) >= 2:
                n_val = min(max(n_val, 1), len(idx) - 1)
            is_train[idx[rng("split", seed, str(d), int(y)).permutation(len(idx))[:n_val]]] = False
    return is_train


def load_image(path: str | os.PathLike) -> Image.Image:
    """One image as an upright 8-bit RGB PIL image, fully loaded and with the file closed.

    EXIF orientation is applied; an animation gives its first frame; transparency is
    composited on white (a black background would be a colour the photo never had); 16-bit
    grey is scaled, not clipped; 32-bit integer or float grey is scaled from the range its
    values are in (0-1, 0-255 or 0-65535); CMYK, palette and grey images are converted.
    Raises :class:`RejectedImage` for images too large (checked before decoding), of an
    absurd aspect ratio or of 32-bit values with no known scale, and OSError-family errors
    on corrupt files.
    """
    with _open(path) as im:
        im.seek(0)
        im.load()
        sixteen_bit = im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG")  # older Pillows: "I"
        im = ImageOps.exif_transpose(im)
    if sixteen_bit:
        im = Image.fromarray(np.clip(np.asarray(im, dtype=np.float64) / 257.0, 0, 255).astype(np.uint8))
    if im.mode in ("I", "F"):
        im = Image.fromarray(_wide_values_to_8_bits(np.asarray(im, dtype=np.float32)))
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB")
