"""Leave-one-domain-out drops the prompts that name the held-out domain (unless asked to keep them),
and Orth-Cali is built from the text banks: spurious prompts and same-class prompt pairs."""
from dataclasses import replace

import numpy as np
import pytest

from clip_icm.embeddings import PairSet, PromptSet
from clip_icm.evaluation import EvalConfig, evaluate_split, fit_projection
from clip_icm.interventions import names_domain, spurious_prompts, text_pair_words, variant_words
from clip_icm.projection import InvariantProjection, OrthCaliProjection, stack_pairs
from clip_icm.scm import SCMConfig, make_embedding_set

WORDS = np.array(["sketch", "painting", "on sandy beach", "black and white"])
CONFIG = EvalConfig(n_components=6, lam=1e3, lam_mode="absolute", methods=("icm", "orth_cali"))


@pytest.fixture(scope="module")
def emb():
    base = make_embedding_set(SCMConfig(n_invariant=6, n_variant=10, n_classes=3, seed=2), 100,
                              ("photo", "art_painting", "sketch"))
    text = base.pair_set("text")
    words = WORDS[np.arange(len(text.z)) % len(WORDS)]
    spurious = PromptSet(np.array([f"{w} thing" for w in WORDS]), base.spurious.z[:4], WORDS)
    prompts = base.attribute_prompts  # template 0 the anchor, templates 1-3 its variants: name them
    named = np.array(["", *WORDS[:3]])[[0 if w == "" else int(w.split()[1]) for w in prompts.variant_words]]
    return replace(base, pairs=[base.pair_set("true"), replace(text, variant_words=words)], spurious=spurious,
                   attribute_prompts=replace(prompts, variant_words=named))


def test_domain_names_match_variant_words():
    assert variant_words("a photo of a {}.", "a sketch of a {}.") == "sketch"
    assert variant_words("a photo of a {}.", "a photo of a {} on a sandy beach.") == "on sandy beach"
    assert names_domain("painting", "art_painting") and names_domain("clipart", "Clipart")
    assert names_domain("pixel art", "Art") and names_domain("sketch", "sketch")
    assert not names_domain("black and white", "photo")  # the anchor's own word is never a variant word
    assert not names_domain("on sandy beach", "Real World") and not names_domain("a", "a")
    texts, words = spurious_prompts(("styles",))
    # every value of the attribute, the anchor's too (as debias_vl lists land and water backgrounds)
    assert texts[:2] == ["a photo of a thing.", "a sketch of a thing."] and words[:2] == ["", "sketch"]
    assert "{}" not in "".join(texts) and len(texts) == 11
    assert len(spurious_prompts(("styles", "contexts"))[0]) == 21  # the shared anchor once
    assert len(text_pair_words(["dog", "cat"], ("styles",), 3)) == 6


def _fitted_on(emb, target, keep):
    pairs = [p.excluding(target) for p in emb.pairs]
    if not keep:
        pairs = [p if p.variant_words is None else p.subset(~np.isin(p.variant_words, keep_out(target)))
                 for p in pairs]
    return InvariantProjection(6, 1e3).fit(*stack_pairs(pairs))


def keep_out(target):
    return [w for w in WORDS if names_domain(w, target)]


@pytest.mark.parametrize("target, dropped", [("sketch", ["sketch"]), ("art_painting", ["painting"]), ("photo", [])])
def test_target_named_prompts_are_dropped_by_default(emb, target, dropped):
    assert keep_out(target) == dropped
    default = fit_projection(emb, target, "icm", CONFIG)
    np.testing.assert_allclose(default.components_, _fitted_on(emb, target, keep=False).components_, atol=1e-10)
    kept = fit_projection(emb, target, "icm", replace(CONFIG, keep_target_styles=True))
    np.testing.assert_allclose(kept.components_, _fitted_on(emb, target, keep=True).components_, atol=1e-10)
    assert (np.abs(kept.components_ - default.components_).max() > 1e-6) == bool(dropped)


def test_orth_cali_from_the_banks_drops_target_prompts_and_calibrates_text_only(emb):
    fitted = fit_projection(emb, "sketch", "orth_cali", CONFIG)
    assert isinstance(fitted, OrthCaliProjection) and fitted.lam_effective_ == 1000.0  # its own lam
    prompts = emb.attribute_prompts  # debias_vl's pairs: same class, two variants, none naming the target
    first, second = zip(*[(i, j) for i in range(len(prompts.z)) for j in range(i + 1, len(prompts.z))
                          if prompts.labels[i] == prompts.labels[j]
                          and "" != prompts.variant_words[i] != "sketch" and "" != prompts.variant_words[j] != "sketch"])
    assert len(first) == 3 * 1  # per class the two variants left ("painting", "on sandy beach"): one pair
    spurious = emb.spurious.z[emb.spurious.variant_words != "sketch"]
    direct = OrthCaliProjection(1000.0).fit(prompts.z[list(first)], prompts.z[list(second)], spurious)
    np.testing.assert_allclose(fitted.components_, direct.components_, atol=1e-10)
    unit = spurious / np.linalg.norm(spurious, axis=1, keepdims=True)
    np.testing.assert_allclose(fitted.components_.T @ unit.T, 0.0, atol=1e-8)  # P's outputs lose the prompts
    other = fit_projection(emb, "sketch", "orth_cali", replace(CONFIG, orth_cali_lam=10.0))
    assert other.lam_effective_ == 10.0
    frame = evaluate_split(emb, "sketch", CONFIG)
    orth = frame[frame.method == "orth_cali"].set_index("protocol").accuracy
    assert orth["linear probe"].isna().all() and orth["zero-shot"].notna().all()


def test_orth_cali_leaves_images_untouched(emb):
    """Zero-shot = argmax of cos(raw image, re-normalised P t_c): no P on the image side."""
    from clip_icm.evaluation import predict_all, zero_shot_classifier

    fitted = fit_projection(emb, "sketch", "orth_cali", CONFIG)
    weights = zero_shot_classifier(emb.text_features, fitted)
    expected = np.argmax(emb.features @ weights.T, axis=1)
    np.testing.assert_array_equal(predict_all(emb, "sketch", "orth_cali", CONFIG)["zero-shot"], expected)
    twice = np.argmax(fitted.transform(emb.features) @ weights.T, axis=1)  # what projecting images would give
    assert (twice != expected).any()


def test_pair_set_columns_follow_subsets():
    p = PairSet("t", "text", np.eye(3), np.eye(3) * 2, labels=np.array([0, 1, 2]), held_out="x",
                variant_words=np.array(["a", "b", "c"]))
    sub = p.subset(np.array([True, False, True]))
    assert sub.labels.tolist() == [0, 2] and sub.variant_words.tolist() == ["a", "c"] and sub.held_out == "x"
    with pytest.raises(ValueError, match="labels"):
        PairSet("t", "text", np.eye(3), np.eye(3), labels=np.array([0]))


def test_cross_modal_words_line_up_with_the_texts():
    from clip_icm.interventions import cross_modal_texts, cross_modal_words

    labels = np.array([0, 1, 0, 1, 1, 0, 0, 1] * 3)
    texts = cross_modal_texts(labels, ["dog", "cat"], ("styles", "contexts"), seed=4)
    words = cross_modal_words(len(labels), ("styles", "contexts"), seed=4)
    assert len(set(words)) > 3
    for text, w, y in zip(texts, words, labels):
        assert variant_words("a photo of a {}.", text.replace(["dog", "cat"][y], "{}")) == w


def test_orth_cali_without_text_banks_is_n_a_not_a_failed_split(emb):
    bare = replace(emb, pairs=[emb.pair_set("true")], spurious=None)
    with pytest.warns(UserWarning, match="Orth-Cali is built from text banks and these embeddings have none"):
        frame = evaluate_split(bare, "sketch", CONFIG)
    assert frame[frame.method == "orth_cali"].accuracy.isna().all()
    assert frame[frame.method == "icm"].accuracy.notna().all()
