import json

import numpy as np
import pytest
import torch
from PIL import Image

from clip_icm.interventions import (
    IMAGE_INTERVENTIONS,
    TEXT_BANKS,
    ZERO_SHOT_TEMPLATES,
    RandomIntervention,
    TextBank,
    cross_modal_texts,
    make_image_intervention,
    make_text_pairs,
    validate_template,
)
from tests.folders import class_image

NAMES = IMAGE_INTERVENTIONS.available()


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(class_image(1, "photo", 0, size=40))  # not square: size order matters


def pixels(im):
    return np.asarray(im)


def test_registry_holds_the_seven_paper_ops():
    assert set(NAMES) == {"colour_jitter", "grayscale", "gaussian_blur", "invert", "posterize", "solarize", "equalize"}


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output(name, image):
    op = make_image_intervention(name)
    assert (pixels(op(image, 7)) == pixels(op(image, 7))).all()


@pytest.mark.parametrize("name", NAMES)
def test_preserves_mode_and_size_and_changes_the_image(name):
    im = Image.fromarray(class_image(2, "photo", 0, size=48)[:, :30])
    op = make_image_intervention(name)
    for seed in range(5):
        out = op(im, seed)
        assert out.mode == "RGB" and out.size == im.size
        assert (pixels(out) != pixels(im)).any(), f"{name} with seed {seed} left the image unchanged"
    assert im.mode == "RGB" and pixels(im).shape == (48, 30, 3)  # input untouched


@pytest.mark.parametrize("name", [n for n in NAMES if IMAGE_INTERVENTIONS.get(n).random])
def test_random_ops_depend_on_the_seed(name, image):
    op = make_image_intervention(name)
    outputs = {pixels(op(image, s)).tobytes() for s in range(6)}
    assert len(outputs) > 1


@pytest.mark.parametrize("name", [n for n in NAMES if not IMAGE_INTERVENTIONS.get(n).random])
def test_fixed_ops_ignore_the_seed(name, image):
    op = make_image_intervention(name)
    assert (pixels(op(image, 1)) == pixels(op(image, 2))).all()


@pytest.mark.parametrize("name", NAMES)
def test_no_global_random_state(name, image):
    np.random.seed(0)
    torch.manual_seed(0)
    before = (np.random.random(), torch.rand(1).item())
    np.random.seed(0)
    torch.manual_seed(0)
    make_image_intervention(name)(image, 3)
    assert (np.random.random(), torch.rand(1).item()) == before


@pytest.mark.parametrize("name", NAMES)
def test_params_and_label(name):
    op = make_image_intervention(name)
    params = op.params()
    assert params["name"] == name
    assert json.loads(json.dumps(params)) == params  # goes into cache keys as JSON
    assert name.replace("_", " ") in op.label


def test_params_change_with_strength():
    assert make_image_intervention("posterize", bits=(3, 3)).params() != make_image_intervention("posterize").params()
    assert make_image_intervention("posterize", bits=(3, 3)).params()["bits"] == [3, 3]


def test_strength_is_applied(image):
    out = pixels(make_image_intervention("posterize", bits=(2, 2))(image, 0))
    assert len(np.unique(out)) <= 4  # 2 bits per channel
    solar = pixels(make_image_intervention("solarize", threshold=0)(image, 0))
    assert (solar == 255 - pixels(image)).all()  # threshold 0 inverts everything


def test_greyscale_has_equal_channels(image):
    out = pixels(make_image_intervention("grayscale")(image, 0))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_non_rgb_input_is_converted(image):
    out = make_image_intervention("invert")(image.convert("L"), 0)
    assert out.mode == "RGB"


@pytest.mark.parametrize("k, sigma", [(9, 0.5), (23, 2.0)])
def test_blur_matches_torchvision(image, k, sigma):
    from torchvision.transforms import functional as TF

    from clip_icm.interventions import _separable_blur

    ours = pixels(_separable_blur(image, k, sigma)).astype(int)
    reference = pixels(TF.gaussian_blur(image, [k, k], [sigma, sigma])).astype(int)
    assert np.abs(ours - reference).max() <= 1


def test_blur_works_on_images_smaller_than_the_kernel():
    tiny = Image.fromarray(class_image(0, "photo", 0, size=6))
    assert make_image_intervention("gaussian_blur", kernel=(23, 23))(tiny, 0).size == (6, 6)


@pytest.mark.parametrize(
    "name, strengths, match",
    [
        ("posterize", {"bits": (0, 4)}, "posterize bits"),
        ("posterize", {"bits": (4, 2)}, "posterize bits"),
        ("gaussian_blur", {"kernel": (8, 23)}, "odd"),
        ("gaussian_blur", {"sigma": (0.0, 2.0)}, "sigma"),
        ("solarize", {"threshold": 300}, "threshold"),
        ("colour_jitter", {"hue": 0.7}, "hue"),
        ("colour_jitter", {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}, "not change"),
        ("invert", {"strength": 1}, "parameters: \\(none\\)"),
        ("solarize", {"bits": 2}, "parameters: threshold"),
    ],
)
def test_bad_strengths(name, strengths, match):
    with pytest.raises(ValueError, match=match):
        make_image_intervention(name, **strengths)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError, match="available: colour_jitter"):
        make_image_intervention("rotate")


def test_random_picks_among_selected_per_seed(image):
    op = make_image_intervention(["invert", "grayscale"])
    assert isinstance(op, RandomIntervention)
    chosen = [op.choose(s).name for s in range(40)]
    assert set(chosen) == {"invert", "grayscale"}
    for s in (0, 1, 2):
        expected = make_image_intervention(chosen[s])(image, s)
        assert (pixels(op(image, s)) == pixels(expected)).all()
    assert op.label == "random one of: invert, grayscale"
    assert [c["name"] for c in op.params()["choices"]] == ["invert", "grayscale"]


def test_random_all_and_per_op_strengths():
    op = make_image_intervention("random", posterize={"bits": (3, 3)})
    assert {o.name for o in op.ops} == set(NAMES)
    assert next(o for o in op.ops if o.name == "posterize").bits == (3, 3)
    with pytest.raises(ValueError, match="not selected"):
        RandomIntervention(["invert"], {"posterize": {"bits": (3, 3)}})
    with pytest.raises(ValueError, match="distinct"):
        RandomIntervention(["invert", "invert"])
    assert make_image_intervention(["invert"]).name == "invert"  # one name: the op itself


# ------------------------------------------------------------------ text


@pytest.mark.parametrize("bank", TEXT_BANKS.available())
def test_builtin_banks_are_valid_and_differ_from_anchor(bank):
    b = TEXT_BANKS.get(bank)
    assert len(b.variants) >= 5
    for t in (b.anchor, *b.variants):
        assert validate_template(t) == t
    assert b.anchor not in b.variants


def test_contexts_and_styles_banks_exist():
    assert any("sandy beach" in t for t in TEXT_BANKS.get("contexts").variants)
    assert "a sketch of a {}." in TEXT_BANKS.get("styles").variants


@pytest.mark.parametrize("bad", ["a photo of a dog.", "a {} and a {}.", "a {0} photo.", "a {name}.", "a {} {", "a {!r}.", "a {:>9}.", 3])
def test_template_validation(bad):
    with pytest.raises(ValueError):
        validate_template(bad)


def test_literal_braces_are_fine():
    assert validate_template("a {{logo}} on a {}.") == "a {{logo}} on a {}."


def test_user_bank_from_strings():
    bank = TextBank.from_strings("weather", ["a {} in a storm.", "a {} in the sun.", "a {} in a storm."], anchor="a {}.")
    assert bank.variants == ("a {} in a storm.", "a {} in the sun.")  # duplicates dropped, order kept
    with pytest.raises(ValueError, match="exactly one"):
        TextBank.from_strings("bad", ["a storm."])
    with pytest.raises(ValueError, match="list of templates"):
        TextBank.from_strings("bad", "a {} in a storm.")
    with pytest.raises(ValueError, match="at least one variant"):
        TextBank.from_strings("empty", [])
    with pytest.raises(ValueError, match="also a variant"):
        TextBank.from_strings("same", ["a photo of a {}."])


def test_text_pairs_share_the_class_and_differ_only_in_variant_words():
    names = ["dog", "guitar case", "house"]
    texts, texts_do, index = make_text_pairs(names, ("styles", "contexts"), n_pairs_per_class=6, seed=0)
    assert len(texts) == len(texts_do) == len(index) == 18
    assert list(np.bincount(index)) == [6, 6, 6]
    variants = set(TEXT_BANKS.get("styles").variants) | set(TEXT_BANKS.get("contexts").variants)
    for t, t_do, c in zip(texts, texts_do, index):
        assert t == f"a photo of a {names[c]}."
        assert t_do != t and names[c] in t_do
        assert t_do.replace(names[c], "{}", 1) in variants
    per_class = [texts_do[i] for i in np.flatnonzero(index == 0)]
    assert len(set(per_class)) == 6  # no repeats while the pool lasts


def test_text_pairs_seeded_and_stable_per_class():
    a = make_text_pairs(["dog", "cat"], n_pairs_per_class=4, seed=1)
    assert a[1] == make_text_pairs(["dog", "cat"], n_pairs_per_class=4, seed=1)[1]
    assert a[1] != make_text_pairs(["dog", "cat"], n_pairs_per_class=4, seed=2)[1]
    # Adding a class leaves the pairs of the others unchanged.
    b = make_text_pairs(["dog", "cat", "owl"], n_pairs_per_class=4, seed=1)
    assert b[1][:8] == a[1]


def test_text_pairs_from_user_dict_cycle_when_more_pairs_than_variants():
    texts, texts_do, _ = make_text_pairs(["dog"], {"weather": ["a photo of a {} in a storm.", "a photo of a {} in the sun."]}, 5)
    assert set(texts_do) == {"a photo of a dog in a storm.", "a photo of a dog in the sun."}
    assert len(texts_do) == 5


def test_text_pairs_bad_input():
    with pytest.raises(ValueError, match="at least one class"):
        make_text_pairs([])
    with pytest.raises(ValueError, match="n_pairs_per_class"):
        make_text_pairs(["dog"], n_pairs_per_class=0)
    with pytest.raises(KeyError, match="available"):
        make_text_pairs(["dog"], ["no-such-bank"])
    with pytest.raises(ValueError, match="exactly one"):
        make_text_pairs(["dog"], {"mine": ["a dog on a beach."]})


def test_cross_modal_texts_name_each_image_class():
    labels = [0, 1, 1, 0]
    texts = cross_modal_texts(labels, ["dog", "cat"], ["contexts"], seed=0)
    assert len(texts) == 4
    for t, y in zip(texts, labels):
        assert ["dog", "cat"][y] in t and t.replace(["dog", "cat"][y], "{}", 1) in TEXT_BANKS.get("contexts").variants
    assert texts == cross_modal_texts(labels, ["dog", "cat"], ["contexts"], seed=0)


def test_zero_shot_templates():
    assert ZERO_SHOT_TEMPLATES.get("single") == ("a photo of a {}.",)
    ensemble = ZERO_SHOT_TEMPLATES.get("ensemble")
    assert len(ensemble) > 1 and ensemble[0] == "a photo of a {}."
    for t in ensemble:
        validate_template(t)
