"""The model choice (clip_icm.choice): one score for every candidate (source checks, and in the opt-in mode
how sure it is on the unlabelled target images), the simplest unless beaten by more than the paired standard
error, deterministic, blind to target labels (and, source-only, to target images); and the paired description
of a result."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from clip_icm import choice, defaults, methods
from clip_icm.errors import InvalidInput
from clip_icm.evaluation import FULL_SPACE, LINEAR_PROBE, ZERO_SHOT, EvalConfig, without_domain
from clip_icm.scm import SCMConfig, make_embedding_set

DOMAINS = ("photo", "cartoon", "sketch")
TARGET = "sketch"  # the shifted domain: its shortcut is reversed
CONFIG = EvalConfig(n_components=6, lam=1e4, lam_mode="absolute", methods=("icm",))


@pytest.fixture(scope="module")
def emb():
    return make_embedding_set(SCMConfig(n_invariant=6, n_variant=10, n_classes=3, seed=2), n_per_domain=150,
                              domains=DOMAINS)


@pytest.fixture(scope="module")
def made(emb):
    return choice.choose_model(emb, TARGET, CONFIG)


def test_candidates_come_from_the_specs_simplest_first_with_their_heads():
    got = [(c.method, c.protocol) for c in choice.candidates()]
    assert got == [(FULL_SPACE, ZERO_SHOT), (FULL_SPACE, LINEAR_PROBE), ("augmentation", LINEAR_PROBE),
                   ("icm", ZERO_SHOT), ("icm", LINEAR_PROBE)]
    ranked = {s.name for s in (methods.FULL_SPACE, *methods.SPECS) if s.choice_rank is not None}
    assert {c.method for c in choice.candidates()} == ranked
    # An augmented probe's zero-shot is the space it probes: no second CLIP zero-shot candidate.
    assert methods.spec("augmentation").choice_heads == (LINEAR_PROBE,)
    assert methods.spec("orth_cali").choice_heads == (ZERO_SHOT,)


def test_a_more_complex_candidate_wins_only_by_more_than_its_paired_standard_error(made):
    table = made.table
    assert list(table.candidate) == [c.label for c in choice.candidates()]
    assert table.chosen.sum() == 1
    assert ((table.score >= 0) & (table.score <= 1) & (table.se >= 0) & (table.margin >= 0)).all()
    current = 0  # replay the rule from the table: each candidate challenges the choice so far
    for i in range(1, len(table)):
        assert table.challenged[i] == table.candidate[current]
        if table.score[i] - table.score[current] > table.margin[i]:
            current = i
    assert made.chosen.name == current
    assert made.why.startswith("It ")


def test_on_a_world_where_only_the_invariant_space_holds_icm_is_chosen(emb, made):
    # In this SCM the shortcut flips on the target: every full-space candidate fails its intervened checks.
    assert made.chosen.method == "icm"
    assert made.table.set_index("candidate").loc["CLIP probe", "intervened accuracy"] < 0.5
    frame, _ = choice.evaluate_and_choose(emb, TARGET, CONFIG, scoring=None)
    target = frame[frame.role == "target"].set_index(["method", "protocol"]).accuracy
    assert target[(made.chosen.method, made.chosen.protocol)] > target[(FULL_SPACE, LINEAR_PROBE)] + 0.2


def test_the_choice_is_deterministic(emb, made):
    again = choice.choose_model(emb, TARGET, CONFIG)
    pd.testing.assert_frame_equal(again.table, made.table)
    assert again.why == made.why


def test_no_target_label_reaches_the_choice(emb, made):
    labels = emb.labels.copy()
    in_target = emb.domains == TARGET
    labels[in_target] = np.random.default_rng(0).permutation(labels[in_target])
    assert (labels != emb.labels).any()
    checks = []
    for check in emb.intervened_val:
        moved = check.labels.copy()
        rows = check.domains == TARGET
        moved[rows] = np.random.default_rng(1).permutation(moved[rows])
        checks.append(replace(check, labels=moved))
    permuted = replace(emb, labels=labels, intervened_val=checks, key=emb.key + "-permuted")
    pd.testing.assert_frame_equal(choice.choose_model(permuted, TARGET, CONFIG).table, made.table)


@pytest.fixture(scope="module")
def unlabelled(emb):
    return choice.choose_model(emb, TARGET, CONFIG, "unlabelled-target")


def _with_target(emb, labels=None, features=None):
    """emb with the target's labels and/or image features replaced (every other row as it was)."""
    in_target = emb.domains == TARGET
    new_labels, new_features = emb.labels.copy(), emb.features.copy()
    if labels is not None:
        new_labels[in_target] = labels
    if features is not None:
        new_features[in_target] = features
    return replace(emb, labels=new_labels, features=new_features, key=emb.key + "-changed target")


def test_the_unlabelled_mode_reads_the_target_images_and_says_so(made, unlabelled):
    assert made.mode == defaults.CHOICE == "source-only" and unlabelled.mode == "unlabelled-target"
    table = unlabelled.table
    # half the source score, half the share of target images it is sure on
    assert np.allclose(table.score, (table["source score"] + table[choice.SURE]) / 2)
    assert ((table[choice.SURE] >= 0) & (table[choice.SURE] <= 1)).all()
    # the source checks are the same in both modes; the source-only mode has no target column
    pd.testing.assert_series_equal(table["source score"], made.table["source score"])
    assert choice.SURE not in made.table and np.allclose(made.table.score, made.table["source score"])
    assert "unlabelled target images, never their labels" in unlabelled.why
    assert "target images" not in made.why and "on the source checks" in made.why
    assert "unlabelled target images" in choice.rule_text("unlabelled-target")
    assert "target images" not in choice.rule_text("source-only")
    # the noisier evidence needs the wider margin, and the sentence says which
    assert "two standard errors" in choice.rule_text("unlabelled-target")
    assert "one standard error" in choice.rule_text("source-only")


@pytest.mark.parametrize("mode", defaults.CHOICE_MODES)
def test_permuting_the_target_labels_leaves_each_mode_unchanged(emb, mode):
    labels = np.random.default_rng(3).permutation(emb.labels[emb.domains == TARGET])
    assert (labels != emb.labels[emb.domains == TARGET]).any()
    pd.testing.assert_frame_equal(choice.choose_model(_with_target(emb, labels=labels), TARGET, CONFIG, mode).table,
                                  choice.choose_model(emb, TARGET, CONFIG, mode).table)


def test_the_source_only_mode_never_reads_a_target_image(emb, made, unlabelled):
    # NaN target images: any arithmetic on them would show (a NaN score, or sklearn refusing them).
    blind = _with_target(emb, features=np.full((int(np.sum(emb.domains == TARGET)), emb.features.shape[1]), np.nan))
    pd.testing.assert_frame_equal(choice.choose_model(blind, TARGET, CONFIG, "source-only").table, made.table)
    # ... while the unlabelled mode does read them: noise in place of the target's images changes its sure share
    noise = np.random.default_rng(4).normal(size=(int(np.sum(emb.domains == TARGET)), emb.features.shape[1]))
    moved = choice.choose_model(_with_target(emb, features=noise), TARGET, CONFIG, "unlabelled-target").table
    assert not np.allclose(moved[choice.SURE], unlabelled.table[choice.SURE])
    pd.testing.assert_series_equal(moved["source score"], unlabelled.table["source score"])


def test_a_probe_whose_shortcut_breaks_on_the_target_is_unsure_there(unlabelled):
    # The target reverses the shortcut that CLIP's probe learned: it is unsure on far more target images
    # than the 5 % of source validation rows it is unsure on by construction.
    sure = unlabelled.table.set_index("candidate")[choice.SURE]
    assert sure["CLIP probe"] < 0.8 and sure["CLIP probe"] < sure["ICM probe"]


def test_a_mode_that_is_not_one_is_refused(emb):
    with pytest.raises(InvalidInput, match="source-only, unlabelled-target"):
        choice.choose_model(emb, TARGET, CONFIG, "target-labels")
    with pytest.raises(InvalidInput, match="mode"):
        choice.evaluate_and_choose(emb, TARGET, CONFIG, scoring=None, mode="oracle")


def test_every_source_domain_is_scored_on_validation_intervened_and_held_out_rows(emb):
    outcomes = choice.check_outcomes(emb, TARGET, "icm", (ZERO_SHOT,), CONFIG)[ZERO_SHOT]
    sources = [d for d in DOMAINS if d != TARGET]
    assert {domain for domain, _, _ in outcomes} == set(sources)
    for domain in sources:
        kinds = {check: len(right) for d, check, right in outcomes if d == domain}
        assert "validation" in kinds and choice.HELD_OUT in kinds and len(kinds) >= 3
        assert kinds[choice.HELD_OUT] == int(np.sum(emb.domains == domain))  # the whole domain held out


def test_evaluate_and_choose_marks_exactly_the_chosen_target_row(emb):
    frame, made = choice.evaluate_and_choose(emb, TARGET, replace(CONFIG, methods=("pca",)), scoring=None)
    assert {"icm", "augmentation", "pca"} <= set(frame.method)  # the candidates are evaluated too
    marked = frame[frame.chosen]
    assert len(marked) == 1 and marked.role.item() == "target"
    assert (marked.method.item(), marked.protocol.item()) == (made.chosen.method, made.chosen.protocol)
    assert set(made.versus_clip.versus) <= {"CLIP zero-shot", "CLIP probe"} and len(made.versus_clip) >= 1


def test_a_target_that_leaves_one_source_domain_cannot_be_chosen_for(emb):
    two = without_domain(emb, "cartoon")  # photo and sketch: the target leaves photo alone
    with pytest.raises(InvalidInput, match="at least 2 source domains"):
        choice.choose_model(two, TARGET, CONFIG)


def test_paired_difference_on_known_rows():
    right = np.array([True] * 10 + [False] * 5 + [True] * 5)
    other = np.array([False] * 10 + [False] * 5 + [True] * 5)
    out = choice.paired_difference(right, other, seed=0)
    assert out["difference"] == pytest.approx(0.5) and out["n"] == 20
    assert out["p_value"] == pytest.approx(2 * 0.5 ** 10)  # McNemar exact: 10 discordant rows, all one way
    assert out["low"] <= out["difference"] <= out["high"]
    same = choice.paired_difference(right, right)
    assert same["difference"] == 0 and same["p_value"] == 1.0 and same["low"] == same["high"] == 0


@pytest.mark.parametrize("a, b", [(np.ones(3, bool), np.ones(4, bool)), (np.ones(0, bool), np.ones(0, bool)),
                                  (np.ones((2, 2), bool), np.ones((2, 2), bool))])
def test_paired_difference_refuses_rows_that_do_not_pair(a, b):
    with pytest.raises(InvalidInput, match="paired_difference"):
        choice.paired_difference(a, b)


def test_domain_share_is_the_between_domain_part_of_the_variance():
    domains = np.array(["a", "a", "b", "b"])
    apart = np.array([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]])  # unit rows after scaling
    # centred unit rows: (±0.995, ±0.0995); between-domain part: the first coordinate's
    assert choice.domain_share(apart, domains) == pytest.approx(1 / (1 + 0.1 ** 2))
    across = np.array(["a", "b", "a", "b"])  # now the domains differ only in the second coordinate
    assert choice.domain_share(apart, across) == pytest.approx(0.1 ** 2 / (1 + 0.1 ** 2))
    with_one = np.array(["a"] * 4)
    assert choice.domain_share(apart, with_one) == 0


def _lost_table(made, held_out: float, intervened: float) -> pd.DataFrame:
    """made's table with the ICM probe not chosen and the given check accuracies."""
    table = made.table.copy()
    probe = (table.method == "icm") & (table.protocol == LINEAR_PROBE)
    table["chosen"] = np.arange(len(table)) == 0
    table.loc[probe, ["validation accuracy", "intervened accuracy", f"{choice.HELD_OUT} accuracy"]] = \
        [0.99, intervened, held_out]
    return table


def test_the_shortfall_says_why_a_probe_fails_on_a_held_out_domain(emb, made):
    said = choice.probe_shortfall(emb, TARGET, CONFIG, _lost_table(made, held_out=0.8, intervened=0.95))
    assert said.startswith("Why ICM probe falls short") and "80.0%" in said and "99.0%" in said
    sources = emb.domains != TARGET
    full = choice.domain_share(emb.features[sources], emb.domains[sources])
    assert f"{full:.0%} in CLIP's" in said or said.endswith("validation rows.")
    # another check is the weakest: nothing to explain here
    assert choice.probe_shortfall(emb, TARGET, CONFIG, _lost_table(made, held_out=0.9, intervened=0.5)) is None
    chosen = _lost_table(made, held_out=0.8, intervened=0.95)
    chosen["chosen"] = (chosen.method == "icm") & (chosen.protocol == LINEAR_PROBE)
    assert choice.probe_shortfall(emb, TARGET, CONFIG, chosen) is None  # it won: no shortfall
