"""A user's own interventional pairs, from files: caption pairs and image pairs.

- Caption pairs (CSV or JSONL; columns ``caption``, ``caption_do`` and optionally ``class``): each
  row one text pair (t, t_do), such as a caption and its rewrite by a language model ("a photo of
  a dog on grass" -> "a photo of a dog on snow"). The pair set is ``captions:<file stem>``, of
  kind "text", fitted beside the template banks' pairs.
- Image pairs (CSV, JSONL or Parquet; columns ``path``, ``path_do``, relative to the data set's
  folder): each row a real interventional pair (the same animal seen by two cameras, a slide and
  its rescan, a photo and its retouched copy). The pair set is ``image-pairs:<file stem>``, of
  kind "image"; the pipeline (``pipeline._user_image_pairs``) places each pair in the data set.

A bad file is one InvalidInput line (:mod:`clip_icm.tables`); a bad row is skipped and reported
as (``file:line``, reason), like a file the folder scan skips; a file with no usable row at all is
an error. The file's digest goes into every key built from it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from clip_icm.errors import InvalidInput
from clip_icm.interventions import words_of
from clip_icm.tables import Table, read_table

CAPTION_COLUMNS = ("caption", "caption_do")
OWN_PREFIXES = ("image-pairs:", "captions:")  # how a pair set from a user's file is named
IMAGE_PAIR_COLUMNS = ("path", "path_do")


def pair_set_name(prefix: str, path: str | os.PathLike) -> str:
    """``<prefix>:<file stem>``, the stem's characters other than letters, digits, ``_.-`` as ``_``
    (a comma would split ``--pair-sets``)."""
    return f"{prefix}:{re.sub(r'[^0-9A-Za-z_.-]+', '_', Path(path).stem)}"


@dataclass(frozen=True)
class CaptionPairs:
    """The usable rows of a caption pairs file.

    classes: the ``class`` cell of each pair (None when the file has no class column)
    skipped: (file:line, reason) of every row left out
    notes:   rows kept but worth a look: a pair that names its class in one caption only
    """

    name: str
    digest: str
    texts: tuple[str, ...]
    texts_do: tuple[str, ...]
    classes: tuple[str, ...] | None
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImagePairs:
    """The usable rows of an image pairs file: paths as written (relative to the data set's folder),
    ``where`` (file:line) of each for reports; ``skipped`` as in :class:`CaptionPairs`."""

    name: str
    digest: str
    paths: tuple[str, ...]
    paths_do: tuple[str, ...]
    where: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()


def _usable_rows(table: Table, columns: tuple[str, str], same: str, what: str) -> tuple[list[int], list]:
    """Indices of the rows with both cells filled, different, and not repeating an earlier row;
    the others as (file:line, reason)."""
    keep, skipped, first = [], [], {}
    for i, row in enumerate(table.rows):
        pair = (row[columns[0]], row[columns[1]], row.get("class", ""))
        if not pair[0] or not pair[1]:
            skipped.append((table.where(i), f"empty cell: {columns[0] if not pair[0] else columns[1]} is empty"))
        elif pair[0] == pair[1]:
            skipped.append((table.where(i), f"not a pair: {same}"))
        elif pair in first:
            skipped.append((table.where(i), f"duplicate row: the same as line {table.lines[first[pair]]}"))
        else:
            first[pair] = i
            keep.append(i)
    if not keep:
        raise InvalidInput(f"{what} file {str(table.path)!r} has no usable row ({len(skipped)} skipped, e.g. "
                           f"{skipped[0][0]}: {skipped[0][1]})")
    return keep, skipped


def read_caption_pairs(path: str | os.PathLike) -> CaptionPairs:
    """The caption pairs in the file at ``path`` (see the module docstring)."""
    table = read_table(path, CAPTION_COLUMNS, ("class",), what="caption pairs")
    keep, skipped = _usable_rows(table, CAPTION_COLUMNS, "caption and caption_do are the same", "caption pairs")
    rows = [table.rows[i] for i in keep]
    with_classes = "class" in table.columns
    if with_classes:
        for i in [i for i in keep if not table.rows[i]["class"]]:
            skipped.append((table.where(i), "empty cell: class is empty"))
        keep = [i for i in keep if table.rows[i]["class"]]
        rows = [table.rows[i] for i in keep]
        if not rows:
            raise InvalidInput(f"caption pairs file {str(table.path)!r} has no row with a class")
    notes = [f"{table.where(i)}: the class {row['class']!r} is named in one caption only (a pair should change "
             "what varies, never the class)" for i, row in zip(keep, rows)
             if with_classes and names_class(row["caption"], row["class"]) != names_class(row["caption_do"],
                                                                                           row["class"])]
    return CaptionPairs(pair_set_name("captions", table.path), table.digest, tuple(r["caption"] for r in rows),
                        tuple(r["caption_do"] for r in rows),
                        tuple(r["class"] for r in rows) if with_classes else None, tuple(skipped), tuple(notes))


def names_class(caption: str, class_name: str) -> bool:
    """True when the words of ``class_name`` ("guitar_case" -> guitar, case) appear in ``caption`` in order."""
    words, wanted = words_of(caption), words_of(class_name)
    return any(words[i:i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1)) if wanted else False


def read_image_pairs(path: str | os.PathLike) -> ImagePairs:
    """The image pairs in the file at ``path`` (see the module docstring); the files they name
    are checked where the data set's folder is known (``pipeline._user_image_pairs``)."""
    table = read_table(path, IMAGE_PAIR_COLUMNS, what="image pairs")
    keep, skipped = _usable_rows(table, IMAGE_PAIR_COLUMNS, "path and path_do are the same file", "image pairs")
    return ImagePairs(pair_set_name("image-pairs", table.path), table.digest,
                      tuple(table.rows[i]["path"] for i in keep), tuple(table.rows[i]["path_do"] for i in keep),
                      tuple(table.where(i) for i in keep), tuple(skipped))
