"""Evaluation on embeddings: zero-shot, linear probe, leave-one-domain-out, honest K/lam choice.

Pure functions over an :class:`EmbeddingSet`; results are tidy pandas rows
(target, domain, role, method, protocol, accuracy, n; evaluate_split adds K, lam, lam_mode).

Protocol (DomainBed's leave-one-domain-out, training-domain validation):
- projections are fitted on pairs whose source image is not from the target;
- the linear probe is trained on the source domains' train rows, its C chosen on
  the source domains' validation rows;
- target rows score the WHOLE target domain (DomainBed convention; the released
  code scores the target's 20% holdout instead, as ``EvalConfig(protocol="released")``
  does: see clip_icm/protocols.py); source rows score that source domain's validation rows.
- text prompts that name the target domain are dropped from every fit unless
  ``keep_target_styles``; the open-class task fits on base classes only.
Nothing that chooses K, lam or C ever reads a target label: selection works on a
copy of the EmbeddingSet from which the target domain has been removed.
"""
from __future__ import annotations

import numbers
import warnings
import weakref
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from clip_icm import defaults, methods, protocols
from clip_icm.embeddings import EmbeddingSet, unit_rows
from clip_icm.errors import InvalidInput, check_names
from clip_icm.interventions import DEFAULT_TEMPLATE, names_domain
from clip_icm.methods import ALL_METHODS
from clip_icm.projection import (LAM_MODES, LinearProjection, OrthCaliProjection, PairMoments, ReleasedMoments,
                                 as_matrix, stack_pairs)
from clip_icm.seeding import rng, seed_hash

FULL_SPACE = methods.FULL_SPACE.name  # the method column's name for CLIP's full space
ZERO_SHOT, LINEAR_PROBE = "zero-shot", "linear probe"
# Zero-shot prompt sets: the class names in the template set the embeddings were built with,
# or each class described by its usual look in the source training rows (EmbeddingSet.look_prompts).
PROMPT_SETS = {"classes": "class names", "usual_look": "each class by its usual source look"}
ORTH_CALI_QUERIES = ("one", "ensemble")
# Above this share of the class prompts' between-class energy, Orth-Cali's P0 is said to remove
# most of what tells the classes apart (the CLI and the Diagnostics page warn).
SPURIOUS_SPAN_WARNING = 0.5


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation setting. ``pair_sets=None`` uses every pair set of the EmbeddingSet;
    ``pair_weights`` maps pair-set names to weights (see :func:`stack_pairs`).

    ``protocol``: a name in :data:`clip_icm.protocols.PROTOCOLS` ("ours" or "released").
    ``orth_cali_lam``: Orth-Cali's own lam (1000 as published; it never uses ICM's lam).
    ``orth_cali_queries``: Orth-Cali's zero-shot query, "one" prompt per class ("a photo of a {}.",
    as debias_vl queries one prompt per class) or the "ensemble" of the embedded templates.
    ``keep_target_styles``: in leave-one-domain-out, text prompts whose variant words name the
    held-out domain ("a sketch of a {}." when the target is "sketch") are dropped from every
    fit by default, since they are prior knowledge of the target's shift; True keeps them."""


    n_components: int = defaults.MAX_K
    lam: float = defaults.LAM
    lam_mode: str = defaults.LAM_MODE
    methods: tuple[str, ...] = ALL_METHODS
    pair_sets: tuple[str, ...] | None = None
    pair_weights: tuple[tuple[str, float], ...] | dict[str, float] | None = None
    probe_Cs: tuple[float, ...] = (0.01, 0.1, 1.0)
    prompts: str = "classes"
    seed: int = 0
    protocol: str = "ours"
    orth_cali_lam: float = defaults.ORTH_CALI_LAM
    keep_target_styles: bool = False
    orth_cali_queries: str = "one"

    def __post_init__(self) -> None:
        """Every name and range checked here, so a wrong setting fails before anything is fitted."""
        methods.METHODS.check(self.methods)
        protocols.PROTOCOLS.check((self.protocol,))
        check_names("zero-shot prompt set", (self.prompts,), tuple(PROMPT_SETS))
        check_names("lam scale", (self.lam_mode,), LAM_MODES)
        check_names("Orth-Cali query", (self.orth_cali_queries,), ORTH_CALI_QUERIES)
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInput(f"n_components (K) must be an integer of at least 1, got {k!r}")
        if not all(_is_finite_number(v) for v in (self.lam, self.orth_cali_lam)):
            raise InvalidInput(f"lam must be a finite number, got lam={self.lam!r}, orth_cali_lam={self.orth_cali_lam!r}")


def _is_finite_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and bool(np.isfinite(value))


def zero_shot_classifier(text_features: np.ndarray, projection: object = None, renormalise: bool = True) -> np.ndarray:
    """(C, d) class weights from (T, C, D) raw prompt embeddings (open_clip's convention).

    Each template's class embedding is L2-normalised, projected (if given), averaged
    over templates and re-normalised. ``renormalise=False`` skips the last step, as
    the released code does.
    """
    text = np.asarray(text_features, dtype=np.float64)
    if text.ndim != 3:
        raise InvalidInput(f"text_features must be (templates, classes, D), got shape {text.shape}")
    if not np.isfinite(text).all():
        raise InvalidInput("text_features contains NaN or inf values")
    T, C, D = text.shape
    flat = unit_rows(text.reshape(T * C, D))
    if projection is not None:
        flat = projection.transform(flat)
    weights = flat.reshape(T, C, -1).mean(axis=0)
    return unit_rows(weights) if renormalise else weights


def zero_shot_predict(
    features: np.ndarray, text_features: np.ndarray, projection: object = None, renormalise: bool = True
) -> np.ndarray:
    """Class index per row: cosine between projected, L2-normalised images and class weights."""
    X = _features_for(features, text_features)
    if projection is not None:
        X = projection.transform(X)
    return np.argmax(unit_rows(X) @ zero_shot_classifier(text_features, projection, renormalise).T, axis=1)


def zero_shot_predict_text_only(features: np.ndarray, text_features: np.ndarray, projection: object) -> np.ndarray:
    """Zero-shot for a text-only method (Orth-Cali): class text calibrated by ``projection`` and
    re-normalised, image features untouched."""
    weights = zero_shot_classifier(text_features, projection)
    return np.argmax(unit_rows(_features_for(features, text_features)) @ weights.T, axis=1)


def _features_for(features: object, text_features: object) -> np.ndarray:
    """Image rows checked against the prompts: finite (an argmax over NaN says class 0, silently)
    and of the prompts' dimension."""
    X = as_matrix(features, "features")
    dim = np.shape(text_features)[-1]
    if X.shape[1] != dim:
        raise InvalidInput(f"features have {X.shape[1]} dimensions, text_features {dim}")
    return X


def fit_linear_probe(
    train_X: np.ndarray,
    train_y: np.ndarray,
    val_X: np.ndarray,
    val_y: np.ndarray,
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0),
    seed: int = 0,
) -> Pipeline:
    """Standardise + multinomial logistic regression; C chosen on the given validation rows.

    Returns the fitted pipeline (``predict`` / ``score`` as a LogisticRegression; the
    classifier itself is ``[-1]``). C is tried from strong to weak regularisation with
    warm starts, which keeps this fast enough for the dashboard; the model trained on
    ``train_X`` with the best C is kept (no refit needed). Ties keep the smaller C.
    """
    if not Cs:
        raise InvalidInput("Cs must name at least one C")
    train_X, val_X = as_matrix(train_X, "train_X"), as_matrix(val_X, "val_X")
    for X, y, name in ((train_X, train_y, "train"), (val_X, val_y, "val")):
        if len(X) != len(y):
            raise InvalidInput(f"{name}_X has {len(X)} rows and {name}_y {len(y)} labels")
    if len(val_X) and val_X.shape[1] != train_X.shape[1]:
        raise InvalidInput(f"val_X has {val_X.shape[1]} dimensions, train_X {train_X.shape[1]}")
    if len(np.unique(train_y)) < 2:
        raise InvalidInput("the linear probe needs at least 2 classes in its training rows")
    scaler = StandardScaler().fit(train_X)
    Xt, Xv = scaler.transform(train_X), scaler.transform(val_X)
    clf = LogisticRegression(solver="newton-cg", max_iter=100, tol=1e-3, warm_start=True, random_state=seed)
    best = (-1.0, None)
    for C in sorted(Cs):
        clf.set_params(C=C).fit(Xt, train_y)
        score = clf.score(Xv, val_y) if len(val_y) else 0.0
        if score > best[0]:
            best = (score, (clf.coef_.copy(), clf.intercept_.copy(), C))
    coef, intercept, C = best[1]
    clf.set_params(C=C, warm_start=False)
    clf.coef_, clf.intercept_ = coef, intercept
    return Pipeline([("standardscaler", scaler), ("logisticregression", clf)])


def _source_mask(emb: EmbeddingSet, target: str | None) -> np.ndarray:
    return np.ones(len(emb.labels), bool) if target is None else emb.domains != target


def _check_target(emb: EmbeddingSet, target: str | None) -> None:
    if target is not None and target not in emb.domain_names:
        raise InvalidInput(f"unknown target domain {target!r}; domains: {', '.join(emb.domain_names)}")


def _pair_sets(emb: EmbeddingSet, target: str | None, config: EvalConfig) -> list:
    """The configured pair sets without the pairs whose image is from ``target`` (and, unless
    ``keep_target_styles``, without the prompts that name ``target``)."""
    names = config.pair_sets if config.pair_sets is not None else [p.name for p in emb.pairs]
    pair_sets = [emb.pair_set(name) for name in names]
    if target is None:
        return pair_sets
    pair_sets = [p.excluding(target) for p in pair_sets]
    return pair_sets if config.keep_target_styles else [_without_styles(p, target) for p in pair_sets]


def _without_styles(pairs, target: str):
    """The pairs (or prompts) whose variant words do not name ``target``."""
    if pairs is None or pairs.variant_words is None:
        return pairs
    return pairs.subset(np.array([not names_domain(w, target) for w in pairs.variant_words], dtype=bool))




class _Memo:
    """What a K or lam change does not change, kept per EmbeddingSet *object* (its arrays are
    read-only by contract) and dropped with it: the pair moments of each (target, pair sets)
    and the full-space rows of each (target, evaluation setting). A refit then costs one
    eigendecomposition (or a slice of a kept one) and the probe in K dimensions. Also the latest
    predictions of each (target, method) (:func:`_predicted_rows`) and the pairs of the invariance
    ratios (:func:`ratio_pairs`)."""

    _by_object: dict[int, tuple[weakref.ref, dict]] = {}

    @classmethod
    def of(cls, emb: EmbeddingSet) -> dict:
        key = id(emb)
        entry = cls._by_object.get(key)
        if entry is None or entry[0]() is not emb:
            entry = (weakref.ref(emb, lambda _, key=key: cls._by_object.pop(key, None)), {})
            cls._by_object[key] = entry
        return entry[1]

    @classmethod
    def clear(cls) -> None:
        cls._by_object.clear()


def ratio_pairs(emb: EmbeddingSet, target: str, pair_sets: tuple[str, ...] | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(Z, Z_do, which) the pairs a fit's invariance ratio is measured on: the ``target`` domain's image pairs
    of ``pair_sets`` (None: every set), or, where there are none, every pair of them; kept per EmbeddingSet,
    read-only: at 50,000 images selecting and copying them took most of a K change's fit (bench/RESULTS.md)."""
    memo, key = _Memo.of(emb), ("ratio pairs", target, pair_sets)
    if key not in memo:
        names = pair_sets if pair_sets is not None else [p.name for p in emb.pairs]
        sets = [emb.pair_set(n) for n in names]
        held = [(p.z[p.domains == target], p.z_do[p.domains == target]) for p in sets if p.domains is not None]
        held = [h for h in held if len(h[0])]
        if held:
            Z, Z_do, which = (np.concatenate([h[0] for h in held]), np.concatenate([h[1] for h in held]),
                              "held-out target-domain pairs")
        else:
            Z, Z_do, which = (np.concatenate([p.z for p in sets]), np.concatenate([p.z_do for p in sets]),
                              "training pairs (no held-out pairs)")
        Z.flags.writeable = Z_do.flags.writeable = False
        memo[key] = (Z, Z_do, which)
    return memo[key]


def _moments(emb: EmbeddingSet, target: str | None, config: EvalConfig) -> PairMoments:
    weights = dict(config.pair_weights or {})
    released = _released_arithmetic(config)
    key = ("moments", target, config.pair_sets, tuple(sorted(weights.items())), config.keep_target_styles, released)
    memo = _Memo.of(emb)
    if key not in memo:
        stack = stack_pairs(_pair_sets(emb, target, config), weights)
        memo[key] = ReleasedMoments(*stack) if released else PairMoments.of(*stack)
    return memo[key]


def _released_arithmetic(config: EvalConfig) -> bool:
    """Does the protocol compute as the released code does (fp32 torch, step for step)?"""
    return protocols.PROTOCOLS.get(config.protocol).arithmetic == "fp32"


def fit_projection(
    emb: EmbeddingSet, target: str | None, method: str, config: EvalConfig = EvalConfig()
) -> LinearProjection:
    """The projection of ``method`` fitted on pairs whose image is not from ``target``
    (None = all pairs). Used by evaluation and by the dashboard (spectrum, UMAP)."""
    _check_target(emb, target)
    emb, config = apply_protocol(emb, config)
    if methods.spec(method).text_only:
        return _fit_orth_cali(emb, target, config, method)
    return methods.spec(method).build(config.n_components, config.lam, config.lam_mode).fit_moments(
        _moments(emb, target, config))


def _fit_orth_cali(emb: EmbeddingSet, target: str | None, config: EvalConfig, method: str) -> OrthCaliProjection:
    """Orth-Cali as debias_vl builds it, from the text banks, at its own lam: positive pairs = every
    same-class pair of a bank's attribute-bearing prompts (its variants; never the anchor, the
    zero-shot query); spurious prompts = the banks' class-free prompts with every attribute value,
    or (the method's ``spurious`` = "class_free") the class-averaged variant-minus-anchor
    directions. Embeddings without attribute prompts (older sets, the synthetic world) pair the
    text pair sets' anchor and variant prompts instead."""
    Z, Z_do = _orth_cali_pairs(emb, target, config)
    prompts = _target_free(emb.attribute_prompts, target, config)
    if methods.spec(method).spurious == "class_free":
        if prompts is None:
            raise InvalidInput(f"{methods.spec(method).label} is built from prompts of each class under each bank "
                               "template: embed with text banks (these embeddings have none)")
        spurious = class_free_directions(prompts)
    else:
        spurious = _target_free(emb.spurious, target, config)
        spurious = None if spurious is None else spurious.z
    return OrthCaliProjection(config.orth_cali_lam).fit(Z, Z_do, spurious)


def _target_free(prompts, target: str | None, config: EvalConfig):
    """``prompts`` without those that name ``target`` (unless ``keep_target_styles``)."""
    if prompts is None or target is None or config.keep_target_styles:
        return prompts
    return _without_styles(prompts, target)


def _orth_cali_pairs(emb: EmbeddingSet, target: str | None, config: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Orth-Cali's positive pairs (Z, Z_do): debias_vl's S, every same-class pair (i < j) among the
    attribute-bearing prompts of one bank; without attribute prompts, the text pair sets' pairs."""
    dim = emb.features.shape[1]
    prompts = _target_free(emb.attribute_prompts, target, config)
    if prompts is None:
        text = _pair_sets(emb, target, replace(config, pair_sets=tuple(p.name for p in emb.pairs if p.kind == "text")))
        if not text:
            return np.zeros((0, dim)), np.zeros((0, dim))
        return np.concatenate([p.z for p in text]), np.concatenate([p.z_do for p in text])
    firsts, seconds = [], []
    for indices in _attribute_groups(prompts).values():
        i, j = np.triu_indices(len(indices), k=1)
        firsts.append(indices[i])
        seconds.append(indices[j])
    first = np.concatenate(firsts or [np.zeros(0, np.int64)])
    second = np.concatenate(seconds or [np.zeros(0, np.int64)])
    return prompts.z[first], prompts.z[second]


def _attribute_groups(prompts) -> dict[tuple, np.ndarray]:
    """Row indices of the attribute-bearing prompts (not the anchor) per (bank, class), in order."""
    groups: dict[tuple, list[int]] = {}
    for i, (group, label, words) in enumerate(zip(prompts.groups, prompts.labels, prompts.variant_words)):
        if words:
            groups.setdefault((group, int(label)), []).append(i)
    return {key: np.array(rows, dtype=np.int64) for key, rows in groups.items()}


def class_free_directions(prompts) -> np.ndarray:
    """Spurious directions with no class in them: per bank template, the mean over classes of
    unit(variant prompt) - unit(anchor prompt) of the same class ((templates, D)). A class-free
    prompt ("a sketch of a thing.") can still carry class content where the text encoder never saw
    a caption without a class; a class-averaged difference of two prompts of the same class cannot
    carry more than the classes share."""
    z = unit_rows(np.asarray(prompts.z, dtype=np.float64))
    anchors = {(g, int(c)): i for i, (g, c, w) in enumerate(zip(prompts.groups, prompts.labels, prompts.variant_words))
               if not w}
    differences: dict[tuple, list[np.ndarray]] = {}
    for i, (group, label, words) in enumerate(zip(prompts.groups, prompts.labels, prompts.variant_words)):
        anchor = anchors.get((group, int(label)))
        if words and anchor is not None:
            differences.setdefault((group, words), []).append(z[i] - z[anchor])
    if not differences:
        raise InvalidInput("no variant prompt has its anchor prompt: the class-free directions need both")
    return np.array([np.mean(rows, axis=0) for rows in differences.values()])


def apply_protocol(emb: EmbeddingSet, config: EvalConfig) -> tuple[EmbeddingSet, EvalConfig]:
    """The EmbeddingSet and config as the protocol sees them: its pair kinds, its one prompt
    template, its lam scale. Idempotent, and the identity for "ours"."""
    spec = protocols.PROTOCOLS.get(config.protocol)
    if spec.lam_mode is not None:
        config = replace(config, lam_mode=spec.lam_mode)
    if spec.pair_kinds is not None:
        # Through pair_sets, not by dropping sets: Orth-Cali still reads the text banks it is built from.
        names = [p.name for p in emb.pairs if p.kind in spec.pair_kinds]
        if not names:
            raise InvalidInput(f"the {spec.label} protocol fits on {'/'.join(spec.pair_kinds)} pairs; "
                               f"this data has none (pair sets: {', '.join(p.name for p in emb.pairs) or 'none'})")
        # The protocol fixes the kind of pairs: the chosen sets of that kind, or all of them when
        # none of the chosen sets is one (the demo's default true swaps, say).
        chosen = [n for n in config.pair_sets or () if n in names] or names
        config = replace(config, pair_sets=tuple(chosen))
    if spec.template is not None and config.prompts != "classes":
        raise InvalidInput(f"the {spec.label} protocol scores zero-shot with the prompt {spec.template!r}; "
                           f"prompts={config.prompts!r} cannot be used with it")
    if spec.template is not None and emb.templates != (spec.template,):
        if emb.templates is None or spec.template not in emb.templates:
            raise InvalidInput(f"the {spec.label} protocol scores zero-shot with the prompt {spec.template!r}; "
                               f"these embeddings have {list(emb.templates or [])} (embed with templates 'single' "
                               "or 'ensemble')")
        row = emb.templates.index(spec.template)
        emb = replace(emb, text_features=emb.text_features[row:row + 1], templates=(spec.template,))
    if spec.template is not None and emb.released_class_text is not None:
        # The released prompt writes the folder names with only "_" replaced (ours also lower-case them).
        emb = replace(emb, text_features=emb.released_class_text, released_class_text=None)
    return emb, config


def with_prompts(emb: EmbeddingSet, target: str | None, prompts: str) -> EmbeddingSet:
    """``emb`` whose class text embeddings are the prompt set ``prompts`` for held-out ``target``."""
    if prompts == "classes":
        return emb
    if target not in emb.look_prompts:
        raise InvalidInput(f"prompts={prompts!r} needs the usual-look prompts for target {target!r} "
                           "(ToyDomains data embedded with InterventionConfig(look_prompts=True))")
    return replace(emb, text_features=emb.look_prompts[target], templates=None)  # described, not templated


def _rows_by_domain(emb: EmbeddingSet, target: str) -> dict[str, np.ndarray]:
    """Scored rows per domain: the whole target domain; validation rows of each source."""
    return {
        d: (emb.domains == d) if d == target else (emb.domains == d) & ~emb.is_train for d in emb.domain_names
    }


def _augmented_rows(emb: EmbeddingSet, target: str | None, method: str, config: EvalConfig
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The intervened images of the configured image and true-swap pair sets, each with its
    source image's class, none from ``target``: what an augmented probe also trains on."""
    images = [p for p in _pair_sets(emb, target, config) if p.kind in ("image", "true") and p.labels is not None]
    if not images:
        raise InvalidInput(f"{methods.spec(method).label} trains on intervened images: choose at least one "
                           "image or true-swap pair set")
    return np.concatenate([p.z_do for p in images]), np.concatenate([p.labels for p in images])


class _Predictor:
    """One method's fitted predictors (zero-shot weights and linear probe) over its projection.
    ``projected`` holds the EmbeddingSet's own rows, projected once for both protocols."""

    def __init__(self, projection, probe, weights: np.ndarray, projected: np.ndarray, released: bool = False) -> None:
        self.projection, self.probe, self.weights, self.projected = projection, probe, weights, projected
        self.released = released  # the released arithmetic: fp32 projections, softmax(100 * dot)

    def project(self, X: np.ndarray) -> np.ndarray:
        if self.released:
            return protocols.released_project(X, None if self.projection is None else self.projection.components_)
        return X if self.projection is None else self.projection.transform(X)

    def predict(self, projected: np.ndarray, protocol: str) -> np.ndarray | None:
        """Class indices; None for the probe of a text-only method (it has none)."""
        if protocol == ZERO_SHOT and self.released:
            return protocols.released_zero_shot(projected, self.weights)
        if protocol == ZERO_SHOT:
            return np.argmax(unit_rows(np.asarray(projected, dtype=np.float64)) @ self.weights.T, axis=1)
        return None if self.probe is None else self.probe.predict(projected)

    def class_scores(self, projected: np.ndarray, protocol: str) -> np.ndarray:
        """(N, C) how strongly each row points to each class, whose argmax :meth:`predict` returns:
        cosine (the released arithmetic: dot product) for zero-shot, the probe's probabilities."""
        if protocol == ZERO_SHOT:
            X = np.asarray(projected, dtype=np.float64)
            return (X if self.released else unit_rows(X)) @ self.weights.T
        if self.probe is None:
            raise InvalidInput("a text-only method has no probe to score rows with")
        return self.probe.predict_proba(projected)

    def predict_rows(self) -> dict[str, np.ndarray]:
        """Both protocols' class index of every row of the EmbeddingSet it was fitted on."""
        return {protocol: self.predict(self.projected, protocol) for protocol in (ZERO_SHOT, LINEAR_PROBE)}


def _fit_predictor(emb: EmbeddingSet, target: str | None, method: str, projection, config: EvalConfig
                   ) -> _Predictor:
    """Zero-shot weights and a linear probe over ``projection``, fitted on source rows (and, for an
    augmented method, source pairs) only: what scoring and selection apply to any rows. A
    text-only method (Orth-Cali) calibrates the class text and leaves the images as they are:
    no probe. The protocol says which probe and whether projected text is re-normalised."""
    zero_shot = _zero_shot_only(emb, method, projection, config)
    if methods.spec(method).text_only:
        return zero_shot
    source, projected = _source_mask(emb, target), zero_shot.projected
    released_probe = protocols.PROTOCOLS.get(config.protocol).probe == "released"
    train = (protocols.released_train_rows(emb.domains, emb.paths, target) if released_probe
             else np.flatnonzero(source & emb.is_train))
    train_X, train_y = projected[train], emb.labels[train]
    if methods.spec(method).probe_rows == "source+intervened":
        extra_X, extra_y = _augmented_rows(emb, target, method, config)
        train_X = np.concatenate([train_X, zero_shot.project(extra_X)])
        train_y = np.concatenate([train_y, extra_y])
    val = source & ~emb.is_train
    if released_probe:
        probe = protocols.released_probe(train_X, train_y)
    else:
        probe = fit_linear_probe(train_X, train_y, projected[val], emb.labels[val], config.probe_Cs, config.seed)
    return _Predictor(projection, probe, zero_shot.weights, projected, zero_shot.released)


def _zero_shot_only(emb: EmbeddingSet, method: str, projection, config: EvalConfig) -> _Predictor:
    """Zero-shot weights over ``projection`` and no probe (nothing fitted on rows): the open-class
    task and text-only methods. The protocol says whether projected text is re-normalised."""
    method_spec = methods.spec(method)
    if _released_arithmetic(config) and not method_spec.text_only:
        components = None if projection is None else projection.components_
        weights = protocols.released_class_text(emb.text_features[0], components)
        return _Predictor(projection, None, weights, protocols.released_project(emb.features, components), True)
    renormalise = method_spec.text_only or (protocols.PROTOCOLS.get(config.protocol).renormalise
                                            and method_spec.zero_shot == "cosine")
    text = orth_cali_queries(emb, config) if method_spec.text_only else emb.text_features
    weights = zero_shot_classifier(text, projection, renormalise)
    image_projection = None if method_spec.text_only else projection
    projected = emb.features if image_projection is None else image_projection.transform(emb.features)
    return _Predictor(image_projection, None, weights, projected)


def fitted_predictor(emb: EmbeddingSet, held_out: str | None, method: str, config: EvalConfig) -> _Predictor:
    """``method`` (FULL_SPACE = CLIP) with both heads, fitted without ``held_out``'s rows and pairs
    (None: on every row): ``predict(project(X), protocol)`` applies it to any rows."""
    emb, config = apply_protocol(emb, config)
    return _fit_predictor(emb, held_out, method, _fitted(emb, held_out, method, config), config)


def orth_cali_queries(emb: EmbeddingSet, config: EvalConfig) -> np.ndarray:
    """(T, C, D) the class prompts Orth-Cali calibrates: one per class, "a photo of a {}." (the first
    template where that one is not embedded), or the whole ensemble (``orth_cali_queries="ensemble"``,
    and described prompts, which have no template)."""
    if config.orth_cali_queries == "ensemble" or emb.templates is None:
        return emb.text_features
    row = emb.templates.index(DEFAULT_TEMPLATE) if DEFAULT_TEMPLATE in emb.templates else 0
    return emb.text_features[row:row + 1]


def orth_cali_diagnostics(emb: EmbeddingSet, projection: OrthCaliProjection, config: EvalConfig) -> dict:
    """What Orth-Cali's P0 removes: its spurious prompts (or directions), the directions removed,
    D, and the share of the class prompts' between-class energy they span (queries as scored)."""
    queries = orth_cali_queries(emb, config)
    return dict(spurious_prompts=projection.n_spurious_, spurious_removed=projection.n_removed_,
                dim=projection.n_features_in_, positive_pairs=projection.n_pairs_,
                spurious_span=projection.spurious_span(queries.reshape(-1, queries.shape[2])))


def spurious_span_text(label: str, diagnostics: dict) -> tuple[str, bool]:
    """One sentence on what Orth-Cali's P0 removes (from :func:`orth_cali_diagnostics`' numbers, or
    their means over targets) and whether to warn: the CLI and the Diagnostics page print it."""
    removed, dim, span = diagnostics["spurious_removed"], diagnostics["dim"], diagnostics["spurious_span"]
    text = (f"{label}: P0 removes {removed:.0f} of D = {dim:.0f} directions ({diagnostics['spurious_prompts']:.0f} "
            f"spurious prompts or directions, {diagnostics['positive_pairs']:.0f} positive pairs); they span "
            f"{span:.0%} of the class prompts' between-class energy (a random subspace of that size: about "
            f"{removed / dim:.0%}).")
    return text, span > SPURIOUS_SPAN_WARNING


def predict_all(emb: EmbeddingSet, target: str, method: str = FULL_SPACE, config: EvalConfig = EvalConfig()
                ) -> dict[str, np.ndarray]:
    """Class index of every row under each protocol, for ``method`` (FULL_SPACE = CLIP) fitted
    with ``target`` held out, as evaluate_split scores them (for confusion matrices)."""
    _check_target(emb, target)
    emb, config = apply_protocol(with_prompts(emb, target, config.prompts), config)  # as fitted_predictor
    return _predicted_rows(emb, target, method, config, lambda: _fitted(emb, target, method, config))


def scored_rows(emb: EmbeddingSet, target: str, config: EvalConfig = EvalConfig()) -> dict[str, np.ndarray]:
    """Boolean masks of the scored rows per domain: each source's validation rows and the whole target
    domain, or under the released protocol each domain's released 20 % holdout."""
    scored = _rows_by_domain(emb, target)
    if protocols.PROTOCOLS.get(config.protocol).target_rows == "holdout":
        # Every domain's released 20 % "out" split: the target's is what the released code scores, and
        # the sources' are the rows its probe did not train on (it trains on their 80 % "in" split).
        scored = {d: protocols.released_holdout(emb.domains, emb.paths, d) for d in scored}
    return scored


def _score_method(emb, target, method, projection, config) -> list[dict]:
    """Accuracy rows of ``method`` whose fitted projection is ``projection`` (``_fitted(emb, target, method,
    config)``, which its predictions are kept under)."""
    rows = _accuracy_rows(emb, target, method, _predicted_rows(emb, target, method, config, lambda: projection),
                          config)
    return _with_diagnostics(rows, emb, projection, config)


def _predicted_rows(emb: EmbeddingSet, target: str | None, method: str, config: EvalConfig,
                    projection: Callable[[], object]) -> dict[str, np.ndarray | None]:
    """``_fit_predictor(...).predict_rows()`` (``projection()``: the method's fitted projection), the latest
    of each (target, method) kept per EmbeddingSet, read-only: a setting's accuracy table and its confusion
    matrices (:func:`predict_all`) then read the same predictions. At 50,000 images the dashboard fitted
    the probe twice for every K or lam change, 0.6 s each (bench/RESULTS.md). One setting per (target,
    method): a slider's positions do not pile up."""
    if method == FULL_SPACE:  # CLIP's reads no K, lam or pair set: the table's predictions serve every setting's confusions
        config = _full_space_setting(config)
    memo, key = _Memo.of(emb), ("predictions", target, method)
    kept = memo.get(key)
    if kept is not None and kept[0] == config:
        return dict(kept[1])
    predicted = _fit_predictor(emb, target, method, projection(), config).predict_rows()
    for rows in predicted.values():
        if rows is not None:
            rows.flags.writeable = False
    memo[key] = (config, predicted)
    return dict(predicted)


def _with_diagnostics(rows: list[dict], emb: EmbeddingSet, projection, config: EvalConfig) -> list[dict]:
    """Orth-Cali's rows carry what its P0 removes (:func:`orth_cali_diagnostics`); others NaN there."""
    if isinstance(projection, OrthCaliProjection):
        extra = orth_cali_diagnostics(emb, projection, config)
        rows = [{**row, **extra} for row in rows]
    return rows


def _accuracy_rows(emb, target, method, predicted: dict, config) -> list[dict]:
    """Tidy rows per scored domain and protocol; a protocol without predictions (None) is NaN (n/a)."""
    rows = []
    for domain, mask in scored_rows(emb, target, config).items():
        for protocol, pred in predicted.items():
            ok = pred is not None and mask.any()
            acc = float(np.mean(pred[mask] == emb.labels[mask])) if ok else float("nan")
            role = "target" if domain == target else "source"
            rows.append(dict(target=target, domain=domain, role=role, method=method, protocol=protocol,
                             accuracy=acc, n=int(mask.sum()), preset=config.protocol))
    return rows


def _full_space_rows(emb: EmbeddingSet, target: str, config: EvalConfig) -> tuple[dict, ...]:
    """CLIP's rows: they depend on no K, lam, method or pair set, so every refit reuses them."""
    setting = _full_space_setting(config)
    memo = _Memo.of(emb)
    key = ("full space", target, setting)
    if key not in memo:
        memo[key] = tuple(_score_method(emb, target, FULL_SPACE, None, config))
    return memo[key]


def _full_space_setting(config: EvalConfig) -> EvalConfig:
    """``config`` without what CLIP in the full space does not read (K, lam, the methods, the pair sets)."""
    return replace(config, n_components=1, lam=0.0, lam_mode="absolute", methods=(), pair_sets=None,
                   pair_weights=None)


def _fitted(emb: EmbeddingSet, target: str | None, method: str, config: EvalConfig):
    """The fitted projection of ``method``; None for the full space."""
    return None if method == FULL_SPACE else fit_projection(emb, target, method, config)


def _fit_and_score(emb: EmbeddingSet, target: str | None, method: str, config: EvalConfig) -> list[dict]:
    """_score_method for ``method`` fitted on the pairs whose image is not from ``target``."""
    emb, config = apply_protocol(emb, config)
    if methods.spec(method).text_only and emb.spurious is None and not any(p.kind == "text" for p in emb.pairs):
        # Not a failure of the split: the other methods still score; this one has nothing to be built from.
        warnings.warn(f"{methods.spec(method).label} is built from text banks and these embeddings have none: "
                      "its rows are n/a", UserWarning, stacklevel=2)
        return _accuracy_rows(emb, target, method, {ZERO_SHOT: None, LINEAR_PROBE: None}, config)
    return _score_method(emb, target, method, _fitted(emb, target, method, config), config)


def evaluate_split(emb: EmbeddingSet, target: str, config: EvalConfig = EvalConfig()) -> pd.DataFrame:
    """Per-domain accuracy for CLIP (full space) and every configured method, both protocols."""
    if target is None:
        raise InvalidInput("evaluate_split needs a target domain")
    _check_target(emb, target)
    emb, config = apply_protocol(emb, config)
    emb = with_prompts(emb, target, config.prompts)
    rows = list(_full_space_rows(emb, target, config))
    for method in config.methods:
        rows += _fit_and_score(emb, target, method, config)
    frame = pd.DataFrame(rows)
    frame["K"], frame["lam"], frame["lam_mode"] = config.n_components, config.lam, config.lam_mode
    return frame


def leave_one_domain_out(
    emb: EmbeddingSet, targets: list[str] | None = None, config: EvalConfig = EvalConfig()
) -> pd.DataFrame:
    """evaluate_split for every target domain (default: all), concatenated."""
    targets = emb.domain_names if targets is None else list(targets)
    return pd.concat([evaluate_split(emb, t, config) for t in targets], ignore_index=True)


def without_domain(emb: EmbeddingSet, domain: str) -> EmbeddingSet:
    """A copy with every row and pair of ``domain`` removed: what selection may look at."""
    keep = emb.domains != domain
    return replace(
        emb,
        features=emb.features[keep],
        labels=emb.labels[keep],
        domains=emb.domains[keep],
        is_train=emb.is_train[keep],
        pairs=[p.excluding(domain) for p in emb.pairs],
        paths=None if emb.paths is None else emb.paths[keep],
        key=f"{emb.key}-without-{domain}",
        intervened_val=[c.excluding(domain) for c in emb.intervened_val],
    )


def _source_val_accuracy(emb: EmbeddingSet, method: str, config: EvalConfig, protocol: str) -> float:
    """Mean validation accuracy over the domains of ``emb`` (which holds no target rows)."""
    rows = pd.DataFrame(_fit_and_score(emb, None, method, config))
    return float(rows.loc[rows.protocol == protocol, "accuracy"].mean())


def _held_out_source_accuracy(emb: EmbeddingSet, method: str, config: EvalConfig, protocol: str) -> float:
    """Leave-one-SOURCE-domain-out: mean accuracy on each source domain held out in turn."""
    scores = []
    for held in emb.domain_names:
        frame = pd.DataFrame(_fit_and_score(emb, held, method, config))
        scores.append(frame.loc[(frame.role == "target") & (frame.protocol == protocol), "accuracy"].item())
    return float(np.mean(scores))


def validation_outcomes(emb: EmbeddingSet, predictor: _Predictor, protocol: str, config: EvalConfig
                        ) -> list[tuple[str, str, np.ndarray]]:
    """(domain, check, right or wrong per row) for each domain's validation rows (as the protocol scores
    sources) and each intervened copy of them (``emb.intervened_val``): the rows the interventional rule scores."""
    predicted = predictor.predict(predictor.projected, protocol)
    outcomes = []
    validation = scored_rows(emb, None, config)
    for domain in emb.domain_names:
        val = validation[domain]
        if val.any():
            outcomes.append((domain, "validation", predicted[val] == emb.labels[val]))
        for check in emb.intervened_val:
            rows = check.domains == domain
            if rows.any():
                intervened = predictor.predict(predictor.project(check.z_do[rows]), protocol)
                outcomes.append((domain, check.name, intervened == check.labels[rows]))
    return outcomes


def worst_case_by_domain(outcomes: list[tuple[str, str, np.ndarray]]) -> float:
    """Per domain the lowest accuracy among its checks, averaged over domains."""
    worst: dict[str, float] = {}
    for domain, _, right in outcomes:
        worst[domain] = min(worst.get(domain, 1.0), float(np.mean(right)))
    return float(np.mean(list(worst.values())))


def _worst_case_validation(emb: EmbeddingSet, predictor: _Predictor, protocol: str, config: EvalConfig) -> float:
    """Per domain the lowest of its validation accuracy and its accuracy on each intervened
    copy of those rows, averaged over domains. A shortcut that is as predictive as the cause
    on validation rows fails on rows where the variant factors were changed."""
    return worst_case_by_domain(validation_outcomes(emb, predictor, protocol, config))


def _interventional_accuracy(emb: EmbeddingSet, method: str, config: EvalConfig, protocol: str) -> float:
    """min(validation, intervened validation) accuracy per source domain, averaged (emb holds no target)."""
    if emb.is_train.all():
        raise InvalidInput("scoring='interventional' needs validation rows, and every image went to training: "
                           "too few images per class and domain (use more, e.g. a larger --max-per-domain)")
    if not emb.intervened_val:
        raise InvalidInput("scoring='interventional' needs intervened validation rows: embed with InterventionConfig("
                           "intervened_val=('counterfactual',)) on ToyDomains or ('image',) elsewhere")
    if methods.spec(method).text_only and protocol == LINEAR_PROBE:
        raise InvalidInput(f"{method} calibrates class text only: it has no {protocol} to score")
    return _worst_case_validation(emb, fitted_predictor(emb, None, method, config), protocol, config)


SCORINGS = {
    "source_val": _source_val_accuracy,
    "source_domains": _held_out_source_accuracy,
    "interventional": _interventional_accuracy,
}
SCORING_LABELS = {
    "source_val": "source validation",
    "source_domains": "leave one source domain out",
    "interventional": "source validation + intervened source validation",
}


def intervened_val_for(emb: EmbeddingSet, target: str) -> list:
    """The intervened validation sets that selection for ``target`` reads: a set built for
    another held-out target read that target's training rows, so it is not ours to use."""
    return [check for check in emb.intervened_val if check.held_out in (None, target)]


def selection_view(emb: EmbeddingSet, target: str, config: EvalConfig, scoring: str) -> EmbeddingSet:
    """What selection may read: ``emb`` without the target domain (and with the target's prompts)."""
    if scoring not in SCORINGS:
        raise InvalidInput(f"scoring must be one of {', '.join(SCORINGS)}; got {scoring!r}")
    _check_target(emb, target)
    sources = without_domain(with_prompts(emb, target, config.prompts), target)
    sources = replace(sources, intervened_val=intervened_val_for(sources, target))
    if scoring == "source_domains" and len(sources.domain_names) < 2:
        raise InvalidInput("scoring='source_domains' needs at least 2 source domains")
    return sources


def source_score(emb: EmbeddingSet, target: str, method: str = FULL_SPACE, config: EvalConfig = EvalConfig(),
                 scoring: str = "source_val", protocol: str = LINEAR_PROBE) -> float:
    """The score a selection rule gives one setting (``method`` with ``config``; FULL_SPACE =
    CLIP): compare it with the chosen setting's to see what the source data prefer."""
    sources = selection_view(emb, target, config, scoring)  # checks the scoring name first
    return SCORINGS[scoring](sources, method, config, protocol)


def select_hyperparameters(
    emb: EmbeddingSet,
    target: str,
    method: str = "icm",
    Ks: tuple[int, ...] | None = None,
    lams: tuple[float, ...] | None = None,
    config: EvalConfig = EvalConfig(),
    scoring: str = "source_val",
    protocol: str = LINEAR_PROBE,
) -> tuple[int, float, pd.DataFrame]:
    """Choose (K, lam) by source data only; the target domain is removed before anything runs.

    ``scoring="source_val"``: mean accuracy on the source domains' validation rows
    (training-domain validation). ``"source_domains"``: leave one source domain out in
    turn and score it whole (slower). ``"interventional"``: per source domain the lower of
    its validation accuracy and its accuracy on the intervened copies of those rows
    (``EmbeddingSet.intervened_val``), averaged: it sees a shortcut that validation rows
    cannot, when the interventions change the factors that shift. Ties keep the first
    (K, lam) in grid order. ``Ks`` / ``lams`` None: the method's grid (MethodSpec.grid).
    Returns (best_K, best_lam, scores with columns K, lam, score).
    """
    Ks, lams = _grid(emb, method, config, Ks, lams)
    sources = selection_view(emb, target, config, scoring)
    dim = emb.features.shape[1]
    rows = [
        dict(K=K, lam=lam, score=SCORINGS[scoring](sources, method, replace(config, n_components=K, lam=lam), protocol))
        for K in Ks if K <= dim
        for lam in lams
    ]
    if not rows:
        raise InvalidInput(f"no K in {list(Ks)} fits D={dim}")
    scores = pd.DataFrame(rows)
    best = scores.loc[scores.score.idxmax()]
    return int(best.K), float(best.lam), scores


def _grid(emb: EmbeddingSet, method: str, config: EvalConfig, Ks: tuple[int, ...] | None,
          lams: tuple[float, ...] | None) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The given K and lam values, the method's own grid where None."""
    own_Ks, own_lams = methods.spec(method).grid(emb.features.shape[1], config.lam_mode, config.n_components,
                                                 config.lam)
    return (own_Ks if Ks is None else tuple(Ks)), (own_lams if lams is None else tuple(lams))


def select_and_evaluate(
    emb: EmbeddingSet,
    target: str,
    config: EvalConfig = EvalConfig(),
    scoring: str | None = None,
    Ks: tuple[int, ...] | None = None,
    lams: tuple[float, ...] | None = None,
    method: str = "icm",
    protocol: str = LINEAR_PROBE,
) -> pd.DataFrame:
    """evaluate_split at the (K, lam) that ``scoring`` chooses for ``method`` on source data only
    (``scoring=None``: the config's own K and lam); every configured method uses that K and lam.
    Adds a ``selected_by`` column naming the rule ("fixed" when none)."""
    if scoring is not None:
        K, lam, _ = select_hyperparameters(emb, target, method, Ks, lams, config, scoring, protocol)
        config = replace(config, n_components=K, lam=lam)
    frame = evaluate_split(emb, target, config)
    frame["selected_by"] = "fixed" if scoring is None else SCORING_LABELS[scoring]
    return frame


def sweep(emb: EmbeddingSet, target: str, method: str = "icm", Ks: tuple[int, ...] | None = None,
          lams: tuple[float, ...] | None = None, config: EvalConfig = EvalConfig(), protocol: str = LINEAR_PROBE
          ) -> pd.DataFrame:
    """Grid of source-validation vs target accuracy (for a heat map; the target column is
    there to SHOW the gap, never to choose: use :func:`select_hyperparameters`). ``Ks`` / ``lams``
    None: the method's grid, as selection searches it."""
    if target is None:
        raise InvalidInput("sweep needs a target domain")
    Ks, lams = _grid(emb, method, config, Ks, lams)
    rows = []
    for K in Ks:
        for lam in lams:
            cfg = replace(config, n_components=K, lam=lam)
            frame = pd.DataFrame(_fit_and_score(emb, target, method, cfg))
            frame = frame[frame.protocol == protocol]
            rows.append(dict(
                K=K, lam=lam, protocol=protocol,
                source_val_accuracy=float(frame.loc[frame.role == "source", "accuracy"].mean()),
                target_accuracy=float(frame.loc[frame.role == "target", "accuracy"].item()),
            ))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- open-class task
# The released code's default task ("in the wild"): half the classes are base classes, the rest
# new; the projection is fitted on the base classes of the source domains only, and zero-shot
# over ALL class names scores base and new classes on every domain (new classes are known to
# the model only by their name). Zero-shot only, as in the released code: a probe trained on
# base classes cannot name a new one.
TASKS = ("domain_shift", "open_class")
OPEN_CLASS_COLUMNS = ("base", "new", "harmonic mean")


def class_split(n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded 50/50 split of class indices into (base, new), each sorted; the released code takes
    the first half of the sorted class names instead (no seed; the released protocol does so,
    :func:`clip_icm.protocols.released_class_split`). At least 2 classes on each side."""
    n_base = n_classes // 2
    if n_base < 2 or n_classes - n_base < 2:
        raise InvalidInput(f"the open-class task needs at least 2 base and 2 new classes; {n_classes} classes "
                           f"split 50/50 give {n_base} and {n_classes - n_base}")
    order = rng("class split", seed).permutation(n_classes)
    return np.sort(order[:n_base]), np.sort(order[n_base:])


def restrict_to_classes(emb: EmbeddingSet, classes: np.ndarray) -> EmbeddingSet:
    """A copy with only the rows and pairs of ``classes`` (labels keep their indices; class names and
    class text stay whole); every pair set must carry class labels."""
    keep = np.isin(emb.labels, classes)
    prompts = emb.attribute_prompts
    return replace(
        emb, features=emb.features[keep], labels=emb.labels[keep], domains=emb.domains[keep],
        is_train=emb.is_train[keep], pairs=[p.for_classes(classes) for p in emb.pairs],
        attribute_prompts=None if prompts is None else prompts.subset(np.isin(prompts.labels, classes)),
        paths=None if emb.paths is None else emb.paths[keep], key=f"{emb.key}-classes-{seed_hash(classes.tolist())}",
        intervened_val=[c.for_classes(classes) for c in emb.intervened_val],
    )


def evaluate_open_class(emb: EmbeddingSet, target: str, config: EvalConfig = EvalConfig(),
                        split_seed: int = 0) -> pd.DataFrame:
    """Per-domain zero-shot accuracy on base and new classes (and their harmonic mean) for CLIP and
    every configured method, each projection fitted on the base classes of the source domains.

    Scored rows as in :func:`evaluate_split` with the whole target domain (the released open-class
    test is the whole target too). Columns: target, domain, role, method, protocol, classes
    (base / new / harmonic mean), accuracy, n, preset, K, lam, lam_mode, split_seed.
    """
    if target is None:
        raise InvalidInput("evaluate_open_class needs a target domain")
    _check_target(emb, target)
    emb, config = apply_protocol(emb, config)
    emb = with_prompts(emb, target, config.prompts)
    if protocols.PROTOCOLS.get(config.protocol).class_split == "first_half":
        base, new = protocols.released_class_split(len(emb.class_names))
    else:
        base, new = class_split(len(emb.class_names), split_seed)
    base_only = restrict_to_classes(emb, base)  # the only data any fit below sees
    rows = []
    for method in (FULL_SPACE, *config.methods):
        projection = None if method == FULL_SPACE else fit_projection(base_only, target, method, config)
        zero_shot = _zero_shot_only(emb, method, projection, config)
        pred = zero_shot.predict(zero_shot.projected, ZERO_SHOT)
        rows += _with_diagnostics(_open_class_rows(emb, target, method, pred, base, config.protocol), emb,
                                  projection, config)
    frame = pd.DataFrame(rows)
    frame["K"], frame["lam"], frame["lam_mode"], frame["split_seed"] = (config.n_components, config.lam,
                                                                         config.lam_mode, split_seed)
    return frame


def _open_class_rows(emb, target, method, pred, base, preset) -> list[dict]:
    rows = []
    for domain, mask in _rows_by_domain(emb, target).items():
        is_base = np.isin(emb.labels, base)
        acc = {}
        for name, part in (("base", mask & is_base), ("new", mask & ~is_base)):
            right = float(np.mean(pred[part] == emb.labels[part])) if part.any() else float("nan")
            acc[name] = (right, int(part.sum()))
        acc["harmonic mean"] = (harmonic_mean(acc["base"][0], acc["new"][0]), int(mask.sum()))
        for name in OPEN_CLASS_COLUMNS:
            rows.append(dict(target=target, domain=domain, role="target" if domain == target else "source",
                             method=method, protocol=ZERO_SHOT, classes=name, accuracy=acc[name][0],
                             n=acc[name][1], preset=preset))
    return rows


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b); 0 when both are 0, NaN when either is unknown (a domain without such rows)."""
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def open_class_leave_one_domain_out(emb: EmbeddingSet, targets: list[str] | None = None,
                                    config: EvalConfig = EvalConfig(), split_seed: int = 0) -> pd.DataFrame:
    """evaluate_open_class for every target domain (default: all), concatenated."""
    targets = emb.domain_names if targets is None else list(targets)
    return pd.concat([evaluate_open_class(emb, t, config, split_seed) for t in targets], ignore_index=True)
