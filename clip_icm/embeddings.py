"""The in-memory contract between the backend and the maths.

The backend (images -> vectors) produces an :class:`EmbeddingSet`; projection,
evaluation, reduction and figures consume it. Everything here is plain numpy,
so the core can be tested without any model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from clip_icm.errors import InvalidInput


def unit_rows(X: np.ndarray) -> np.ndarray:
    """``X`` with each row (the last axis) scaled to unit L2 norm, in ``X``'s dtype; an all-zero
    row (an image that failed to decode) stays zero instead of becoming NaN."""
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class PairSet:
    """Interventional pairs: row i of ``z_do`` is row i of ``z`` with variant factors changed.

    ``kind`` is "image" (x, T(x)), "text" (t, t_do), "cross-modal" (f_I(x), f_T(t_do);
    mixes in CLIP's modality gap) or "true" (a real do-intervention, synthetic worlds only).
    ``domains`` names the domain of each pair's source image so that leave-one-domain-out
    can drop target-domain pairs; it is None for pairs that touch no image (text pairs).
    ``labels`` is the class of each pair (of its source image; an intervention keeps the
    class; of both prompts for text pairs), for the augmentation baseline, for scoring
    intervened validation rows and to keep the open-class task's new classes out of every
    fit; None where unknown. ``held_out`` names the target domain an intervened validation set
    was built for (it read the other domains' training rows); None when it serves every target.
    ``variant_words`` (optional, text pairs) holds the words of each pair's variant prompt that
    its anchor lacks ("sketch", "sandy beach"), so that leave-one-domain-out can drop the
    prompts that name the held-out domain. ``domains_do`` (optional) names the domain of each
    pair's intervened image where it can differ from its source's (a user's image pairs that join
    two images of the data set, the same animal seen by two cameras); leave-one-domain-out then
    drops a pair when either image is from the held-out domain.
    """

    name: str
    kind: str
    z: np.ndarray
    z_do: np.ndarray
    domains: np.ndarray | None = None
    labels: np.ndarray | None = None
    held_out: str | None = None
    variant_words: np.ndarray | None = None
    domains_do: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.z.shape != self.z_do.shape or self.z.ndim != 2:
            raise InvalidInput(
                f"pair set {self.name!r}: z {self.z.shape} and z_do {self.z_do.shape} "
                "must be 2-D arrays of the same shape"
            )
        for name in ("domains", "labels", "variant_words", "domains_do"):
            column = getattr(self, name)
            if column is not None and len(column) != len(self.z):
                raise InvalidInput(f"pair set {self.name!r}: {len(column)} {name} for {len(self.z)} pairs")

    def excluding(self, domain: str) -> "PairSet":
        """The pairs whose source image (and intervened image, where ``domains_do`` says) is not
        from ``domain`` (all of them for text pairs)."""
        if self.domains is None:
            return self
        keep = self.domains != domain
        return self.subset(keep if self.domains_do is None else keep & (self.domains_do != domain))

    def subset(self, keep: np.ndarray) -> "PairSet":
        """The pairs where the boolean mask ``keep`` is True (every per-pair column follows)."""
        def take(column):
            return None if column is None else column[keep]

        return replace(self, z=self.z[keep], z_do=self.z_do[keep], domains=take(self.domains),
                       labels=take(self.labels), variant_words=take(self.variant_words),
                       domains_do=take(self.domains_do))

    def for_classes(self, classes: np.ndarray) -> "PairSet":
        """The pairs whose class is in ``classes``; a set without class labels cannot say, so it raises."""
        if self.labels is None:
            raise InvalidInput(f"pair set {self.name!r} has no class labels, so it cannot be restricted to classes")
        return self.subset(np.isin(self.labels, classes))


@dataclass(frozen=True)
class PromptSet:
    """Prompts and their raw embeddings, for Orth-Cali: class-free ones ("a sketch of a thing.", its
    spurious prompts) or each class under each bank template (``labels`` the class index, ``groups``
    the bank: :func:`clip_icm.interventions.attribute_prompts`); ``variant_words`` as in
    :class:`PairSet`, one entry per prompt ("" for a bank's anchor, the zero-shot query)."""

    texts: np.ndarray
    z: np.ndarray
    variant_words: np.ndarray
    labels: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.z.ndim != 2 or not len(self.texts) == len(self.z) == len(self.variant_words):
            raise InvalidInput(f"prompt set: {len(self.texts)} texts, {len(self.variant_words)} variant words and "
                               f"embeddings of shape {self.z.shape} must agree")
        for name in ("labels", "groups"):
            column = getattr(self, name)
            if column is not None and len(column) != len(self.z):
                raise InvalidInput(f"prompt set: {len(column)} {name} for {len(self.z)} prompts")

    def subset(self, keep: np.ndarray) -> "PromptSet":
        return PromptSet(self.texts[keep], self.z[keep], self.variant_words[keep],
                         None if self.labels is None else self.labels[keep],
                         None if self.groups is None else self.groups[keep])


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
    templates:     the T prompt templates of ``text_features`` (None when unknown)
    spurious:      class-free prompts of the text banks (Orth-Cali's spurious prompts), or None
    attribute_prompts: each class under each template of the text banks (Orth-Cali's positive pairs
                   and the class-free directions are built from them), or None
    released_class_text: (1, C, D) raw embeddings of "a photo of a {}." with the class folder names as
                   the released code writes them (only ``_`` replaced), where they differ from
                   ``class_names``; None when the prompts are the same (the released preset then reads
                   ``text_features``)
    origin:        what the on-disk cache calls these embeddings ({"dataset", "folder", "model"}): the
                   layouts and results kept for them say so in their metadata (``cache info``)
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
    templates: tuple[str, ...] | None = None
    spurious: PromptSet | None = None
    attribute_prompts: PromptSet | None = None
    released_class_text: np.ndarray | None = None
    origin: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, dim = self.features.shape
        for name in ("labels", "domains", "is_train"):
            if len(getattr(self, name)) != n:
                raise InvalidInput(f"{name} has {len(getattr(self, name))} rows, features has {n}")
        if self.text_features.ndim != 3 or self.text_features.shape[1:] != (len(self.class_names), dim):
            raise InvalidInput(
                f"text_features must be (templates, {len(self.class_names)}, {dim}), "
                f"got {self.text_features.shape}"
            )
        if self.templates is not None and len(self.templates) != len(self.text_features):
            raise InvalidInput(f"{len(self.templates)} templates for {len(self.text_features)} rows of text_features")

    @property
    def domain_names(self) -> list[str]:
        """Domains in order of first appearance."""
        return list(dict.fromkeys(self.domains.tolist()))

    def pair_set(self, name: str) -> PairSet:
        for pairs in self.pairs:
            if pairs.name == name:
                return pairs
        raise KeyError(f"no pair set {name!r}; available: {', '.join(p.name for p in self.pairs) or '(none)'}")
