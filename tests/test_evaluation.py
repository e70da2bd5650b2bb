"""Evaluation protocol on a synthetic EmbeddingSet: zero-shot, probe, LODO, and no peeking."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from clip_icm.evaluation import (
    ALL_METHODS,
    EvalConfig,
    evaluate_split,
    fit_linear_probe,
    fit_projection,
    leave_one_domain_out,
    select_hyperparameters,
    sweep,
    without_domain,
    zero_shot_classifier,
    zero_shot_predict,
)
from clip_icm.evaluation import FULL_SPACE, LINEAR_PROBE, ZERO_SHOT, predict_all, select_and_evaluate, source_score
from clip_icm.methods import METHODS
from clip_icm.projection import InvariantProjection
from clip_icm.scm import SCMConfig, make_embedding_set

DOMAINS = ("photo", "cartoon", "sketch")
TARGET = "sketch"  # the shifted domain: its shortcut is reversed
CONFIG = EvalConfig(n_components=6, lam=1e4, lam_mode="absolute")


@pytest.fixture(scope="module")
def emb():
    scm = SCMConfig(n_invariant=6, n_variant=10, n_classes=3, seed=2)
    # The set carries the SCM's true do-intervention of the validation rows as intervened validation
    # (its pairs, for fitting, come from the training rows only).
    return make_embedding_set(scm, n_per_domain=150, domains=DOMAINS)


def _with_target_labels_permuted(emb, seed=0):
    labels = emb.labels.copy()
    target = emb.domains == TARGET
    labels[target] = np.random.default_rng(seed).permutation(labels[target])
    assert (labels != emb.labels).any()
    checks = []
    for check in emb.intervened_val:
        check_labels = check.labels.copy()
        in_target = check.domains == TARGET
        check_labels[in_target] = np.random.default_rng(seed).permutation(check_labels[in_target])
        checks.append(replace(check, labels=check_labels))
    return replace(emb, labels=labels, intervened_val=checks)


def test_zero_shot_classifier_convention():
    gen = np.random.default_rng(0)
    text = gen.normal(size=(3, 4, 8)) * gen.uniform(1, 5, size=(3, 4, 1))
    weights = zero_shot_classifier(text)
    unit = text / np.linalg.norm(text, axis=-1, keepdims=True)
    expected = unit.mean(axis=0)
    np.testing.assert_allclose(weights, expected / np.linalg.norm(expected, axis=1, keepdims=True))
    proj = InvariantProjection(3, 1.0).fit(gen.normal(size=(20, 8)), gen.normal(size=(20, 8)))
    projected = zero_shot_classifier(text, proj)
    raw = (unit.reshape(12, 8) @ proj.components_.T).reshape(3, 4, 3).mean(axis=0)
    np.testing.assert_allclose(projected, raw / np.linalg.norm(raw, axis=1, keepdims=True))
    np.testing.assert_allclose(zero_shot_classifier(text, proj, renormalise=False), raw)
    with pytest.raises(ValueError, match="templates, classes, D"):
        zero_shot_classifier(text[0])


def test_zero_shot_predict_uses_cosine():
    means = np.eye(3, 5) * 10
    text = means[None]
    images = np.repeat(means, 4, axis=0) * np.arange(1, 13)[:, None]  # norms vary wildly
    np.testing.assert_array_equal(zero_shot_predict(images, text), np.repeat(np.arange(3), 4))


def test_linear_probe_chooses_c_on_validation(emb):
    train, val = emb.is_train, ~emb.is_train
    Cs = (1e-4, 0.1, 10.0)
    probe = fit_linear_probe(emb.features[train], emb.labels[train], emb.features[val], emb.labels[val], Cs)
    chosen = probe[-1].C
    assert chosen in Cs
    # C is tried along one warm-started path (tol 1e-3), so a cold refit at one C can differ by a
    # few rows; compare along the same path instead: every prefix of the grid walks the same fits,
    # so the kept model's score can only grow with the prefix and ends at the path's best.
    scores = [fit_linear_probe(emb.features[train], emb.labels[train], emb.features[val], emb.labels[val],
                               Cs[:i + 1]).score(emb.features[val], emb.labels[val]) for i in range(len(Cs))]
    assert scores == sorted(scores) and scores[-1] == probe.score(emb.features[val], emb.labels[val])
    with pytest.raises(ValueError, match="2 classes"):
        fit_linear_probe(emb.features[:5], np.zeros(5), emb.features[:5], np.zeros(5))


def test_evaluate_split_rows(emb):
    frame = evaluate_split(emb, TARGET, CONFIG)
    assert {"target", "domain", "role", "method", "protocol", "accuracy", "n"} <= set(frame.columns)
    assert set(frame.method) == {"CLIP", *ALL_METHODS}
    assert set(frame.protocol) == {"zero-shot", "linear probe"}
    assert len(frame) == len(DOMAINS) * (1 + len(ALL_METHODS)) * 2
    target_rows = frame[frame.role == "target"]
    assert set(target_rows.domain) == {TARGET} and (target_rows.n == 150).all()  # whole target domain
    for domain in DOMAINS[:-1]:
        n_val = int(((emb.domains == domain) & ~emb.is_train).sum())
        assert (frame[frame.domain == domain].n == n_val).all()
    text_only = frame.method.map(lambda m: m != "CLIP" and METHODS.get(m).text_only)
    assert set(frame.method[text_only]) == {"orth_cali", "orth_cali_class_free"}
    text_only_probe = text_only & (frame.protocol == "linear probe")
    assert frame.accuracy[text_only_probe].isna().all()  # Orth-Cali calibrates text: no probe (n/a)
    assert frame.accuracy[~text_only_probe].between(0, 1).all()
    assert (frame.preset == "ours").all()


def test_icm_beats_full_space_on_shifted_target(emb):
    frame = evaluate_split(emb, TARGET, replace(CONFIG, methods=("icm", "icm_as_released")))
    acc = frame[frame.role == "target"].set_index(["method", "protocol"]).accuracy
    for protocol in ("linear probe", "zero-shot"):
        assert acc["icm", protocol] > acc["CLIP", protocol] + 0.1
        assert acc["icm", protocol] > acc["icm_as_released", protocol] + 0.1


def test_evaluation_never_fits_on_target_labels(emb):
    """Source rows and target predictions cannot depend on target labels: permuting them
    changes target accuracies only through the scoring itself."""
    base = evaluate_split(emb, TARGET, CONFIG)
    permuted = evaluate_split(_with_target_labels_permuted(emb), TARGET, CONFIG)
    pd.testing.assert_frame_equal(base[base.role == "source"], permuted[permuted.role == "source"])


def test_projection_ignores_target_pairs(emb):
    """Pairs from the target domain are dropped: making them NaN changes nothing."""
    true_pairs = emb.pair_set("true")
    poisoned_z = np.where((true_pairs.domains == TARGET)[:, None], np.nan, true_pairs.z)
    poisoned = replace(emb, pairs=[replace(true_pairs, z=poisoned_z), emb.pair_set("text")])
    for method in ALL_METHODS:
        np.testing.assert_array_equal(
            fit_projection(poisoned, TARGET, method, CONFIG).components_,
            fit_projection(emb, TARGET, method, CONFIG).components_,
        )


@pytest.mark.parametrize("scoring", ["source_val", "source_domains", "interventional"])
def test_selection_never_reads_target_labels(emb, scoring):
    grid = dict(Ks=(2, 6, 10), lams=(0.0, 1e4), config=CONFIG, scoring=scoring)
    K, lam, scores = select_hyperparameters(emb, TARGET, "icm", **grid)
    K2, lam2, scores2 = select_hyperparameters(_with_target_labels_permuted(emb), TARGET, "icm", **grid)
    assert (K, lam) == (K2, lam2)
    pd.testing.assert_frame_equal(scores, scores2)
    assert list(scores.columns) == ["K", "lam", "score"] and len(scores) == 6
    assert scores.loc[scores.score.idxmax(), ["K", "lam"]].tolist() == [K, lam]


def test_without_domain(emb):
    sources = without_domain(emb, TARGET)
    assert TARGET not in sources.domain_names and len(sources.labels) == 300
    assert TARGET not in set(sources.pair_set("true").domains)


def test_leave_one_domain_out_covers_all_targets(emb):
    frame = leave_one_domain_out(emb, config=replace(CONFIG, methods=("icm",)))
    assert sorted(frame.target.unique()) == sorted(DOMAINS)
    assert (frame.groupby("target").role.apply(lambda r: (r == "target").sum()) == 4).all()


def test_sweep_grid(emb):
    frame = sweep(emb, TARGET, Ks=(2, 6), lams=(0.0, 1e4), config=CONFIG)
    assert len(frame) == 4
    assert {"K", "lam", "source_val_accuracy", "target_accuracy"} <= set(frame.columns)
    best = frame.set_index(["K", "lam"]).target_accuracy
    assert best[6, 1e4] > best[6, 0.0]  # invariance helps on the shifted target


def test_bad_input(emb):
    with pytest.raises(ValueError, match="unknown target domain 'nope'"):
        evaluate_split(emb, "nope", CONFIG)
    with pytest.raises(ValueError, match="n_components"):
        evaluate_split(emb, TARGET, replace(CONFIG, n_components=999))
    with pytest.raises(KeyError, match="no pair set 'missing'; available: true, text"):
        fit_projection(emb, TARGET, "icm", replace(CONFIG, pair_sets=("missing",)))
    with pytest.raises(KeyError, match=r"available: \(none\)"):
        replace(emb, pairs=[]).pair_set("true")
    with pytest.raises(ValueError, match="scoring"):
        select_hyperparameters(emb, TARGET, scoring="target")
    with pytest.raises(ValueError, match="no K"):
        select_hyperparameters(emb, TARGET, Ks=(999,), lams=(1.0,), config=CONFIG)


def _poisoned_checks(emb):
    return replace(emb, intervened_val=[replace(c, z=np.full_like(c.z, np.nan), z_do=np.full_like(c.z_do, np.nan))
                                        for c in emb.intervened_val])


def test_intervened_validation_rows_never_enter_a_fit(emb):
    """NaN in every intervened validation row: every fit and every evaluation is unchanged
    (a NaN reaching a projection or a probe would raise or spread)."""
    poisoned = _poisoned_checks(emb)
    config = replace(CONFIG, methods=ALL_METHODS)
    pd.testing.assert_frame_equal(evaluate_split(poisoned, TARGET, config), evaluate_split(emb, TARGET, config))
    for method in ALL_METHODS:
        np.testing.assert_array_equal(fit_projection(poisoned, TARGET, method, CONFIG).components_,
                                      fit_projection(emb, TARGET, method, CONFIG).components_)
    for protocol, predicted in predict_all(poisoned, TARGET, "icm", CONFIG).items():
        np.testing.assert_array_equal(predicted, predict_all(emb, TARGET, "icm", CONFIG)[protocol])
    # only the interventional score reads them, and it cannot score NaN rows
    with pytest.raises(ValueError, match="NaN"):
        source_score(poisoned, TARGET, "icm", CONFIG, "interventional")


@pytest.mark.parametrize("protocol", [LINEAR_PROBE, ZERO_SHOT])
def test_interventional_score_is_the_worst_of_validation_and_intervened_validation(emb, protocol):
    interventional = source_score(emb, TARGET, FULL_SPACE, CONFIG, "interventional", protocol)
    validation = source_score(emb, TARGET, FULL_SPACE, CONFIG, "source_val", protocol)
    assert 0.0 <= interventional <= validation
    # the full-space shortcut works on validation rows and fails where z_var was re-drawn
    if protocol == LINEAR_PROBE:
        assert validation - interventional > 0.05


def test_interventional_scoring_needs_intervened_rows(emb):
    with pytest.raises(ValueError, match="needs intervened validation rows"):
        select_hyperparameters(replace(emb, intervened_val=[]), TARGET, "icm", (2,), (1.0,), CONFIG,
                               scoring="interventional")
    with pytest.raises(ValueError, match="every image went to training"):  # nothing was held out to intervene on
        select_hyperparameters(replace(emb, is_train=np.ones_like(emb.is_train), intervened_val=[]), TARGET, "icm",
                               (2,), (1.0,), CONFIG, scoring="interventional")
    with pytest.raises(ValueError, match="scoring must be one of"):
        source_score(emb, TARGET, "icm", CONFIG, "target_peek")


def test_select_and_evaluate_names_its_rule_and_uses_the_chosen_setting(emb):
    frame = select_and_evaluate(emb, TARGET, replace(CONFIG, methods=("icm", "pca")), "interventional",
                                Ks=(2, 6), lams=(0.0, 1e4))
    K, lam, _ = select_hyperparameters(emb, TARGET, "icm", (2, 6), (0.0, 1e4), CONFIG, scoring="interventional")
    assert set(frame.selected_by) == {"source validation + intervened source validation"}
    assert set(frame.K) == {K} and set(frame.lam) == {lam}
    assert set(select_and_evaluate(emb, TARGET, CONFIG).selected_by) == {"fixed"}


def test_augmentation_trains_on_intervened_source_images_only(emb):
    """The augmentation probe changes with the source pairs' intervened images and ignores the
    target's; without image pairs it says what it needs."""
    config = replace(CONFIG, methods=("augmentation",))
    frame = evaluate_split(emb, TARGET, config)
    full = frame[frame.method == FULL_SPACE].set_index(["domain", "protocol"]).accuracy
    aug = frame[frame.method == "augmentation"].set_index(["domain", "protocol"]).accuracy
    assert (full.xs(ZERO_SHOT, level="protocol") == aug.xs(ZERO_SHOT, level="protocol")).all()  # same space
    assert not full.xs(LINEAR_PROBE, level="protocol").equals(aug.xs(LINEAR_PROBE, level="protocol"))
    true = emb.pair_set("true")
    in_target = (true.domains == TARGET)[:, None]
    poisoned = replace(emb, pairs=[replace(true, z_do=np.where(in_target, np.nan, true.z_do)), emb.pair_set("text")])
    pd.testing.assert_frame_equal(evaluate_split(poisoned, TARGET, config), frame)
    with pytest.raises(ValueError, match="Augmentation trains on intervened images"):
        evaluate_split(emb, TARGET, replace(config, pair_sets=("text",)))


def test_unknown_prompt_set_and_missing_look_prompts(emb):
    with pytest.raises(ValueError, match="unknown zero-shot prompt set .captions.; available: classes, usual_look"):
        EvalConfig(prompts="captions")
    with pytest.raises(ValueError, match="usual-look prompts for target 'sketch'"):
        evaluate_split(emb, TARGET, EvalConfig(prompts="usual_look"))


def test_selection_reads_only_the_checks_built_for_its_target(emb):
    """A check built for another held-out target (it read that target's training rows) is left
    out: poisoning it changes nothing; the one built for this target is used."""
    (check,) = emb.intervened_val
    other = replace(check, name="conflict@photo", held_out="photo", z_do=np.full_like(check.z_do, np.nan))
    grid = dict(Ks=(2, 6), lams=(0.0, 1e4), config=CONFIG, scoring="interventional")
    base = select_hyperparameters(emb, TARGET, "icm", **grid)
    with_other = select_hyperparameters(replace(emb, intervened_val=[check, other]), TARGET, "icm", **grid)
    pd.testing.assert_frame_equal(base[2], with_other[2])
    ours = replace(check, name=f"conflict@{TARGET}", held_out=TARGET, z_do=np.full_like(check.z_do, np.nan))
    with pytest.raises(ValueError, match="NaN"):
        select_hyperparameters(replace(emb, intervened_val=[check, ours]), TARGET, "icm", **grid)


def test_refits_from_kept_moments_equal_fresh_fits(emb):
    """K and lam changes reuse the pair moments and CLIP's rows kept for this EmbeddingSet; the
    results equal a fit from scratch (memo cleared) and a projection fitted on the raw pairs."""
    from clip_icm.evaluation import _Memo
    from clip_icm.methods import METHODS, make_projection
    from clip_icm.projection import stack_pairs

    configs = [replace(CONFIG, methods=ALL_METHODS, n_components=k, lam=lam) for k in (2, 6) for lam in (10.0, 1e4)]
    warm = [evaluate_split(emb, TARGET, c) for c in configs]
    for config, frame in zip(configs, warm):
        _Memo.clear()
        pd.testing.assert_frame_equal(frame, evaluate_split(emb, TARGET, config))
    Z, Z_do = stack_pairs([p.excluding(TARGET) for p in emb.pairs])
    for method in [m for m in ALL_METHODS if not METHODS.get(m).text_only]:  # Orth-Cali fits on prompts
        np.testing.assert_allclose(fit_projection(emb, TARGET, method, CONFIG).components_,
                                   make_projection(method, 6, 1e4).fit(Z, Z_do).components_, atol=1e-10)


@pytest.fixture
def probe_fits(monkeypatch) -> list:
    """The linear probes fitted from now on (their inputs' shapes), counted."""
    from clip_icm import evaluation

    fits = []

    def counted(*args, **kwargs):
        fits.append(args[0].shape)
        return fit_linear_probe(*args, **kwargs)

    monkeypatch.setattr(evaluation, "fit_linear_probe", counted)
    return fits


def test_a_settings_table_and_confusions_read_one_probe_fit(emb, probe_fits):
    """predict_all after evaluate_split with the same setting reads the predictions the table scored
    (the probe is not fitted again); they equal a fresh fit's, are read-only, and another K refits."""
    from clip_icm.evaluation import _Memo

    fits = probe_fits
    config = replace(CONFIG, methods=("icm",))
    _Memo.clear()
    frame = evaluate_split(emb, TARGET, config)
    assert len(fits) == 2  # CLIP's probe and ICM's
    kept = predict_all(emb, TARGET, "icm", config)
    clip = predict_all(emb, TARGET, FULL_SPACE, config)
    assert len(fits) == 2
    target = emb.domains == TARGET
    for method, predicted in (("icm", kept), (FULL_SPACE, clip)):
        for protocol in (ZERO_SHOT, LINEAR_PROBE):
            row = frame[(frame.method == method) & (frame.protocol == protocol) & (frame.domain == TARGET)]
            assert row.accuracy.item() == np.mean(predicted[protocol][target] == emb.labels[target])
    with pytest.raises(ValueError, match="read-only"):
        kept[LINEAR_PROBE][0] = 0
    kept["extra"] = None  # the caller's own dict: the kept one is unchanged
    assert "extra" not in predict_all(emb, TARGET, "icm", config)
    _Memo.clear()
    fresh = predict_all(emb, TARGET, "icm", config)
    assert len(fits) == 3
    for protocol in (ZERO_SHOT, LINEAR_PROBE):
        np.testing.assert_array_equal(fresh[protocol], kept[protocol])
    other = replace(config, n_components=2)
    predict_all(emb, TARGET, "icm", other)
    assert len(fits) == 4
    predict_all(emb, TARGET, "icm", other)
    assert len(fits) == 4


def test_clips_confusions_at_any_setting_read_the_tables_probe_fit(emb, probe_fits):
    """CLIP in the full space reads no K, lam or pair set: its confusions at the setting the dashboard
    asks them for (K and lam fixed, service.with_unused_fixed) read the predictions the table scored at
    the sliders' (a first page at 50,000 images fitted CLIP's 512-dimension probe twice, 4 s), and they
    equal a fresh fit's; another probe setting (its Cs) is fitted again."""
    from clip_icm.evaluation import _Memo

    fits = probe_fits
    config = replace(CONFIG, methods=("icm",))
    _Memo.clear()
    evaluate_split(emb, TARGET, config)
    assert len(fits) == 2
    fixed = replace(config, n_components=1, lam=1.0)  # as service.with_unused_fixed(FULL_SPACE, config)
    kept = predict_all(emb, TARGET, FULL_SPACE, fixed)
    assert len(fits) == 2
    _Memo.clear()
    fresh = predict_all(emb, TARGET, FULL_SPACE, fixed)
    assert len(fits) == 3
    for protocol in (ZERO_SHOT, LINEAR_PROBE):
        np.testing.assert_array_equal(fresh[protocol], kept[protocol])
    predict_all(emb, TARGET, FULL_SPACE, replace(fixed, probe_Cs=(1.0,)))
    assert len(fits) == 4
