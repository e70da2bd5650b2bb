"""Content hashes: the one place that turns bytes, printable values or files into hex digests.

Cache keys, store checksums, model identities and seeds are all built from these, so a change
here would invalidate every cache: each function reproduces exactly the digest its callers
wrote by hand before it existed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

_BLOCK = 1 << 22  # 4 MiB: large weights files are hashed without reading them whole


def digest(data: bytes | str, algorithm: str = "sha256") -> str:
    """Hex digest of ``data`` (a str is hashed as its UTF-8 bytes). ``algorithm`` is any of
    hashlib's; md5 only where a released pipeline's numbers must be reproduced."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.new(algorithm, raw).hexdigest()


def json_digest(value: object) -> str:
    """sha256 of ``value`` as JSON with sorted keys (anything JSON cannot write goes through ``str``),
    so equal dicts give equal digests whatever their insertion order."""
    return digest(json.dumps(value, sort_keys=True, default=str))


def file_digest(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks (weights, images and store entries alike)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            hasher.update(block)
    return hasher.hexdigest()
