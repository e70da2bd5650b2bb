"""Which model to trust on a target, chosen without a target label: CLIP, augmentation or ICM.

A rule in the manner of DomainBed's ``model_selection``: candidates come from the method specs
(``MethodSpec.choice_rank``, simplest first, each with its heads), one source-only score rates
them all, and the rule returns tidy rows (candidate, score, uncertainty, chosen, why) that the
CLI, the dashboard and the report read.

The score sees more than the validation rows, since a shortcut that predicts the class in every
source domain looks perfect there. Per source domain it takes the worst of:

- its validation rows (the candidate fitted on every source domain);
- each intervened copy of those rows (the variant factors changed: a shortcut on them fails);
- the whole domain held out, the candidate fitted on the other source domains (a new style, as
  the target is: a projection that also removes what a new style needs fails here);

then averages over source domains.

With ``mode="unlabelled-target"`` (opt-in; defaults.CHOICE is source-only) the score also reads the
target's images, never their labels: it averages the source score above with the share of the
target images on which the candidate is at least as sure of its answer (the gap between its two top
classes) as on 95 % of the source validation rows. Source checks cannot see that class-name prompts fit paintings less well
than photos; a zero-shot head that is unsure on most paintings can. A probe whose shortcut breaks
on the target is unsure there too. A more complex candidate must win by two standard errors in
this mode (MARGIN_SES). It is not the default because it did not hold on worlds drawn after it was
developed: on each of two later sets it deployed a model 2.5 or 3.5 points below CLIP zero-shot on
a shifted art target, where every candidate is unsure on the paintings (docs/CHOICE.md).
``mode="source-only"`` reads no target image at all.

Its uncertainty is a paired bootstrap over the rows of every
check (the same resampled rows for each candidate), so the difference between two candidates has
its own standard error. The rule: candidates challenge in order of simplicity, and one replaces the
current choice only where it scores higher by more than the standard error of their paired
difference (two of them in the unlabelled mode); the simplest candidate wins unless a more complex
one is better by more than that.
(Breiman's one-standard-error rule against the best, tried first, let a candidate whose difference
to the best was noisier slip in on world s8 of bench/model_choice: an augmentation probe at 0.919
where CLIP zero-shot scored 0.994.)

Nothing here reads a target label: the target domain is removed before anything is fitted or
scored (evaluation's selection view), only its image features are projected in the unlabelled mode,
and a test permutes the target labels to prove it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from clip_icm import defaults, evaluation, methods
from clip_icm.embeddings import EmbeddingSet, unit_rows
from clip_icm.errors import InvalidInput
from clip_icm.evaluation import FULL_SPACE, LINEAR_PROBE, ZERO_SHOT, EvalConfig
from clip_icm.seeding import rng

BOOTSTRAP_ROUNDS = 400
HELD_OUT = "held out"  # the check name of a source domain scored with the candidate fitted without it
HEADS = {ZERO_SHOT: "zero-shot", LINEAR_PROBE: "probe"}
SURE_QUANTILE = 0.05  # a target image counts as "sure" at least as sure as 95 % of the source validation rows
SURE = "target sure share"  # the table's column (unlabelled mode only)
# How many standard errors of the paired difference a more complex candidate must win by. Two with the
# target images: how sure a model is there is noisier evidence, and a new style makes every candidate
# less sure at once (on world s13 of bench/model_choice a broken CLIP probe won a shifted art target by
# 1.6 standard errors, 0.916 on the target against CLIP zero-shot's 0.941).
MARGIN_SES = {"source-only": 1, "unlabelled-target": 2}


@dataclass(frozen=True)
class Candidate:
    """One model a user could deploy: a method (FULL_SPACE = CLIP) with one head, at the config's K and lam."""

    method: str
    protocol: str

    @property
    def label(self) -> str:
        return f"{methods.label(self.method)} {HEADS[self.protocol]}"


def candidates() -> tuple[Candidate, ...]:
    """Every method that is a choice candidate (its spec's ``choice_rank``), simplest first, each head
    in turn (zero-shot, which trains nothing, before the probe)."""
    specs = sorted((s for s in (methods.FULL_SPACE, *methods.SPECS) if s.choice_rank is not None),
                   key=lambda s: s.choice_rank)
    return tuple(Candidate(s.name, head) for s in specs for head in s.choice_heads)


def source_view(emb: EmbeddingSet, target: str, config: EvalConfig) -> EmbeddingSet:
    """What the source checks read: ``emb`` without the target's rows, pairs and labels."""
    sources = evaluation.selection_view(emb, target, config, "interventional")
    if len(sources.domain_names) < 2:
        raise InvalidInput("the model choice holds out each source domain in turn: it needs at least 2 "
                           f"source domains, and target {target!r} leaves {len(sources.domain_names)}")
    return sources


def check_outcomes(emb: EmbeddingSet, target: str, method: str, heads: tuple[str, ...], config: EvalConfig,
                   predictor=None) -> dict[str, list[tuple[str, str, np.ndarray]]]:
    """Per head, (source domain, check, right or wrong per row) of every check the score reads. ``emb``
    is the whole data set: the target's rows, pairs and labels are dropped before anything runs.
    ``predictor``: ``method`` already fitted on every source domain (None: fitted here)."""
    sources = source_view(emb, target, config)
    if predictor is None:
        predictor = evaluation.fitted_predictor(sources, None, method, config)
    outcomes = {head: evaluation.validation_outcomes(sources, predictor, head, config) for head in heads}
    for domain in sources.domain_names:
        without = evaluation.fitted_predictor(sources, domain, method, config)
        rows = sources.domains == domain
        for head in heads:
            predicted = without.predict(without.projected[rows], head)
            outcomes[head].append((domain, HELD_OUT, predicted == sources.labels[rows]))
    return outcomes


def sure_on_target(emb: EmbeddingSet, target: str, predictor, head: str, config: EvalConfig) -> np.ndarray:
    """Per target image, whether ``predictor`` (fitted on the sources, see :func:`source_view`) is at
    least as sure of its answer with ``head`` (the gap between its two top class scores) as on 95 % of
    the source validation rows. Reads the target's image features only, never its labels."""
    sources = source_view(emb, target, config)
    validation = np.any(list(evaluation.scored_rows(sources, None, config).values()), axis=0)
    threshold = np.quantile(_sureness(predictor, predictor.projected[validation], head), SURE_QUANTILE)
    return _sureness(predictor, predictor.project(emb.features[emb.domains == target]), head) >= threshold


def _sureness(predictor, projected: np.ndarray, head: str) -> np.ndarray:
    """Per row, the gap between the two top class scores."""
    top = np.sort(predictor.class_scores(projected, head), axis=1)
    return top[:, -1] - top[:, -2]


def _bootstrap_sure(sure: np.ndarray, seed: int) -> np.ndarray:
    """The sure share on BOOTSTRAP_ROUNDS resamples of the target images, the same for every candidate."""
    picks = rng("model choice bootstrap", seed, "unlabelled target", len(sure)).integers(
        len(sure), size=(BOOTSTRAP_ROUNDS, len(sure)))
    return sure[picks].mean(axis=1)


def _bootstrap_scores(outcomes: list[tuple[str, str, np.ndarray]], seed: int) -> np.ndarray:
    """The score on BOOTSTRAP_ROUNDS resamples of each check's rows; a check's resampled rows
    depend only on its name and size, so every candidate is scored on the same rows (paired)."""
    worst: dict[str, np.ndarray] = {}
    for domain, check, right in outcomes:
        picks = rng("model choice bootstrap", seed, domain, check, len(right)).integers(
            len(right), size=(BOOTSTRAP_ROUNDS, len(right)))
        accuracy = right[picks].mean(axis=1)
        worst[domain] = np.minimum(worst[domain], accuracy) if domain in worst else accuracy
    return np.mean(list(worst.values()), axis=0)


@dataclass(frozen=True)
class Choice:
    """The choice for one target: ``table`` holds one row per candidate (columns candidate, method,
    protocol, score, se, margin, chosen, and each check's accuracy averaged over source domains);
    ``why`` says in a sentence or two why the chosen one won (and, where it is no projection, where
    the projection falls short); ``shortfall``, where a projected probe fails on a held-out source
    domain, says why in numbers (:func:`probe_shortfall`). ``versus_clip`` (filled by
    :func:`evaluate_and_choose`, from target labels) describes how the chosen one then did against
    CLIP's two heads on the target (:func:`paired_difference`): the result, not an input. ``mode``
    says what the choice read (defaults.CHOICE_MODES)."""

    target: str
    table: pd.DataFrame
    why: str
    shortfall: str | None = None
    versus_clip: pd.DataFrame | None = None
    mode: str = defaults.CHOICE

    @property
    def chosen(self) -> pd.Series:
        return self.table[self.table.chosen].iloc[0]


def check_mode(mode: str) -> str:
    """``mode`` if it is one of defaults.CHOICE_MODES, else an error that lists them."""
    if mode not in defaults.CHOICE_MODES:
        raise InvalidInput(f"the model choice's mode must be one of {', '.join(defaults.CHOICE_MODES)}; got {mode!r}")
    return mode


def choose_model(emb: EmbeddingSet, target: str, config: EvalConfig = EvalConfig(), mode: str = defaults.CHOICE
                 ) -> Choice:
    """The candidate to deploy on ``target``, chosen without a target label (see the module's doc);
    ``mode="source-only"`` reads no target image either.

    ``config`` sets K, lam and the pair sets of every projected candidate (the setting the page
    and the CLI show); its ``methods`` are ignored: the candidates are the method specs'."""
    rows, boot, sources = [], {}, source_view(emb, target, config)
    for method in dict.fromkeys(c.method for c in candidates()):
        heads = tuple(c.protocol for c in candidates() if c.method == method)
        predictor = evaluation.fitted_predictor(sources, None, method, config)
        for head, outcomes in check_outcomes(emb, target, method, heads, config, predictor).items():
            candidate = Candidate(method, head)
            boot[candidate] = _bootstrap_scores(outcomes, config.seed)
            row = dict(candidate=candidate.label, method=method, protocol=head,
                       score=evaluation.worst_case_by_domain(outcomes), **_check_means(outcomes))
            row["source score"] = row["score"]
            if check_mode(mode) == "unlabelled-target":
                # Half the source score, half how sure it is on the target's images (never their labels).
                sure = sure_on_target(emb, target, predictor, head, config)
                boot[candidate] = (boot[candidate] + _bootstrap_sure(sure, config.seed)) / 2
                row[SURE] = float(sure.mean())
                row["score"] = (row["score"] + row[SURE]) / 2
            rows.append(dict(row, se=float(np.std(boot[candidate]))))
    table = pd.DataFrame(rows)
    chosen, challenged, margins = 0, [0], [0.0]
    for i, candidate in enumerate(candidates()[1:], start=1):
        # A more complex candidate wins only by more than the uncertainty of its difference to the one it challenges.
        margins.append(MARGIN_SES[mode] * float(np.std(boot[candidate] - boot[candidates()[chosen]])))
        challenged.append(chosen)
        if table.score[i] - table.score[chosen] > margins[-1]:
            chosen = i
    table["margin"], table["challenged"] = margins, [table.candidate[j] for j in challenged]
    table["chosen"] = np.arange(len(table)) == chosen
    return Choice(target, table, _why(table, chosen, mode), probe_shortfall(emb, target, config, table), mode=mode)


def rule_text(mode: str = defaults.CHOICE) -> str:
    """The rule in one sentence, for the CLI's header and the page's caption."""
    source = ("per source domain the worst of its validation rows, their intervened copies and the domain held out, "
              "averaged")
    if check_mode(mode) == "unlabelled-target":
        source = (f"half that source score ({source}), half the share of the unlabelled target images on which "
                  "the candidate is as sure as on 95 % of its source validation rows (never a target label)")
    errors = {1: "one standard error", 2: "two standard errors"}[MARGIN_SES[mode]]
    return (f"chosen without a target label: {source}; the simplest candidate unless a more complex one scores "
            f"higher by more than {errors} of their difference")


def rule_sentence(mode: str = defaults.CHOICE) -> str:
    """rule_text as a sentence of its own (capitalised): the page's caption and the report."""
    text = rule_text(mode)
    return text[:1].upper() + text[1:]


def _check_means(outcomes: list[tuple[str, str, np.ndarray]]) -> dict[str, float]:
    """Each kind of check's accuracy, averaged over the source domains that have it (for the tables)."""
    by_check: dict[str, list[float]] = {}
    for _, check, right in outcomes:
        kind = check if check in (HELD_OUT, "validation") else "intervened"
        by_check.setdefault(kind, []).append(float(np.mean(right)))
    return {f"{kind} accuracy": float(np.mean(values)) for kind, values in by_check.items()}


CHECK_WORDS = {"validation accuracy": "validation rows", "intervened accuracy": "intervened validation rows",
               f"{HELD_OUT} accuracy": "a source domain held out (a new style, as the target is)"}


def _points(difference: float) -> str:
    return f"{difference * 100:.1f} points"


def _why(table: pd.DataFrame, chosen: int, mode: str = defaults.CHOICE) -> str:
    """Why the chosen candidate, in sentences a stakeholder can read: by what evidence it won, whether
    the projection helps here where it is no projection, and what the unlabelled mode read."""
    pick = table.iloc[chosen]
    later = table.iloc[chosen + 1:]
    closest = later.loc[later.score.idxmax()] if len(later) else None
    checks = "the source checks" if mode == "source-only" else "the source checks and the target images"
    if chosen:
        sentence = (f"It beats {pick.challenged} on {checks} by {_points(pick.score - table.score[_row(table, pick.challenged)])}, "
                    f"more than the uncertainty (± {_points(pick.margin)}).")
    elif closest is None or closest.score <= pick.score:
        sentence = f"It scores best on {checks} ({pick.score:.1%} ± {pick.se:.1%}) and is the simplest."
    else:
        sentence = (f"It is the simplest, and no other candidate beats it on {checks} by more than the "
                    f"uncertainty (closest: {closest.candidate}, {_points(closest.score - pick.score)} more).")
    sentence = f"{sentence}{_projection_words(table, pick)}"
    if mode == "source-only":
        return sentence
    return (f"{sentence} The score reads the unlabelled target images, never their labels: {pick.candidate} is as sure "
            f"there as on 95 % of its source validation rows on {pick[SURE]:.0%} of them.")


def _projection_words(table: pd.DataFrame, pick: pd.Series) -> str:
    """Where the chosen one is no projection: whether the projection helps here, and on which source check
    it falls short ("" where a projection was chosen or none is a candidate)."""
    projected = table[_projected(table)]
    if projected.empty or pick.name in projected.index:
        return ""
    icm = projected.loc[projected.score.idxmax()]
    if icm.score > pick.score:
        return f" The projection's gain here ({icm.candidate}, {_points(icm.score - pick.score)}) is within the noise."
    weakest = min(CHECK_WORDS, key=lambda column: icm.get(column, np.inf))
    return (f" The projection does not help here: {icm.candidate} scores {icm.score:.1%}, and on "
            f"{CHECK_WORDS[weakest]} it gets {icm[weakest]:.1%} against {pick[weakest]:.1%}.")


def domain_share(features: np.ndarray, domains: np.ndarray) -> float:
    """The share of the (L2-normalised, centred) features' variance that lies between the domains'
    means: how much of the space tells the domains apart."""
    X = unit_rows(np.asarray(features, dtype=np.float64))
    X -= X.mean(axis=0)
    between = sum((domains == d).sum() * np.sum(X[domains == d].mean(axis=0) ** 2) for d in np.unique(domains))
    return float(between / np.sum(X ** 2))


def probe_shortfall(emb: EmbeddingSet, target: str, config: EvalConfig, table: pd.DataFrame) -> str | None:
    """Why a projected probe that was not chosen fails where it fails on a source domain held out
    (the typical case, see docs/CHOICE.md): that check's accuracy beside its validation rows', and
    how much of the source images' variance tells the domains apart in its space and in CLIP's.
    Source rows only. None where no projected probe lost on that check."""
    lost = table[_projected(table) & (table.protocol == LINEAR_PROBE) & ~table.chosen]
    held_out = f"{HELD_OUT} accuracy"
    if lost.empty or min(CHECK_WORDS, key=lambda column: lost.iloc[0].get(column, np.inf)) != held_out:
        return None
    row = lost.iloc[0]
    sources = evaluation.selection_view(emb, target, config, "interventional")
    inside = domain_share(evaluation.fit_projection(sources, None, row.method, config).transform(sources.features),
                          sources.domains)
    full = domain_share(sources.features, sources.domains)
    sentence = (f"Why {row.candidate} falls short: on a source domain it never trained on it gets "
                f"{row[held_out]:.1%}, against {row['validation accuracy']:.1%} on its validation rows")
    if inside <= full:
        return f"{sentence}."
    return (f"{sentence}. Its space keeps what tells the domains apart (they explain {inside:.0%} of the source "
            f"images' variance in its {config.n_components} dimensions, {full:.0%} in CLIP's), so a probe trained "
            "there need not carry over to a new domain, and the target is one.")


def projects(method: str) -> bool:
    """Whether ``method`` projects the embeddings (CLIP and augmentation keep the full space)."""
    return methods.spec(method).estimator not in (None, "IdentityProjection")


def _projected(table: pd.DataFrame) -> pd.Series:
    """Which candidates' methods project."""
    return table.method.map(projects)


def _row(table: pd.DataFrame, candidate: str) -> int:
    return int(np.flatnonzero(table.candidate == candidate)[0])


def choose_per_target(emb: EmbeddingSet, targets: list[str] | None = None, config: EvalConfig = EvalConfig(),
                      mode: str = defaults.CHOICE) -> list[Choice]:
    """choose_model for every target domain (default: all)."""
    return [choose_model(emb, t, config, mode) for t in (emb.domain_names if targets is None else targets)]


def _with_candidates(config: EvalConfig) -> EvalConfig:
    """``config`` whose methods also hold every candidate method, so that its rows are evaluated too."""
    extra = tuple(c.method for c in candidates() if c.method != FULL_SPACE and c.method not in config.methods)
    return replace(config, methods=config.methods + tuple(dict.fromkeys(extra)))


def evaluate_and_choose(emb: EmbeddingSet, target: str, config: EvalConfig = EvalConfig(),
                        scoring: str | None = "interventional", protocol: str = LINEAR_PROBE,
                        mode: str = defaults.CHOICE) -> tuple[pd.DataFrame, Choice]:
    """evaluation.select_and_evaluate (K and lam chosen by ``scoring`` for ``protocol``; None: the
    config's), the candidates' methods included, then the model choice (``mode``) at that K and lam.
    The frame's boolean ``chosen`` column is true on the chosen candidate's target row only."""
    config = _with_candidates(config)
    check_mode(mode)
    frame = evaluation.select_and_evaluate(emb, target, config, scoring, protocol=protocol)
    made = choose_model(emb, target, replace(config, n_components=int(frame.K.iloc[0]), lam=float(frame.lam.iloc[0])),
                        mode)
    pick = made.chosen
    frame["chosen"] = (frame.role == "target") & (frame.method == pick.method) & (frame.protocol == pick.protocol)
    return frame, replace(made, versus_clip=versus_clip(emb, target, config, pick.method, pick.protocol))


def versus_clip(emb: EmbeddingSet, target: str, config: EvalConfig, method: str, protocol: str) -> pd.DataFrame:
    """``method`` with head ``protocol`` against CLIP's zero-shot and probe (itself left out) on the
    target's scored rows: one :func:`paired_difference` row each, column ``versus`` naming CLIP's head."""
    rows = evaluation.scored_rows(emb, target, config)[target]
    labels = emb.labels[rows]
    mine = evaluation.predict_all(emb, target, method, config)[protocol][rows] == labels
    clip = evaluation.predict_all(emb, target, FULL_SPACE, config)
    return pd.DataFrame([dict(versus=f"CLIP {HEADS[head]}", **paired_difference(mine, clip[head][rows] == labels,
                                                                                config.seed))
                         for head in (ZERO_SHOT, LINEAR_PROBE) if (method, protocol) != (FULL_SPACE, head)])


def paired_difference(right: np.ndarray, right_other: np.ndarray, seed: int = 0) -> dict[str, float]:
    """How one model's accuracy differs from another's on the same rows: the difference, a 95 %
    paired bootstrap interval and McNemar's exact two-sided p-value (from the rows where exactly
    one of them is right). A description of a result, never an input to a choice."""
    from scipy.stats import binomtest

    right, right_other = np.asarray(right, bool), np.asarray(right_other, bool)
    if right.shape != right_other.shape or right.ndim != 1 or not len(right):
        raise InvalidInput(f"paired_difference needs two equal, non-empty 1-d row sets, got {right.shape} and "
                           f"{right_other.shape}")
    picks = rng("paired difference", seed, len(right)).integers(len(right), size=(BOOTSTRAP_ROUNDS, len(right)))
    differences = (right[picks].astype(float) - right_other[picks]).mean(axis=1)
    only, only_other = int(np.sum(right & ~right_other)), int(np.sum(~right & right_other))
    p = binomtest(only, only + only_other).pvalue if only + only_other else 1.0
    return dict(difference=float(right.mean() - right_other.mean()), low=float(np.quantile(differences, 0.025)),
                high=float(np.quantile(differences, 0.975)), p_value=float(p), n=len(right))


def target_summary(frame: pd.DataFrame, made: Choice) -> dict:
    """One row of an all-targets overview from :func:`evaluate_and_choose`'s result: K and lam, every
    candidate's target accuracy, and the chosen candidate with its accuracy (target labels only score)."""
    at = frame[frame.role == "target"].set_index(["method", "protocol"]).accuracy
    accuracy = {c.label: float(at.get((c.method, c.protocol), np.nan)) for c in candidates()}
    pick = made.chosen.candidate
    return dict(target=made.target, K=int(frame.K.iloc[0]), lam=float(frame.lam.iloc[0]), **accuracy, chosen=pick,
                chosen_accuracy=accuracy[pick])
