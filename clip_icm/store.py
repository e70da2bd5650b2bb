"""A disk store of embedding arrays: float16 .npy (memory-mappable) + a JSON manifest.

Layout: ``<root>/<key[:2]>/<key>.<sha16>.npy`` holds the data and ``<key>.json`` the
manifest (shape, dtype, sha256 of the data file). Writes are atomic: each file is
written to a private temporary name, flushed, then ``os.replace``-d into place, data
first and manifest last. The manifest is the commit point and names the data file by
its checksum, so

- a run killed at any moment leaves either a complete entry or none (a stray temp file
  at most);
- two writers of the same entry never mix bytes: each publishes a complete data file
  and the last manifest wins, pointing at a complete file;
- a truncated or altered data file, or altered metadata, fails its checksum and the entry
  counts as missing, so it is recomputed (or copied again from the ``seed``, whose copies are
  not synced to disk: a power cut may spoil one, never the seed's original);
- the manifest names its data file, but a reader follows only the one name ``put`` writes
  beside it, and only to a regular file (never ``../``, an absolute path, a FIFO or a device).

Checksums catch corruption, not a writer with access to the folder: such a writer can forge
a consistent entry (see docs/SECURITY.md).

Keys are hashes (:func:`make_key`) of everything that changes the vectors; the callers
(:mod:`clip_icm.pipeline`) decide what goes in, and say in ``meta`` what an entry is (``kind``,
one of :data:`clip_icm.cache.KINDS`, and the ``dataset``, ``folder`` and ``model`` it came
from) for ``cache info``.

Removal (:mod:`clip_icm.cache`) and rewrites never pull a data file from under a reader. Each
manifest is an advisory lock (``flock``): a reader holds it shared from reading the manifest
until its array is mapped (a mapped file stays readable after an unlink); a rewrite holds the
old manifest exclusively while it replaces it and removes the data file it named, so a
rewritten key leaves no orphan; a prune takes it exclusively *without waiting* and skips an
entry in use. A reader that finds its manifest replaced or removed once it holds the lock
starts again, or misses. Writers and removers of one key folder also take turns
(:func:`clip_icm.cache.writing`), so that a data file is never removed between its publication
and its manifest's. (Without ``fcntl``, on Windows, an open file cannot be deleted, which
protects a reader; a prune during a write there can cost that entry, which then reads as
missing and is computed again.)

Every read also touches the manifest's mtime: the entry's last use, which the size bound
(``$CLIP_ICM_CACHE_MAX_SIZE``, :meth:`EmbeddingStore.put`) and ``cache prune`` evict by, least
recently used first. Not the atime: most mounts update it once a day at most (relatime), or
never (noatime). A read already opens the manifest and checksums the data file; it adds one ``utime``.
"""
from __future__ import annotations

import io
import json
import logging
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from clip_icm.cache import data_name, format_size, locked, make_room, size_bound, touch, writing
from clip_icm.errors import InvalidInput
from clip_icm.hashing import digest, file_digest, json_digest
from clip_icm.resources import cache_dir

FORMAT = 2  # 2: the manifest's meta has a checksum too (meta_sha256)
SIZE_RECHECK_S = 60  # how long a store trusts its running total before walking the folder again
log = logging.getLogger(__name__)


def default_root() -> Path:
    """The user's clip-icm cache folder (:func:`clip_icm.resources.cache_dir`; ``$CLIP_ICM_CACHE`` moves it)."""
    return cache_dir()


def make_key(*parts: object) -> str:
    """A stable content key of JSON-able parts (order matters)."""
    return json_digest(parts)[:40]


def atomic_write(path: Path, write: Callable[[object], None], sync: bool = True) -> None:
    """Write via a private temp file in the same folder, fsync (unless ``sync`` is False: a copy whose
    original is kept elsewhere), then rename over ``path``.

    Also used for the pipeline's and backend's JSON memos: readers never see half a file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX: mkstemp's 0600 whatever the umask would lock a shared cache's group out
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask, read from /proc where Linux has it: setting and restoring it (the only
    portable way) would give a file another thread creates meanwhile the wrong mode."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass
class StoreStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0   # entries found broken (reported as missing, so the caller recomputes them)
    evicted: int = 0   # entries removed to keep the store under its size bound
    seeded: int = 0    # entries copied in from the seed folder (also counted as hits)


class EmbeddingStore:
    """Content-keyed float16 arrays on disk; see the module docstring for the guarantees.

    ``max_size``: the bound in bytes of the store's entries (None: :func:`size_bound`, the
    environment's); a write that would pass it first removes the least recently used entries.

    ``seed``: a read-only folder in the same layout (the dashboard ships one for the bundled demo's
    first views: ``dashboard/demo_store.py``). A key missing from ``root`` is looked up there and, when
    found and its checksums hold, copied into ``root``. Keys are content hashes, so a seed entry is only
    ever read for exactly the inputs it was computed from."""

    def __init__(self, root: str | Path | None = None, max_size: int | None = None,
                 seed: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.max_size = max_size
        self.seed = Path(seed) if seed is not None else None
        self.stats = StoreStats()
        self._size: int | None = None  # running total of the entries, while the bound is checked
        self._size_at = 0.0
        self._said_over = False

    def _manifest(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> np.ndarray | None:
        """The stored array (read-only float16 memmap), or None if missing or corrupt."""
        entry = self.get_entry(key)
        return None if entry is None else entry[0]

    def get_entry(self, key: str) -> tuple[np.ndarray, dict] | None:
        """(array, the ``meta`` it was stored with), or None if missing or corrupt. An entry missing
        here but found in the ``seed`` folder is copied in first (see the class docstring)."""
        return self._read(key, from_seed=True)

    def _read(self, key: str, from_seed: bool) -> tuple[np.ndarray, dict] | None:
        """get_entry; ``from_seed`` False: this folder's entry only (the read of a seed entry just copied
        in, which would otherwise copy it again, and again, if the copy read as corrupt)."""
        manifest_path = self._manifest(key)
        try:
            with locked(manifest_path) as held:  # until the array is mapped: see the module docstring
                if held is None:
                    if from_seed:
                        return self._from_seed(key)
                    self.stats.misses += 1
                    return None
                touch(manifest_path)
                array, meta = _checked(manifest_path, key, held.raw)
        except (OSError, ValueError, KeyError, TypeError):
            self.stats.corrupt += 1
            # copied again where the seed has it
            return self._from_seed(key) if from_seed and self.seed is not None else None
        self.stats.hits += 1
        return array, meta

    def _from_seed(self, key: str) -> tuple[np.ndarray, dict] | None:
        """A missing entry from the read-only ``seed`` folder, checked as any entry is, then put here
        (so that the size bound, ``cache info`` and ``cache prune`` see it as they see any other)."""
        if self.seed is None:
            self.stats.misses += 1
            return None
        manifest_path = self.seed / key[:2] / f"{key}.json"
        try:
            array, meta = _checked(manifest_path, key, manifest_path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError):
            self.stats.misses += 1
            return None
        self.stats.seeded += 1
        try:
            # not synced to disk: the seed keeps the original, and a copy that a power cut spoiled fails its
            # checksum and is copied again (86 fsyncs took 0.37 s of the demo's cold first page)
            self.put(key, array, meta, sync=False)
        except OSError:  # a read-only or full cache folder: the seed's own copy serves
            self.stats.hits += 1
            return array, meta
        return self._read(key, from_seed=False)

    def put(self, key: str, array: np.ndarray, meta: dict | None = None, sync: bool = True) -> None:
        """Store ``array`` as float16 under ``key`` (atomically; safe against concurrent writers
        and readers); a rewrite removes the data file it replaced. ``sync``: atomic_write's."""
        with np.errstate(over="ignore"):  # overflow is reported below, with the key
            data = np.ascontiguousarray(array, dtype=np.float16)
        if not np.isfinite(data).all():
            raise InvalidInput(f"entry {key}: values are not finite in float16 (max |x| {np.abs(array).max():.3g})")
        folder = self.root / key[:2]
        folder.mkdir(parents=True, exist_ok=True)
        payload = _npy_bytes(data)
        sha = digest(payload)
        data_file = f"{key}.{sha[:16]}.npy"
        meta = json.loads(json.dumps(meta or {}))  # as a reader will see it (int keys become str), for its checksum
        manifest = {"format": FORMAT, "key": key, "data": data_file, "sha256": sha,
                    "shape": list(data.shape), "dtype": "float16", "meta": meta, "meta_sha256": json_digest(meta)}
        manifest_bytes = json.dumps(manifest, indent=1).encode()
        self._make_room(key, len(payload) + len(manifest_bytes))
        with writing(folder):
            atomic_write(folder / data_file, lambda fh: fh.write(payload), sync)
            with locked(self._manifest(key), exclusive=True) as held:  # no reader is between it and its data
                atomic_write(self._manifest(key), lambda fh: fh.write(manifest_bytes), sync)
                replaced = data_name(held)
                if replaced not in (None, data_file):
                    (folder / replaced).unlink(missing_ok=True)

    def _make_room(self, key: str, incoming: int) -> None:
        """Under the size bound, remove least recently used entries (never ``key``, never one in
        use) so that ``incoming`` more bytes fit; says so in one log line. The folder is walked
        when the running total would pass the bound, or is older than SIZE_RECHECK_S (other
        processes write too), not on every write."""
        bound = self.max_size if self.max_size is not None else size_bound()
        if bound is None:
            return
        stale = time.monotonic() - self._size_at > SIZE_RECHECK_S
        if self._size is None or stale or self._size + incoming > bound:
            self._size, removed = make_room(self.root, bound, incoming, keep=key)
            self._size_at = time.monotonic()
            self._say_once(bound, removed, over=self._size + incoming > bound)
            self.stats.evicted += removed.entries
        self._size += incoming

    def _say_once(self, bound: int, removed, over: bool) -> None:
        """One log line per store (a run): its first removal, and whether it is past the bound even so."""
        if removed.entries and not self.stats.evicted:
            log.warning("clip-icm cache: removed %d least recently used entr%s (%s) to stay under its bound of %s "
                        "(said once; %s)", removed.entries, "y" if removed.entries == 1 else "ies",
                        format_size(removed.bytes), format_size(bound), "python -m clip_icm cache info shows the rest")
        if over and not self._said_over:
            self._said_over = True
            log.warning("clip-icm cache: past its bound of %s even so: what is left is in use, or this entry",
                        format_size(bound))

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray], meta: dict | None = None) -> np.ndarray:
        """The stored array, computing and storing it first when missing or corrupt."""
        hit = self.get(key)
        if hit is not None:
            return hit
        array = compute()
        self.put(key, array, meta)
        return np.asarray(array, dtype=np.float16)


def _checked(manifest_path: Path, key: str, raw: bytes) -> tuple[np.ndarray, dict]:
    """The array (memory-mapped) and meta of the manifest ``raw`` read at ``manifest_path``; raises
    ValueError (or OSError, KeyError, TypeError) where the entry is not what the manifest says."""
    manifest = json.loads(raw)
    data_path = _data_path(manifest_path, key, manifest)
    if manifest["format"] != FORMAT or file_digest(data_path) != manifest["sha256"]:
        raise ValueError("checksum mismatch")
    if manifest["meta_sha256"] != json_digest(manifest["meta"]) or not isinstance(manifest["meta"], dict):
        raise ValueError("metadata checksum mismatch")
    array = np.load(data_path, mmap_mode="r")
    if list(array.shape) != manifest["shape"] or array.dtype != np.float16:
        raise ValueError("shape or dtype mismatch")
    return array, manifest["meta"]


def _data_path(manifest_path: Path, key: str, manifest: dict) -> Path:
    """The data file a manifest names, trusted only as the one name :meth:`EmbeddingStore.put`
    writes beside it (so never ``../x`` or an absolute path) and only as a regular file (a FIFO
    or ``/dev/zero`` linked there would hang the checksum); anything else is a corrupt entry."""
    if manifest["data"] != f"{key}.{str(manifest['sha256'])[:16]}.npy":
        raise ValueError("data file name is not the one the store writes")
    path = manifest_path.parent / manifest["data"]
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise ValueError("data file is not a regular file")
    return path


def _npy_bytes(data: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, data, allow_pickle=False)
    return buffer.getvalue()


def stored_pairs(store: EmbeddingStore, keys: Iterable[tuple[str, str]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(Z, Z_do) of each pair of entry keys, memory-mapped (read-only float16, read when summed): the
    parts :meth:`clip_icm.projection.PairMoments.streamed` sums block by block. A missing or damaged
    entry is an error naming it, not a smaller stack."""
    for z_key, z_do_key in keys:
        Z, Z_do = store.get(z_key), store.get(z_do_key)
        for key, array in ((z_key, Z), (z_do_key, Z_do)):
            if array is None:
                raise InvalidInput(f"no stored entry {key[:16]}... in {store.root} (removed, or damaged); embed again")
        yield Z, Z_do
