"""CLIP-ICM Explorer: the Invariant Causal Mechanism of CLIP, as a library."""
from clip_icm.embeddings import EmbeddingSet, PairSet
from clip_icm.registry import Registry

__all__ = ["EmbeddingSet", "PairSet", "Registry"]
