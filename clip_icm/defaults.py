"""The bundled demo's story, in one place: what `python -m clip_icm evaluate` and the dashboard
open with on the ToyDomains world, so that both front ends tell the same story.

The pairs re-render the factors the demo's recipe makes spurious (colour and scene): knowledge
of which factors shift, never a target label. K and lam are chosen by the interventional rule
(evaluation.SCORINGS) on source data only, over a grid that starts at K = 8: plain PCA at K = 4
already drops the shortcut on this world, so a grid with K = 4 would credit ICM for mere
dimension reduction.
"""
from __future__ import annotations

from clip_icm.toydomains import DEMO_RECIPE

DEMO_TRUE_SWAPS: tuple[str, ...] = DEMO_RECIPE.spurious_factors  # ("colour", "background")
DEMO_PAIR_SETS: tuple[str, ...] = tuple(f"true:{factor}" for factor in DEMO_TRUE_SWAPS)
DEMO_SELECTION = "interventional"
DEMO_BASELINES: tuple[str, ...] = ("pca", "augmentation")
SMALLEST_K = 8


def grid(dim: int, lam_mode: str = "absolute") -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The K x lam grid that selection searches for a D-dim embedding: up to five K from
    max(8, D/16) below D, and five lam around the balance point of the lam scale."""
    Ks = tuple(k for k in (8, 16, 32, 64, 128, 256) if max(SMALLEST_K, dim // 16) <= k < dim)[:5]
    lams = (0.1, 0.3, 1.0, 3.0, 10.0) if lam_mode == "relative" else (1.0, 10.0, 100.0, 1000.0, 10000.0)
    return Ks or (max(1, dim // 2),), lams
