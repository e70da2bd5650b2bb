"""Where the package's files are: what ships inside it, and what it writes to the user's cache.

Shipped (package data, read-only): ``toy-clip/``, the tiny CLIP trained on ToyDomains. The demo's
recipe is code (:data:`clip_icm.toydomains.DEMO_RECIPE`), so it ships with the modules.

Written (the user's cache folder, :func:`cache_dir`): the embedding store at its top and the
generated demo images in ``toydomains/``. ``$CLIP_ICM_CACHE`` moves both at once, so pointing it
at an empty folder gives a run that reads and writes nothing else. Nothing is ever written
inside the installed package, which may be read-only.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
TOY_CLIP_DIR = PACKAGE_DIR / "toy-clip"
CACHE_VAR = "CLIP_ICM_CACHE"
_APP_NAME = "clip-icm"


def user_cache_home() -> Path:
    """The platform's folder for per-user caches: ``%LOCALAPPDATA%`` on Windows,
    ``~/Library/Caches`` on macOS, ``$XDG_CACHE_HOME`` or ``~/.cache`` elsewhere."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def cache_dir() -> Path:
    """``$CLIP_ICM_CACHE`` if set, else ``clip-icm`` in the user's cache folder; read at call time,
    so a test or a server can move it after import."""
    return Path(os.environ.get(CACHE_VAR) or user_cache_home() / _APP_NAME).expanduser()


def demo_dir() -> Path:
    """Where the bundled demo world is generated on first use."""
    return cache_dir() / "toydomains"
