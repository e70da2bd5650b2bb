"""The project's user errors: what a user can get wrong, with a message meant to be shown as is.

Front ends (the CLI, the dashboard's service layer) catch :class:`UserError` and print its
message; any other exception is a bug and surfaces as one. The subclasses also derive from the
built-in type a caller would expect (``ValueError``, ``KeyError``), so ``except ValueError``
keeps working.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or choices."""


class InvalidInput(UserError, ValueError):
    """A value out of range, of the wrong shape, or inconsistent with another."""


class UnknownName(InvalidInput, KeyError):
    """A name that is not one of the valid ones (an op, a bank, a method...); the message lists them."""

    def __init__(self, kind: str, name: object, valid: list[str] | tuple[str, ...]) -> None:
        self.kind, self.name, self.valid = kind, name, tuple(valid)
        super().__init__(f"unknown {kind} {name!r}; available: {', '.join(self.valid) or '(none)'}")

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def check_names(kind: str, names: object, valid: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`UnknownName` for the first of ``names`` not in ``valid``."""
    for name in names:
        if name not in valid:
            raise UnknownName(kind, name, valid)
