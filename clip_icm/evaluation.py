"""Evaluation on embeddings: zero-shot, linear probe, leave-one-domain-out, honest K/lam choice.

Pure functions over an :class:`EmbeddingSet`; results are tidy pandas rows
(target, domain, role, method, protocol, accuracy, n; evaluate_split adds K, lam, lam_mode).

Protocol (DomainBed's leave-one-domain-out, training-domain validation):
- projections are fitted on pairs whose source image is not from the target;
- the linear probe is trained on the source domains' train rows, its C chosen on
  the source domains' validation rows;
- target rows score the WHOLE target domain (DomainBed convention; the released
  code scores the target's 20% holdout instead); source rows score that source
  domain's validation rows.
Nothing that chooses K, lam or C ever reads a target label: selection works on a
copy of the EmbeddingSet from which the target domain has been removed.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from clip_icm.embeddings import EmbeddingSet
from clip_icm.projection import METHOD_LABELS, LinearProjection, PairMoments, make_projection, stack_pairs

ALL_METHODS = tuple(METHOD_LABELS)  # every registered method (one label each), in display order
FULL_SPACE = "CLIP"
ZERO_SHOT, LINEAR_PROBE = "zero-shot", "linear probe"
# The released code scores zero-shot with a plain dot product after projection (no
# re-normalisation of the projected text); we keep that for its named variant only.
RELEASED_SCORING = frozenset({"icm_as_released"})
# Methods whose probe also trains on the intervened images of the pair sets (same labels).
AUGMENTED_PROBE = frozenset({"augmentation"})
# Zero-shot prompt sets: the class names in the template set the embeddings were built with,
# or each class described by its usual look in the source training rows (EmbeddingSet.look_prompts).
PROMPT_SETS = {"classes": "class names", "usual_look": "each class by its usual source look"}


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation setting. ``pair_sets=None`` uses every pair set of the EmbeddingSet;
    ``pair_weights`` maps pair-set names to weights (see :func:`stack_pairs`)."""

    n_components: int = 64
    lam: float = 1000.0
    lam_mode: str = "absolute"
    methods: tuple[str, ...] = ALL_METHODS
    pair_sets: tuple[str, ...] | None = None
    pair_weights: tuple[tuple[str, float], ...] | dict[str, float] | None = None
    probe_Cs: tuple[float, ...] = (0.01, 0.1, 1.0)
    prompts: str = "classes"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prompts not in PROMPT_SETS:
            raise ValueError(f"prompts must be one of {', '.join(PROMPT_SETS)}; got {self.prompts!r}")


def _normalise(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def zero_shot_classifier(text_features: np.ndarray, projection: object = None, renormalize: bool = True) -> np.ndarray:
    """(C, d) class weights from (T, C, D) raw prompt embeddings (open_clip's convention).

    Each template's class embedding is L2-normalised, projected (if given), averaged
    over templates and re-normalised. ``renormalize=False`` skips the last step, as
    the released code does.
    """
    text = np.asarray(text_features, dtype=np.float64)
    if text.ndim != 3:
        raise ValueError(f"text_features must be (templates, classes, D), got shape {text.shape}")
    T, C, D = text.shape
    flat = _normalise(text.reshape(T * C, D))
    if projection is not None:
        flat = projection.transform(flat)
    weights = flat.reshape(T, C, -1).mean(axis=0)
    return _normalise(weights) if renormalize else weights


def zero_shot_predict(
    features: np.ndarray, text_features: np.ndarray, projection: object = None, renormalize: bool = True
) -> np.ndarray:
    """Class index per row: cosine between projected, L2-normalised images and class weights."""
    X = np.asarray(features, dtype=np.float64)
    if projection is not None:
        X = projection.transform(X)
    return np.argmax(_normalise(X) @ zero_shot_classifier(text_features, projection, renormalize).T, axis=1)


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
        raise ValueError("Cs must name at least one C")
    if len(np.unique(train_y)) < 2:
        raise ValueError("the linear probe needs at least 2 classes in its training rows")
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
        raise ValueError(f"unknown target domain {target!r}; domains: {', '.join(emb.domain_names)}")


def _pair_sets(emb: EmbeddingSet, target: str | None, config: EvalConfig) -> list:
    """The configured pair sets without the pairs whose image is from ``target``."""
    names = config.pair_sets if config.pair_sets is not None else [p.name for p in emb.pairs]
    pair_sets = [emb.pair_set(name) for name in names]
    return pair_sets if target is None else [p.excluding(target) for p in pair_sets]


class _Memo:
    """What a K or lam change does not change, kept per EmbeddingSet *object* (its arrays are
    read-only by contract) and dropped with it: the pair moments of each (target, pair sets)
    and the full-space rows of each (target, evaluation setting). A refit then costs one
    eigendecomposition (or a slice of a kept one) and the probe in K dimensions."""

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


def _moments(emb: EmbeddingSet, target: str | None, config: EvalConfig) -> PairMoments:
    weights = dict(config.pair_weights or {})
    key = ("moments", target, config.pair_sets, tuple(sorted(weights.items())))
    memo = _Memo.of(emb)
    if key not in memo:
        memo[key] = PairMoments.of(*stack_pairs(_pair_sets(emb, target, config), weights))
    return memo[key]


def fit_projection(
    emb: EmbeddingSet, target: str | None, method: str, config: EvalConfig = EvalConfig()
) -> LinearProjection:
    """The projection of ``method`` fitted on pairs whose image is not from ``target``
    (None = all pairs). Used by evaluation and by the dashboard (spectrum, UMAP)."""
    _check_target(emb, target)
    return make_projection(method, config.n_components, config.lam, config.lam_mode).fit_moments(
        _moments(emb, target, config))


def with_prompts(emb: EmbeddingSet, target: str | None, prompts: str) -> EmbeddingSet:
    """``emb`` whose class text embeddings are the prompt set ``prompts`` for held-out ``target``."""
    if prompts == "classes":
        return emb
    if target not in emb.look_prompts:
        raise ValueError(f"prompts={prompts!r} needs the usual-look prompts for target {target!r} "
                         "(ToyDomains data embedded with InterventionConfig(look_prompts=True))")
    return replace(emb, text_features=emb.look_prompts[target])


def _rows_by_domain(emb: EmbeddingSet, target: str) -> dict[str, np.ndarray]:
    """Scored rows per domain: the whole target domain; validation rows of each source."""
    return {
        d: (emb.domains == d) if d == target else (emb.domains == d) & ~emb.is_train for d in emb.domain_names
    }


def _augmented_rows(emb: EmbeddingSet, target: str | None, config: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """The intervened images of the configured image and true-swap pair sets, each with its
    source image's class, none from ``target``: what an augmented probe also trains on."""
    images = [p for p in _pair_sets(emb, target, config) if p.kind in ("image", "true") and p.labels is not None]
    if not images:
        raise ValueError(f"{', '.join(sorted(AUGMENTED_PROBE))} trains on intervened images: choose at least one "
                         "image or true-swap pair set")
    return np.concatenate([p.z_do for p in images]), np.concatenate([p.labels for p in images])


class _Predictor:
    """One method's fitted predictors (zero-shot weights and linear probe) over its projection.
    ``projected`` holds the EmbeddingSet's own rows, projected once for both protocols."""

    def __init__(self, projection, probe: Pipeline, weights: np.ndarray, projected: np.ndarray) -> None:
        self.projection, self.probe, self.weights, self.projected = projection, probe, weights, projected

    def project(self, X: np.ndarray) -> np.ndarray:
        return X if self.projection is None else self.projection.transform(X)

    def predict(self, projected: np.ndarray, protocol: str) -> np.ndarray:
        if protocol == ZERO_SHOT:
            return np.argmax(_normalise(np.asarray(projected, dtype=np.float64)) @ self.weights.T, axis=1)
        return self.probe.predict(projected)

    def predict_rows(self) -> dict[str, np.ndarray]:
        """Both protocols' class index of every row of the EmbeddingSet it was fitted on."""
        return {protocol: self.predict(self.projected, protocol) for protocol in (ZERO_SHOT, LINEAR_PROBE)}


def _fit_predictor(emb: EmbeddingSet, target: str | None, method: str, projection, config: EvalConfig
                   ) -> _Predictor:
    """Zero-shot weights and a linear probe over ``projection``, fitted on source rows (and, for an
    augmented method, source pairs) only: what scoring and selection apply to any rows."""
    source = _source_mask(emb, target)
    projected = emb.features if projection is None else projection.transform(emb.features)
    train_X, train_y = projected[source & emb.is_train], emb.labels[source & emb.is_train]
    if method in AUGMENTED_PROBE:
        extra_X, extra_y = _augmented_rows(emb, target, config)
        train_X = np.concatenate([train_X, extra_X if projection is None else projection.transform(extra_X)])
        train_y = np.concatenate([train_y, extra_y])
    val = source & ~emb.is_train
    probe = fit_linear_probe(train_X, train_y, projected[val], emb.labels[val], config.probe_Cs, config.seed)
    weights = zero_shot_classifier(emb.text_features, projection, method not in RELEASED_SCORING)
    return _Predictor(projection, probe, weights, projected)


def predict_all(emb: EmbeddingSet, target: str, method: str = FULL_SPACE, config: EvalConfig = EvalConfig()
                ) -> dict[str, np.ndarray]:
    """Class index of every row under each protocol, for ``method`` (FULL_SPACE = CLIP) fitted
    with ``target`` held out, as evaluate_split scores them (for confusion matrices)."""
    _check_target(emb, target)
    emb = with_prompts(emb, target, config.prompts)
    return _fit_predictor(emb, target, method, _fitted(emb, target, method, config), config).predict_rows()


def _score_method(emb, target, method, projection, config) -> list[dict]:
    predicted = _fit_predictor(emb, target, method, projection, config).predict_rows()
    rows = []
    for domain, mask in _rows_by_domain(emb, target).items():
        for protocol, pred in predicted.items():
            acc = float(np.mean(pred[mask] == emb.labels[mask])) if mask.any() else float("nan")
            role = "target" if domain == target else "source"
            rows.append(dict(target=target, domain=domain, role=role, method=method, protocol=protocol,
                             accuracy=acc, n=int(mask.sum())))
    return rows


def _full_space_rows(emb: EmbeddingSet, target: str, config: EvalConfig) -> tuple[dict, ...]:
    """CLIP's rows: they depend on no K, lam, method or pair set, so every refit reuses them."""
    setting = replace(config, n_components=1, lam=0.0, lam_mode="absolute", methods=(), pair_sets=None,
                      pair_weights=None)
    memo = _Memo.of(emb)
    key = ("full space", target, setting)
    if key not in memo:
        memo[key] = tuple(_score_method(emb, target, FULL_SPACE, None, config))
    return memo[key]


def _fitted(emb: EmbeddingSet, target: str | None, method: str, config: EvalConfig):
    """The fitted projection of ``method``; None for the full space."""
    return None if method == FULL_SPACE else fit_projection(emb, target, method, config)


def _fit_and_score(emb: EmbeddingSet, target: str | None, method: str, config: EvalConfig) -> list[dict]:
    """_score_method for ``method`` fitted on the pairs whose image is not from ``target``."""
    return _score_method(emb, target, method, _fitted(emb, target, method, config), config)


def evaluate_split(emb: EmbeddingSet, target: str, config: EvalConfig = EvalConfig()) -> pd.DataFrame:
    """Per-domain accuracy for CLIP (full space) and every configured method, both protocols."""
    if target is None:
        raise ValueError("evaluate_split needs a target domain")
    _check_target(emb, target)
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


def _worst_case_validation(emb: EmbeddingSet, predictor: _Predictor, protocol: str) -> float:
    """Per domain the lowest of its validation accuracy and its accuracy on each intervened
    copy of those rows, averaged over domains. A shortcut that is as predictive as the cause
    on validation rows fails on rows where the variant factors were changed."""
    predicted = predictor.predict(predictor.projected, protocol)
    scores = []
    for domain in emb.domain_names:
        val = (emb.domains == domain) & ~emb.is_train
        accuracies = [np.mean(predicted[val] == emb.labels[val])] if val.any() else []
        for check in emb.intervened_val:
            rows = check.domains == domain
            if rows.any():
                intervened = predictor.predict(predictor.project(check.z_do[rows]), protocol)
                accuracies.append(np.mean(intervened == check.labels[rows]))
        if accuracies:
            scores.append(min(accuracies))
    return float(np.mean(scores))


def _interventional_accuracy(emb: EmbeddingSet, method: str, config: EvalConfig, protocol: str) -> float:
    """min(validation, intervened validation) accuracy per source domain, averaged (emb holds no target)."""
    if not emb.intervened_val:
        raise ValueError("scoring='interventional' needs intervened validation rows: embed with "
                         "InterventionConfig(intervened_val=('counterfactual',)) on ToyDomains or ('image',) elsewhere")
    predictor = _fit_predictor(emb, None, method, _fitted(emb, None, method, config), config)
    return _worst_case_validation(emb, predictor, protocol)


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


def _selection_view(emb: EmbeddingSet, target: str, config: EvalConfig, scoring: str) -> EmbeddingSet:
    """What selection may read: ``emb`` without the target domain (and with the target's prompts)."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}; got {scoring!r}")
    _check_target(emb, target)
    sources = without_domain(with_prompts(emb, target, config.prompts), target)
    # a check built for another held-out target read that target's training rows: not ours to use
    sources = replace(sources, intervened_val=[c for c in sources.intervened_val if c.held_out in (None, target)])
    if scoring == "source_domains" and len(sources.domain_names) < 2:
        raise ValueError("scoring='source_domains' needs at least 2 source domains")
    return sources


def source_score(emb: EmbeddingSet, target: str, method: str = FULL_SPACE, config: EvalConfig = EvalConfig(),
                 scoring: str = "source_val", protocol: str = LINEAR_PROBE) -> float:
    """The score a selection rule gives one setting (``method`` with ``config``; FULL_SPACE =
    CLIP): compare it with the chosen setting's to see what the source data prefer."""
    sources = _selection_view(emb, target, config, scoring)  # checks the scoring name first
    return SCORINGS[scoring](sources, method, config, protocol)


def select_hyperparameters(
    emb: EmbeddingSet,
    target: str,
    method: str = "icm",
    Ks: tuple[int, ...] = (16, 32, 64, 128),
    lams: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0),
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
    (K, lam) in grid order. Returns (best_K, best_lam, scores with columns K, lam, score).
    """
    sources = _selection_view(emb, target, config, scoring)
    dim = emb.features.shape[1]
    rows = [
        dict(K=K, lam=lam, score=SCORINGS[scoring](sources, method, replace(config, n_components=K, lam=lam), protocol))
        for K in Ks if K <= dim
        for lam in lams
    ]
    if not rows:
        raise ValueError(f"no K in {list(Ks)} fits D={dim}")
    scores = pd.DataFrame(rows)
    best = scores.loc[scores.score.idxmax()]
    return int(best.K), float(best.lam), scores


def select_and_evaluate(
    emb: EmbeddingSet,
    target: str,
    config: EvalConfig = EvalConfig(),
    scoring: str | None = None,
    Ks: tuple[int, ...] = (16, 32, 64, 128),
    lams: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0),
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


def sweep(
    emb: EmbeddingSet,
    target: str,
    Ks: tuple[int, ...],
    lams: tuple[float, ...],
    method: str = "icm",
    config: EvalConfig = EvalConfig(),
    protocol: str = LINEAR_PROBE,
) -> pd.DataFrame:
    """Grid of source-validation vs target accuracy (for a heat map; the target column is
    there to SHOW the gap, never to choose: use :func:`select_hyperparameters`)."""
    if target is None:
        raise ValueError("sweep needs a target domain")
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
