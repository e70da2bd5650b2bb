"""What every part of the service layer shares: its one error type and the guard that turns a
user's mistake into it, and the content key of plain values."""
from __future__ import annotations

import os
from typing import Callable, TypeVar

import numpy as np

from clip_icm.errors import InvalidInput, UserError
from clip_icm.hashing import digest

T = TypeVar("T")

# What a user can get wrong (the project's UserError), plus what the machine refuses (a missing or
# unreadable file, a full disk: OSError); anything else is a bug and surfaces as one.
USER_ERRORS = (UserError, OSError)
Progress = Callable[[str, int, int], None]


class ServiceError(UserError):
    """A problem with the user's choices, with a message fit to show in the page."""


def content_key(*parts: object) -> str:
    """A short stable key of printable parts (frozen configs print all their fields)."""
    return digest(repr(parts))[:16]


def guard(what: str, call: Callable, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except USER_ERRORS as e:
        raise ServiceError(f"{what}: {message(e)}") from e


def message(error: BaseException) -> str:
    return str(error) or type(error).__name__


def positive_int_from_env(var: str, default: int, unit: str) -> int:
    """The whole number of ``unit`` (say "jobs") in environment variable ``var``, at least 1, or
    ``default`` when it is unset or blank; anything else is an InvalidInput naming the variable."""
    text = os.environ.get(var, "").strip()
    if not text:
        return default
    try:
        number = int(text)
    except ValueError:
        raise InvalidInput(f"{var} must be a whole number of {unit}, not {text!r}") from None
    if number < 1:
        raise InvalidInput(f"{var} must be at least 1, not {number}")
    return number


KEPT_FORMAT = 3  # raised whenever what a kept result encodes changes, so that an older entry is never decoded


def kept(store, emb, parts: tuple, compute: Callable[[], T], encode: Callable[[T], object],
         decode: Callable[[object], T]) -> T:
    """``compute()``, kept in the on-disk ``store`` (an EmbeddingStore) under the content key of
    the embeddings' (``emb``, an EmbeddingSet) key and ``parts`` (printable values), as JSON in an
    entry's metadata (with the embeddings' origin, for ``cache info``): a restarted server reads it
    back instead of fitting again. No store, or embeddings without a content key: computed every
    time. JSON floats round-trip exactly, so what is read back is what was computed."""
    if not keeps(store, emb):
        return compute()
    key = _kept_key(emb, parts)
    entry = _kept_entry(store, key)
    if entry is not None:
        return decode(entry["value"])
    value = compute()
    # the entry is its metadata
    store.put(key, np.zeros(0), {"kind": "kept results", **emb.origin, "value": encode(value)})
    return value


def keeps(store, emb) -> bool:
    """Whether kept() keeps results of ``emb`` in ``store``: a store, and embeddings with a content key."""
    return store is not None and bool(emb.key)


def is_kept(store, emb, parts: tuple) -> bool:
    """Whether kept() would read ``parts`` of ``emb`` back from ``store`` rather than compute it."""
    return keeps(store, emb) and _kept_entry(store, _kept_key(emb, parts)) is not None


def _kept_entry(store, key: str) -> dict | None:
    """The metadata of the result kept under ``key`` (its ``"value"`` in it), None if ``store`` holds none."""
    entry = store.get_entry(key)
    return entry[1] if entry is not None and "value" in entry[1] else None


def _kept_key(emb, parts: tuple) -> str:
    from clip_icm.store import make_key

    return make_key("result", KEPT_FORMAT, emb.key, repr(parts))
