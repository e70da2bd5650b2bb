"""The in-memory contract between the backend and the maths.

The backend (images -> vectors) produces an :class:`EmbeddingSet`; projection,
evaluation, reduction and figures consume it. Everything here is plain numpy,
so the core can be tested without any model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class PairSet:
    """Interventional pairs: row i of ``z_do`` is row i of ``z`` with variant factors changed.

    ``kind`` is "image" (x, T(x)), "text" (t, t_do), "cross-modal" (f_I(x), f_T(t_do);
    mixes in CLIP's modality gap) or "true" (a real do-intervention, synthetic worlds only).
    ``domains`` names the domain of each pair's source image so that leave-one-domain-out
    can drop target-domain pairs; it is None for pairs that touch no image (text pairs).
    ``labels`` is the class of each pair's source image (an intervention keeps the class),
    for the augmentation baseline and for scoring intervened validation rows; None where
    unknown (text pairs). ``held_out`` names the target domain an intervened validation set was
    built for (it read the other domains' training rows); None when it serves every target.
    """

    name: str
    kind: str
    z: np.ndarray
    z_do: np.ndarray
    domains: np.ndarray | None = None
    labels: np.ndarray | None = None
    held_out: str | None = None

    def __post_init__(self) -> None:
        if self.z.shape != self.z_do.shape or self.z.ndim != 2:
            raise ValueError(
                f"pair set {self.name!r}: z {self.z.shape} and z_do {self.z_do.shape} "
                "must be 2-D arrays of the same shape"
            )
        for name in ("domains", "labels"):
            column = getattr(self, name)
            if column is not None and len(column) != len(self.z):
                raise ValueError(f"pair set {self.name!r}: {len(column)} {name} for {len(self.z)} pairs")

    def excluding(self, domain: str) -> "PairSet":
        """The pairs whose source image is not from ``domain`` (all of them for text pairs)."""
        if self.domains is None:
            return self
        keep = self.domains != domain
        labels = None if self.labels is None else self.labels[keep]
        return replace(self, z=self.z[keep], z_do=self.z_do[keep], domains=self.domains[keep], labels=labels)


@dataclass(frozen=True)
class EmbeddingSet:
    """Raw (un-normalised) CLIP embeddings of a multi-domain image set, plus text and pairs.

    features:      (n, D) image embeddings
    labels:        (n,) class index into ``class_names``
    domains:       (n,) domain name of each image
    is_train:      (n,) seeded per-domain split; False rows are the validation part
    class_names:   readable class names, as used in prompts
    text_features: (T, C, D) raw text embeddings of T prompt templates for C classes
    pairs:         interventional pair sets available for fitting a projection
    paths:         (n,) image file paths, for thumbnails ("" where there is none)
    key:           content key of everything that produced the vectors (cache keys build on it)
    intervened_val: counterfactual copies of the validation rows (``z`` the rows, ``z_do`` the
                   copies with their variant factors changed, with domains and labels): scored
                   by the "interventional" selection rule, never used to fit anything
    look_prompts:  per held-out domain, (T, C, D) text embeddings of prompts that describe each
                   class by its usual look in the other domains' training rows (ToyDomains)
    """

    features: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    is_train: np.ndarray
    class_names: list[str]
    text_features: np.ndarray
    pairs: list[PairSet] = field(default_factory=list)
    paths: np.ndarray | None = None
    key: str = ""
    intervened_val: list[PairSet] = field(default_factory=list)
    look_prompts: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, dim = self.features.shape
        for name in ("labels", "domains", "is_train"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, features has {n}")
        if self.text_features.ndim != 3 or self.text_features.shape[1:] != (len(self.class_names), dim):
            raise ValueError(
                f"text_features must be (templates, {len(self.class_names)}, {dim}), "
                f"got {self.text_features.shape}"
            )

    @property
    def domain_names(self) -> list[str]:
        """Domains in order of first appearance."""
        return list(dict.fromkeys(self.domains.tolist()))

    def pair_set(self, name: str) -> PairSet:
        for pairs in self.pairs:
            if pairs.name == name:
                return pairs
        raise KeyError(f"no pair set {name!r}; available: {', '.join(p.name for p in self.pairs) or '(none)'}")
