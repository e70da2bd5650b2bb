"""See, bound and clean the on-disk cache, as ``pip cache`` and ``huggingface-cli scan-cache`` do
(``python -m clip_icm cache info|list|prune|clear``; the dashboard's Cache settings call the same).

The folder (:func:`clip_icm.resources.cache_dir`; ``$CLIP_ICM_CACHE`` moves it) holds

- the store's entries (:mod:`clip_icm.store`), in folders named by a key's first two characters:
  a manifest and the data file it names. Kinds (:data:`KINDS`): embeddings (images,
  zero-shot prompts), pairs (interventional pairs, intervened validation rows, text-bank prompts),
  layouts (the UMAP maps) and kept results (the dashboard's choices and tables: an empty array whose
  manifest holds the value); each says, in its metadata, the data set and model it came from;
- orphans: data files that no manifest names (an interrupted rewrite, a store from before rewrites
  removed them) and the temp files of killed writes;
- :data:`PARTS`, which are no entries: the demo's generated images, numba's compiled UMAP kernels,
  the memos of image hashes and model identities, and the dashboard's uploads. The size bound and
  ``prune`` leave them; ``clear --all`` removes them too (each is rebuilt on use; an upload must be
  uploaded again).

Removal is safe while other processes use the store: an entry is removed only under its manifest's
exclusive lock, taken without waiting (:func:`locked`), and only if its manifest is the one
scanned, untouched since; an entry in use is skipped and counted as ``busy``. Each removal also
takes its key folder's turn among writers (:func:`writing`), so an orphan is checked again and
removed while no write is under way there.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, NamedTuple

from clip_icm.errors import InvalidInput
from clip_icm.resources import cache_dir

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; there an open file cannot be deleted, which protects a reader
    fcntl = None

KINDS = ("embeddings", "pairs", "layouts", "kept results")
MAX_SIZE_VAR = "CLIP_ICM_CACHE_MAX_SIZE"
PARTS = {
    "toydomains": "the demo world's images",
    "numba": "compiled UMAP kernels",
    "hashes": "memos of image hashes",
    "models": "memos of model identities",
    "uploads": "files and unpacked zips uploaded to the dashboard",
}
NOT_RECORDED = "(not recorded)"

_DECIMAL = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
            "t": 10**12, "tb": 10**12}
_BINARY = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_AGE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Entry:
    """One store entry: its manifest and the data file it names."""

    key: str
    kind: str
    dataset: str
    folder: str  # the data set's folder, where recorded ("" otherwise)
    model: str
    size: int  # bytes: manifest + data file
    last_used: float  # the manifest's mtime (epoch seconds): written or last read
    created: float  # the data file's mtime
    mtime_ns: int  # the manifest's mtime as scanned: an entry used since is not removed


@dataclass(frozen=True)
class Orphan:
    path: Path
    size: int
    mtime: float


@dataclass(frozen=True)
class Contents:
    root: Path
    entries: list[Entry]  # least recently used first
    orphans: list[Orphan]
    parts: dict[str, int]  # bytes of each part of PARTS that is there


@dataclass
class Removed:
    """What a prune or clear removed, and what it left because it was in use."""

    entries: int = 0
    bytes: int = 0
    orphans: int = 0
    busy: int = 0  # entries in use, or used since the scan
    kinds: dict[str, int] = field(default_factory=dict)  # entries removed per kind

    def add(self, entry: Entry) -> None:
        self.entries += 1
        self.bytes += entry.size
        self.kinds[entry.kind] = self.kinds.get(entry.kind, 0) + 1


# ---------------------------------------------------------------- the locks that readers, writers and removers share
# (the protocol: clip_icm.store's docstring)

class EntryBusy(OSError):
    """Another process is reading or rewriting this entry right now."""


class Held(NamedTuple):
    """A manifest as read while its lock was held."""

    raw: bytes
    mtime_ns: int


@contextmanager
def locked(manifest: Path, exclusive: bool = False, wait: bool = True) -> Iterator[Held | None]:
    """Hold ``manifest``'s lock (shared to read, exclusive to replace or remove it); yields what it
    holds, or None when there is no manifest (any more). A manifest replaced or removed while this
    waited for the lock is opened again, so what is yielded is what the path names while it is held.
    ``wait=False`` raises :class:`EntryBusy` instead of waiting for another holder."""
    if fcntl is None:
        yield _read_held(manifest)
        return
    while True:
        try:
            fd = os.open(manifest, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            _lock(fd, exclusive, wait)
            opened = os.fstat(fd)
            try:
                current = os.stat(manifest)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_ino, current.st_dev) == (opened.st_ino, opened.st_dev):
                with open(fd, "rb", closefd=False) as fh:
                    yield Held(fh.read(), opened.st_mtime_ns)
                return
        finally:
            os.close(fd)  # releases the lock


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """One writer or remover at a time in a key folder (the folder's own lock), so that nobody
    removes a data file between its publication and its manifest's, nor a write's temp file."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        _lock(fd, exclusive=True, wait=True)
        yield
    finally:
        os.close(fd)


def _lock(fd: int, exclusive: bool, wait: bool) -> None:
    flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        raise EntryBusy("in use by another process") from None
    except OSError:
        pass  # a file system without locks: unprotected, as the store was before it took any


def _read_held(manifest: Path) -> Held | None:
    try:
        return Held(manifest.read_bytes(), manifest.stat().st_mtime_ns)
    except FileNotFoundError:
        return None


def data_name(held: Held | None) -> str | None:
    """The data file a held manifest names (None for none, or for a damaged manifest)."""
    try:
        return str(json.loads(held.raw)["data"]) if held is not None else None
    except (ValueError, KeyError, TypeError):
        return None


def touch(path: Path) -> None:
    """Mark an entry used now: its manifest's mtime (why not the atime: :mod:`clip_icm.store`)."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache (another user's, a shared mount): it stays readable, unranked


def size_bound() -> int | None:
    """``$CLIP_ICM_CACHE_MAX_SIZE`` in bytes ("2GB", "500MiB"; empty or unset: no bound), read
    at call time so that a server (the dashboard's setting) can change it while it runs."""
    text = os.environ.get(MAX_SIZE_VAR, "").strip()
    if not text:
        return None
    try:
        return parse_size(text)
    except InvalidInput as err:
        raise InvalidInput(f"${MAX_SIZE_VAR}: {err}") from None


# ---------------------------------------------------------------- reading the folder

def scan(root: str | Path | None = None) -> Contents:
    """Everything in the cache folder (``root``; default: the user's), nothing changed."""
    root = Path(root) if root is not None else cache_dir()
    entries: list[Entry] = []
    orphans: list[Orphan] = []
    for folder in _key_folders(root):
        found, lost = _scan_folder(folder)
        entries += found
        orphans += lost
    parts = {name: _tree_size(root / name) for name in PARTS if (root / name).is_dir()}
    return Contents(root, sorted(entries, key=lambda e: (e.last_used, e.key)), orphans, parts)


def _key_folders(root: Path) -> list[Path]:
    try:
        children = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(Path(c.path) for c in children if len(c.name) == 2 and c.is_dir(follow_symlinks=False))


def _scan_folder(folder: Path) -> tuple[list[Entry], list[Orphan]]:
    files = {}
    for item in os.scandir(folder):
        try:
            files[item.name] = item.stat(follow_symlinks=False)
        except FileNotFoundError:  # removed by another process meanwhile
            continue
    entries, named = [], set()
    for name, stat in files.items():
        if not (name.endswith(".json") and name.startswith(folder.name)):
            continue
        try:
            manifest = json.loads((folder / name).read_bytes())
            data = manifest["data"]
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError):  # damaged: the store reads it as missing; so is its data
            continue
        named.add(name)
        named.add(data)
        entries.append(_entry(manifest, stat, files.get(data)))
    orphans = [Orphan(folder / name, stat.st_size, stat.st_mtime) for name, stat in files.items()
               if name not in named and (name.endswith((".npy", ".tmp", ".json")))]
    return entries, orphans


def _entry(manifest: dict, stat: os.stat_result, data: os.stat_result | None) -> Entry:
    meta = manifest.get("meta") or {}
    return Entry(str(manifest.get("key", "")), _kind(manifest, meta), str(meta.get("dataset", NOT_RECORDED)),
                 str(meta.get("folder", "")), str(meta.get("model", NOT_RECORDED)),
                 stat.st_size + (data.st_size if data else 0), stat.st_mtime,
                 data.st_mtime if data else stat.st_mtime, stat.st_mtime_ns)


def _kind(manifest: dict, meta: dict) -> str:
    if meta.get("kind") in KINDS:
        return meta["kind"]
    # entries written before the store recorded kinds: what they hold says
    if "value" in meta:
        return "kept results"
    return "layouts" if manifest.get("shape", [])[1:] == [2] else "embeddings"


def _tree_size(folder: Path) -> int:
    total = 0
    for path, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(path, name)).st_size
            except FileNotFoundError:
                continue
    return total


def info(root: str | Path | None = None) -> dict:
    """The folder, its total size, the entries by kind and by (data set, model), orphans, the
    other parts and the bound: plain values (``cache info --json`` prints them as they are)."""
    contents = scan(root)
    entry_bytes = sum(e.size for e in contents.entries)
    orphan_bytes = sum(o.size for o in contents.orphans)
    kinds = {kind: {"entries": 0, "bytes": 0} for kind in KINDS}
    groups: dict[tuple[str, str], dict] = {}
    for e in contents.entries:
        kinds[e.kind]["entries"] += 1
        kinds[e.kind]["bytes"] += e.size
        group = groups.setdefault((e.dataset, e.model), {"dataset": e.dataset, "model": e.model,
                                                         "entries": 0, "bytes": 0})
        group["entries"] += 1
        group["bytes"] += e.size
    return {
        "folder": str(contents.root),
        "total_bytes": entry_bytes + orphan_bytes + sum(contents.parts.values()),
        "entries": len(contents.entries),
        "entry_bytes": entry_bytes,
        "max_size": size_bound(),
        "kinds": kinds,
        "datasets": sorted(groups.values(), key=lambda g: (-g["bytes"], g["dataset"], g["model"])),
        "orphans": {"files": len(contents.orphans), "bytes": orphan_bytes},
        "other": contents.parts,
    }


def entries(root: str | Path | None = None, dataset: str | None = None, kind: str | None = None) -> list[Entry]:
    """The entries, most recently used first; ``dataset`` (its name or folder) and ``kind`` filter."""
    if kind is not None and kind not in KINDS:
        raise InvalidInput(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    found = [e for e in scan(root).entries if _matches(e, dataset) and kind in (None, e.kind)]
    return found[::-1]


def _matches(entry: Entry, dataset: str | None) -> bool:
    return dataset is None or dataset in (entry.dataset, entry.folder)


def entry_row(entry: Entry) -> dict:
    """An entry as plain values (times in UTC ISO 8601)."""
    row = asdict(entry)
    del row["mtime_ns"]
    for name in ("last_used", "created"):
        row[name] = datetime.fromtimestamp(row[name], timezone.utc).isoformat(timespec="seconds")
    return row


# ---------------------------------------------------------------- removing

def prune(root: str | Path | None = None, older_than: float | None = None, max_size: int | None = None,
          now: float | None = None) -> Removed:
    """Remove orphans, then the entries last used more than ``older_than`` seconds ago, then the
    least recently used entries until the entries and orphans left take at most ``max_size`` bytes."""
    _check_limits(older_than, max_size)
    contents = scan(root)
    now = time.time() if now is None else now
    removed = _remove_orphans(contents.orphans)
    orphans_left = sum(o.size for o in contents.orphans) - removed.bytes
    left = []
    for entry in contents.entries:
        too_old = older_than is not None and entry.last_used < now - older_than
        if not (too_old and _remove(contents.root, entry, removed)):
            left.append(entry)
    if max_size is not None:
        _remove_until(contents.root, left, sum(e.size for e in left) + orphans_left, max_size, removed)
    return removed


def _check_limits(older_than: float | None, max_size: int | None) -> None:
    if older_than is not None and older_than < 0:
        raise InvalidInput(f"an age must not be negative, got {older_than}")
    if max_size is not None and max_size < 0:
        raise InvalidInput(f"a size must not be negative, got {max_size}")


def clear(root: str | Path | None = None, dataset: str | None = None, everything: bool = False) -> Removed:
    """Remove every entry (of ``dataset``, its name or folder, when given) and, without a data set,
    the orphans; ``everything`` also removes the PARTS (demo world, UMAP kernels, memos)."""
    if everything and dataset is not None:
        raise InvalidInput("clear either one data set's entries or everything, not both")
    contents = scan(root)
    removed = Removed() if dataset is not None else _remove_orphans(contents.orphans)
    for entry in contents.entries:
        if _matches(entry, dataset):
            _remove(contents.root, entry, removed)
    if everything:
        for name, size in contents.parts.items():
            shutil.rmtree(contents.root / name, ignore_errors=True)
            removed.bytes += size - _tree_size(contents.root / name)  # what could not be removed stays counted
    return removed


def bound_this_process(text: str, root: str | Path | None = None) -> Removed:
    """Set this process's size bound to ``text`` ("2GB"; "" for none) and prune to it now. It goes
    in ``$CLIP_ICM_CACHE_MAX_SIZE``, which every store reads at each write: the dashboard's setting,
    for the whole server (its users share one cache folder)."""
    size = parse_size(text) if text.strip() else None
    if size is None:
        os.environ.pop(MAX_SIZE_VAR, None)
        return Removed()
    os.environ[MAX_SIZE_VAR] = text.strip()
    return prune(root, max_size=size)


def make_room(root: Path, bound: int, incoming: int, keep: str) -> tuple[int, Removed]:
    """For :meth:`EmbeddingStore.put`: remove orphans, then least recently used entries (never
    ``keep``, never one in use) until the entries and orphans plus ``incoming`` bytes fit in
    ``bound``. Returns (bytes the store holds now, what was removed)."""
    contents = scan(root)
    removed = _remove_orphans(contents.orphans)
    candidates = [e for e in contents.entries if e.key != keep]
    total = sum(e.size for e in contents.entries) + sum(o.size for o in contents.orphans) - removed.bytes
    return _remove_until(root, candidates, total, max(bound - incoming, 0), removed), removed


def _remove_until(root: Path, candidates: list[Entry], total: int, target: int, removed: Removed) -> int:
    """Remove ``candidates`` (least recently used first) while ``total`` bytes exceed ``target``."""
    for entry in candidates:
        if total <= target:
            break
        if _remove(root, entry, removed):
            total -= entry.size
    return total


def _remove(root: Path, entry: Entry, removed: Removed) -> bool:
    """Remove ``entry`` unless it is in use or was used since it was scanned (then counted busy)."""
    manifest = root / entry.key[:2] / f"{entry.key}.json"
    try:
        with writing(manifest.parent), locked(manifest, exclusive=True, wait=False) as held:
            if held is None:
                return False  # removed by another process meanwhile
            if held.mtime_ns != entry.mtime_ns:
                raise EntryBusy("used since it was scanned")
            manifest.unlink()  # first: from now on a reader misses cleanly
            data = data_name(held)
            if data:
                try:
                    (manifest.parent / data).unlink(missing_ok=True)
                except OSError:
                    pass  # open elsewhere (Windows refuses): an orphan for a later prune
    except EntryBusy:
        removed.busy += 1
        return False
    except FileNotFoundError:  # the key folder went (a clear --all of a hand-made folder): nothing to remove
        return False
    removed.add(entry)
    return True


def _remove_orphans(orphans: list[Orphan]) -> Removed:
    removed = Removed()
    for orphan in orphans:
        try:
            with writing(orphan.path.parent):
                if not _still_orphan(orphan.path):
                    continue
                orphan.path.unlink()
        except FileNotFoundError:
            continue
        removed.orphans += 1
        removed.bytes += orphan.size
    return removed


def _still_orphan(path: Path) -> bool:
    """Checked again in the folder's turn: whether no manifest (now) names ``path``."""
    if path.name.endswith(".tmp"):
        return True  # no write is under way in this folder: a killed one's
    key = path.name.split(".")[0]
    try:
        named = json.loads((path.parent / f"{key}.json").read_bytes())["data"]
    except FileNotFoundError:
        return True
    except (ValueError, KeyError, TypeError):
        return True  # a damaged manifest names nothing (and is an orphan itself)
    return path.name not in (f"{key}.json", named)


# ---------------------------------------------------------------- sizes and ages as people write them

def parse_size(text: str) -> int:
    """Bytes from "2GB", "500 MB", "1.5G", "2GiB", "100k" or "1234": powers of 1000 (B, KB, MB,
    GB, TB; the B may be left out), or of 1024 with KiB, MiB, GiB, TiB."""
    match = re.fullmatch(r"\s*(-?)([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not match:
        raise InvalidInput(f"not a size: {text!r} (e.g. 2GB, 500MB, 1.5GiB)")
    sign, number, unit = match.groups()
    if sign:
        raise InvalidInput(f"a size must not be negative, got {text!r}")
    factor = {**_DECIMAL, **_BINARY}.get(unit.lower())
    if factor is None:
        raise InvalidInput(f"unknown size unit {unit!r} in {text!r}; units: B, KB, MB, GB, TB (powers of 1000), "
                           "KiB, MiB, GiB, TiB (powers of 1024)")
    return int(float(number) * factor)


def parse_age(text: str) -> float:
    """Seconds from "30d", "12h", "90m" (or "90min"), "45s", "2w"."""
    match = re.fullmatch(r"\s*(-?)([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not match:
        raise InvalidInput(f"not an age: {text!r} (e.g. 30d, 12h, 90m)")
    sign, number, unit = match.groups()
    if sign:
        raise InvalidInput(f"an age must not be negative, got {text!r}")
    if unit.lower() not in _AGE_UNITS:
        raise InvalidInput(f"unknown age unit {unit!r} in {text!r}; units: s, m (or min), h, d, w")
    return float(number) * _AGE_UNITS[unit.lower()]


def format_size(n: int | float) -> str:
    """Bytes as people read them, in powers of 1000 ("512 B", "1.5 MB", "12.3 GB")."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
