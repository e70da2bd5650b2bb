"""A tiny name -> object registry (Dassl's Registry, DomainBed's REGISTRY).

Interventions, datasets, projection methods and models are registries: adding
one is adding an entry, and ``get`` with a wrong name lists the valid ones.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from clip_icm.errors import UnknownName, check_names

T = TypeVar("T")


class Registry(Generic[T]):
    """Plain dict of named entries with ``register`` / ``get`` / ``available``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; without ``obj`` acts as a decorator."""
        if obj is None:
            return lambda o: self.register(name, o)
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.kind, name, self.available()) from None

    def available(self) -> list[str]:
        return sorted(self._entries)

    def check(self, names: object) -> None:
        """UnknownName (listing the valid names) for the first name not registered."""
        check_names(self.kind, names, self.available())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.available())
