"""Numba's on-disk cache for the kernels a UMAP layout compiles (umap-learn 0.5, and our epochs).

Why this module exists: umap-learn declares its kernels with ``numba.njit`` *without*
``cache=True``, so every new process compiled them again before its first layout: 8-15 s on
the 2-core machine (bench/RESULTS.md), longer than a layout of a few thousand points.
``enable()`` turns numba's cache on for exactly those dispatchers, in a folder of the project's
store (``<store>/numba``), before anything is compiled; the second and later processes load the
machine code instead of compiling it.

How: ``Dispatcher.enable_caching()`` on the existing dispatcher objects (what ``njit(cache=True)``
itself calls), so every reference umap holds to them sees the cache, and the
compilation (options, types, code) is the one umap would do without it: layouts are
bit-identical (tests/test_reduce.py checks it). The cache folder is set only while the caches
are created (``numba.config.CACHE_DIR``), so no other library's cache moves. Numba keys each
entry by the source file's timestamp and the CPU, so upgrading umap or moving machines
recompiles rather than loading stale code. Anything unexpected (another umap version without one
of these names, an unwritable folder) leaves that kernel uncached: slower, never wrong.
"""
from __future__ import annotations

import os
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# (module, name) of each kernel a layout calls from Python and that its library compiles without a
# cache; kernels called only from inside these are compiled into them. The epochs are our own kernel
# (layout_epochs), declared without a cache too so that it is kept here with umap's.
KERNELS = (
    ("umap.umap_", "smooth_knn_dist"),
    ("umap.umap_", "compute_membership_strengths"),
    ("clip_icm.layout_epochs", "_epochs"),
)
# Cached too, though no default layout calls it (filled() does not wait for it): umap's epoch of the
# opt-in parallel layouts (reduce.PARALLEL_VAR), compiled by the first such layout, loaded by the next.
OPTIONAL_KERNELS = (("umap.layouts", "_nb_optimize_layout_euclidean_single_epoch_parallel"),)
# Not pynndescent's nn_descent (the approximate neighbour search, 40 s to compile): numba refuses
# to cache it ("uses dynamic globals"), which is why reduce finds neighbours of up to
# BLAS_KNN_LIMIT rows by matrix products instead.

_lock = threading.Lock()
_enabled: dict[str, Path] = {}


def default_folder() -> Path:
    from clip_icm.store import default_root

    return default_root() / "numba"


def enable(folder: Path | str | None = None) -> dict[str, Path]:
    """Turn numba's on-disk cache on for the KERNELS and OPTIONAL_KERNELS (once per process; later
    calls return what the first did). Returns {"module.name": folder} for each kernel now cached."""
    import importlib

    import numba

    with _lock:
        if _enabled:
            return dict(_enabled)
        folder = Path(folder) if folder is not None else default_folder()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return {}
        previous = numba.config.CACHE_DIR
        numba.config.CACHE_DIR = os.fspath(folder)
        try:
            for module_name, name in KERNELS + OPTIONAL_KERNELS:
                try:
                    dispatcher = getattr(importlib.import_module(module_name), name)
                    if type(dispatcher._cache).__name__ == "NullCache":  # not cached by its library
                        dispatcher.enable_caching()
                        _enabled[f"{module_name}.{name}"] = folder
                except Exception:  # noqa: BLE001 - another version or folder: that kernel stays uncached
                    continue
        finally:
            numba.config.CACHE_DIR = previous
        return dict(_enabled)


def _marker(folder: Path | str | None) -> Path | None:
    """The file that says the KERNELS of these versions, and of our epochs' source as it stands (its
    modification time: what numba keys its entries by), are in ``folder``'s cache (None if a version is unknown)."""
    from importlib.util import find_spec

    try:
        epochs = int(os.stat(find_spec("clip_icm.layout_epochs").origin).st_mtime)  # found, not imported (numba, umap)
        versions = (f"py{sys.version_info[0]}{sys.version_info[1]}-umap{version('umap-learn')}-numba{version('numba')}"
                    f"-epochs{epochs}")
    except (PackageNotFoundError, OSError):
        return None
    return (Path(folder) if folder is not None else default_folder()) / f"filled-{versions}"


def filled(folder: Path | str | None = None) -> bool:
    """Whether a process has already cached every kernel of the installed versions in ``folder``:
    then a layout loads them (about a second) and nothing need compile them beforehand. (Numba
    still checks each entry: a copy made on another CPU compiles again, never runs stale code.)"""
    marker = _marker(folder)
    return marker is not None and marker.is_file()


def mark_filled(folder: Path | str | None = None) -> None:
    """Record that every kernel is cached (call after layouts ran with all KERNELS enabled)."""
    marker = _marker(folder)
    if marker is not None and {f"{module}.{name}" for module, name in KERNELS} <= set(enable(folder)):
        try:
            marker.touch()
        except OSError:
            pass  # an unwritable folder: the next process compiles in the background again
