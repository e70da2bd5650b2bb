"""CLIP-ICM Explorer: the Invariant Causal Mechanism of CLIP, as a library."""
from clip_icm.embeddings import EmbeddingSet, PairSet
from clip_icm.projection import (
    METHOD_LABELS,
    METHODS,
    InvariantProjection,
    NullSpaceProjection,
    OrthCaliProjection,
    PCAProjection,
    make_projection,
    stack_pairs,
)
from clip_icm.registry import Registry

__all__ = [
    "EmbeddingSet",
    "PairSet",
    "Registry",
    # projection
    "InvariantProjection",
    "PCAProjection",
    "NullSpaceProjection",
    "OrthCaliProjection",
    "METHODS",
    "METHOD_LABELS",
    "make_projection",
    "stack_pairs",
]
