"""What every part of the service layer shares: its one error type and the guard that turns a
user's mistake into it, and the content key of plain values."""
from __future__ import annotations

from typing import Callable

from clip_icm.errors import UserError
from clip_icm.hashing import digest

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
