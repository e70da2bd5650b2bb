"""Explicit seeds everywhere; sub-seeds derived from names (DomainBed's ``seed_hash``)."""
from __future__ import annotations

import numpy as np

from clip_icm.hashing import digest


def seed_hash(*parts: object) -> int:
    """A stable 31-bit seed from printable parts (unlike ``hash``, same in every process).

    Parts are hashed through ``repr``: pass plain str/int/float, not numpy scalars
    (``np.str_("a")`` and ``"a"`` give different seeds) and never arrays (their repr elides).
    """
    return int(digest(repr(parts))[:8], 16) & 0x7FFFFFFF


def rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(seed_hash(*parts))
