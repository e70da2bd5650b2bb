"""Files a user uploads (the dashboard, opened from another machine, cannot be given a folder):
a zip of a DomainBed tree or of images with a manifest, unpacked under guards, and single files
(a manifest, a pairs file), each kept under ``<cache>/uploads/<content digest>/``.

Guards, each a one-line InvalidInput before anything is left on disk: an entry whose name leaves
the target folder (``../x``, ``/etc/x``, ``C:\\x``), a symbolic link, more than ``max_files``
entries, more than ``max_bytes`` unpacked (counted while writing, so a zip whose headers lie about
sizes is stopped too), a file that is not a zip. A zip is unpacked into a temporary sibling and
renamed, so a reader never sees half of one; the same bytes uploaded again reuse the folder.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from clip_icm.errors import InvalidInput
from clip_icm.hashing import digest
from clip_icm.resources import cache_dir

# Unpacked caps: a DomainBed data set is at most DomainNet's ~600k images and ~20 GB; the page's
# uploads are meant for smaller ones (Streamlit's server.maxUploadSize bounds the zip itself).
MAX_FILES = 200_000
MAX_BYTES = 20 * 10**9
_BLOCK = 1 << 20


def uploads_dir() -> Path:
    return cache_dir() / "uploads"


def _folder_for(data: bytes, root: Path | None) -> Path:
    return (root if root is not None else uploads_dir()) / digest(data)[:32]


def save_upload(data: bytes, name: str, root: Path | None = None) -> Path:
    """One uploaded file (a manifest, a pairs file) kept as ``<uploads>/<digest>/<name>``; the name
    is reduced to its last part, letters, digits and ``._-`` (a browser sends what the user's disk called it)."""
    safe = re.sub(r"[^0-9A-Za-z._-]+", "_", PurePosixPath(name.replace("\\", "/")).name).lstrip(".") or "upload"
    folder = _folder_for(data, root)
    path = folder / safe
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, delete=False, prefix=".upload.") as fh:
            fh.write(data)
        os.replace(fh.name, path)
    return path


def unpack_zip(data: bytes, root: Path | None = None, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> Path:
    """The zip in ``data`` unpacked (see the module docstring); returns its folder."""
    target = _folder_for(data, root)
    if target.is_dir():
        return target
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InvalidInput(f"the upload is not a readable zip file: {e}") from None
    with archive:
        members = _checked_members(archive, max_files, max_bytes)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpacking."))
        try:
            _extract(archive, members, staging, max_bytes)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if not target.is_dir():
                raise
    return target


def _checked_members(archive: zipfile.ZipFile, max_files: int, max_bytes: int) -> list[tuple[zipfile.ZipInfo, Path]]:
    """Each file entry with its relative path; every guard that reads headers only."""
    infos = archive.infolist()
    if len(infos) > max_files:
        raise InvalidInput(f"the zip holds {len(infos):,} entries, over the limit of {max_files:,}")
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise InvalidInput(f"the zip would unpack to {declared:,} bytes, over the limit of {max_bytes:,}")
    out = []
    for info in infos:
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise InvalidInput(f"the zip holds a symbolic link ({info.filename!r}); links are refused")
        relative = _safe_relative(info.filename)
        if not info.is_dir():
            out.append((info, relative))
    return out


def _safe_relative(name: str) -> Path:
    """``name`` as a path inside the target folder, or InvalidInput when it would leave it."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\x00" in name:
        raise InvalidInput(f"the zip entry {name!r} would land outside the upload's folder; refused")
    return Path(*[p for p in parts if p != "."])


def _extract(archive: zipfile.ZipFile, members, staging: Path, max_bytes: int) -> None:
    written = 0
    for info, relative in members:
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as source, open(path, "wb") as sink:
            for block in iter(lambda: source.read(_BLOCK), b""):
                written += len(block)
                # zipfile reads no more than an entry's header declares (past that its CRC check fails),
                # so the declared total already bounds this; counting here keeps the bound if that changes
                if written > max_bytes:
                    raise InvalidInput(f"the zip unpacks to more than {max_bytes:,} bytes (more than its headers "
                                       "say); refused")
                sink.write(block)


def data_in(folder: Path) -> Path:
    """Where an unpacked upload's data set is: the one manifest (a table with the columns path,
    label, domain) at its top, or in its one top folder when the zip wrapped everything in one;
    else that top folder or the folder itself, to be scanned as a DomainBed tree."""
    tops = [p for p in sorted(folder.iterdir()) if not p.name.startswith((".", "__MACOSX"))]
    if len(tops) == 1 and tops[0].is_dir():
        return data_in(tops[0])
    manifests = [p for p in tops if _is_manifest_table(p)]
    return manifests[0] if len(manifests) == 1 else folder


def _is_manifest_table(path: Path) -> bool:
    from clip_icm.datasets import MANIFEST_COLUMNS
    from clip_icm.tables import read_table, table_format

    if not path.is_file() or table_format(path) is None:
        return False
    try:
        read_table(path, MANIFEST_COLUMNS)
    except InvalidInput:  # a pairs file, notes: not the data set's list
        return False
    return True
