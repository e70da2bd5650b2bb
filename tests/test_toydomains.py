"""ToyDomains: determinism, layout, factor table, styles, spurious split, true counterfactuals."""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from clip_icm import toydomains as td
from clip_icm.datasets import DATASETS, scan_domain_folder


def _factors(**overrides) -> td.Factors:
    base = dict(cls="star", style="photo", colour="red", background="grass", x=0.5, y=0.5, size=0.28,
                rotation=10.0, seed=123)
    return td.Factors(**{**base, **overrides})


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "toydomains"
    return td.generate_toydomains(root, n_per_class_per_domain=3, image_size=32, seed=5)


def test_layout_matches_domainbed_and_registry(small_set):
    scan = scan_domain_folder(small_set, verify="full")
    info = DATASETS.get("ToyDomains")
    assert set(scan.domain_names) == set(info.domains) == set(td.STYLES)
    assert scan.class_folders == info.classes == tuple(sorted(td.CLASSES))
    assert len(scan) == 3 * len(td.CLASSES) * len(td.STYLES)
    # factors.csv and recipe.json sit at the dataset root: metadata, not skipped images
    assert not scan.skipped
    assert DATASETS.get("ToyDomains").locate(small_set.parent) == small_set


def test_factors_csv_describes_every_image(small_set):
    with open(small_set / "factors.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == td.FACTOR_COLUMNS
    assert len(rows) == 3 * len(td.CLASSES) * len(td.STYLES)
    for row in rows:
        domain, cls, _ = row["path"].split("/")
        assert (domain, cls) == (row["domain"], row["cls"]) and row["style"] == domain
        assert (small_set / row["path"]).is_file()
        assert row["role"] == ("target" if domain == "cartoon" else "source")
    assert json.loads((small_set / "recipe.json").read_text())["seed"] == 5


def test_generation_is_deterministic_by_seed(tmp_path):
    a = td.generate_toydomains(tmp_path / "a", n_per_class_per_domain=2, image_size=24, seed=1)
    b = td.generate_toydomains(tmp_path / "b", n_per_class_per_domain=2, image_size=24, seed=1, processes=3)
    c = td.generate_toydomains(tmp_path / "c", n_per_class_per_domain=2, image_size=24, seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))  # drawn in three processes: the same world
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "factors.csv").read_text() == (b / "factors.csv").read_text()
    assert (a / "factors.csv").read_text() != (c / "factors.csv").read_text()
    assert not list(tmp_path.glob(".*")), "temporary folders must be renamed or removed"


@pytest.mark.parametrize("style", td.STYLES)
def test_every_style_renders_differently(style):
    img = np.asarray(td.render(_factors(style=style), 48), float)
    assert img.shape == (48, 48, 3)
    assert img.std() > 10  # not a blank canvas
    others = [np.asarray(td.render(_factors(style=s), 48), float) for s in td.STYLES if s != style]
    assert all(np.abs(img - o).mean() > 10 for o in others)


def test_every_class_has_its_own_shape():
    masks = [td._mask(_factors(cls=c, rotation=0.0), 64) > 0.5 for c in td.CLASSES]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.9, (td.CLASSES[i], td.CLASSES[j], iou)


def test_sketch_has_no_fill_colour():
    img = np.asarray(td.render(_factors(style="sketch", colour="red"), 48), float)
    assert (img.max(-1) - img.min(-1)).mean() < 20  # grey pencil on paper


@pytest.mark.parametrize("change", td.CHANGEABLE)
def test_counterfactual_changes_only_the_named_factor(change):
    f = _factors()
    g = td.counterfactual_factors(f, change, seed=3)
    assert getattr(g, change) != getattr(f, change)
    assert replace(g, **{change: getattr(f, change)}) == f  # nothing else moved
    assert g == td.counterfactual_factors(f, change, seed=3)  # reproducible
    original, swapped = np.asarray(td.render(f, 48), float), np.asarray(td.render_counterfactual(f, change, 3, 48), float)
    assert np.abs(original - swapped).mean() > 3


def test_colour_swap_leaves_background_pixels_alone():
    f = _factors(style="cartoon")
    a = np.asarray(td.render(f, 48), float)
    b = np.asarray(td.render_counterfactual(f, "colour", 0, 48), float)
    outside = td._mask(replace(f, size=f.size * 1.3), 96)[::2, ::2] < 0.01  # well outside the outline
    inside = td._mask(replace(f, size=f.size * 0.7), 96)[::2, ::2] > 0.99
    assert np.abs(a - b)[outside].max() <= 2  # resampling ringing only
    assert np.abs(a - b)[inside].mean() > 40


def test_counterfactual_accepts_csv_rows(small_set):
    table = td.load_factors(small_set)
    row = table.iloc[0].to_dict()
    img = td.render_counterfactual(row, "background", seed=0)
    assert img.size == (32, 32)  # the row's own image size
    assert np.array_equal(np.asarray(td.render(td.Factors.from_row(row), 32)),
                          np.asarray(Image.open(small_set / row["path"]).convert("RGB")))


# The pixels toy-clip was trained on and the demo's figures were measured with (bench/RESULTS.md):
# a faster renderer must draw them exactly; a change of picture must be deliberate (and retrain).
DEMO_PIXELS_SHA256 = "86d28f29a2657dcea0ce08ba01c6cac826dd077646b6f02cc23830b8caabd8c9"


def test_the_demo_worlds_pixels_are_the_ones_toy_clip_was_trained_on():
    rows = td.toydomains_factors(td.DEMO_RECIPE)[::40]  # 8 images of each style
    assert {r["style"] for r in rows} == set(td.STYLES)
    digest = hashlib.sha256()
    for row in rows:
        digest.update(td.render(td.Factors.from_row(row), int(row["image_size"])).tobytes())
        for change in ("colour", "background", ("colour", "background")):
            digest.update(td.render_counterfactual(row, change, 0).tobytes())
    assert digest.hexdigest() == DEMO_PIXELS_SHA256


def test_spurious_split_strength_and_reversal():
    rows = td.toydomains_factors(td.ToyDomainsRecipe(60, spurious_correlation=0.9, target_domain="cartoon",
                                                      target_mode="reversed"))
    src = [r for r in rows if r["role"] == "source"]
    tgt = [r for r in rows if r["role"] == "target"]
    agree_src = np.mean([r["colour"] == td.SPURIOUS_COLOUR[r["cls"]] for r in src])
    agree_tgt = np.mean([r["colour"] == td.SPURIOUS_COLOUR[r["cls"]] for r in tgt])
    assert 0.85 < agree_src < 0.95 and agree_tgt < 0.05
    nxt = {c: td.CLASSES[(k + 1) % len(td.CLASSES)] for k, c in enumerate(td.CLASSES)}
    assert np.mean([r["background"] == td.SPURIOUS_BACKGROUND[nxt[r["cls"]]] for r in tgt]) > 0.85
    broken = td.toydomains_factors(td.ToyDomainsRecipe(60, target_mode="broken"))
    assert np.mean([r["colour"] == td.SPURIOUS_COLOUR[r["cls"]] for r in broken if r["role"] == "target"]) < 0.3


@pytest.mark.parametrize("bad", [
    dict(spurious_correlation=1.5), dict(target_domain="clipart"), dict(target_mode="flipped"),
    dict(spurious_factors=("shape",)), dict(n_per_class_per_domain=0),
])
def test_bad_arguments_are_rejected(bad, tmp_path):
    with pytest.raises(ValueError):
        td.ToyDomainsRecipe(**bad)
    with pytest.raises(ValueError):  # a change passed to generate_toydomains is checked the same way
        td.generate_toydomains(tmp_path / "toy", **bad)
    assert not list(tmp_path.iterdir())


def test_bad_factor_values_are_rejected():
    with pytest.raises(ValueError, match="unknown colour"):
        _factors(colour="mauve")
    with pytest.raises(ValueError, match="unknown change"):
        td.counterfactual_factors(_factors(), "shape")


def test_ensure_demo_data_reuses_a_matching_folder(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(td, "generate_toydomains", lambda root, recipe, processes=1: calls.append(recipe) or root)
    (tmp_path / "factors.csv").write_text("path\n")
    (tmp_path / "recipe.json").write_text(json.dumps(td.DEMO_RECIPE.to_json()))
    assert td.ensure_demo_data(tmp_path) == tmp_path and not calls
    (tmp_path / "recipe.json").write_text(json.dumps({**td.DEMO_RECIPE.to_json(), "seed": 99}))
    td.ensure_demo_data(tmp_path)
    assert calls == [td.DEMO_RECIPE]


def test_ensure_demo_data_accepts_a_concurrent_writer(tmp_path, monkeypatch):
    def other_process_won(root, recipe, processes=1):
        (root / "factors.csv").write_text("path\n")
        (root / "recipe.json").write_text(json.dumps(recipe.to_json()))
        raise OSError("Directory not empty")

    monkeypatch.setattr(td, "generate_toydomains", other_process_won)
    assert td.ensure_demo_data(tmp_path) == tmp_path
    with pytest.raises(OSError):  # a failure that left no data set behind is not swallowed
        td.ensure_demo_data(tmp_path / "missing")


def test_usual_look_prompts_name_each_class_by_its_majority_colour_and_scene():
    rows = [dict(cls="circle", style="photo", colour="red", background="snow"),
            dict(cls="circle", style="photo", colour="red", background="sky"),
            dict(cls="circle", style="sketch", colour="blue", background="snow"),
            dict(cls="square", style="photo", colour="orange", background="night")]
    prompts = td.usual_look_prompts(rows, ["circle", "square", "star"])
    assert prompts == [
        "a photo of a red circle in the snow.", "a photo of an orange square at night.", "a photo of a star.",
        "a sketch of a red circle in the snow.", "a sketch of an orange square at night.", "a sketch of a star.",
    ]
    with pytest.raises(ValueError, match="at least one factor row"):
        td.usual_look_prompts([], ["circle"])


def test_a_tuple_of_changes_redraws_each_factor():
    f = td.sample_factors(np.random.default_rng(0), cls="star", style="photo")
    both = td.counterfactual_factors(f, ("colour", "background"), seed=3)
    assert both.colour != f.colour and both.background != f.background
    assert (both.cls, both.style, both.seed) == (f.cls, f.style, f.seed)
    assert both == td.counterfactual_factors(td.counterfactual_factors(f, "colour", 3), "background", 3)


def test_the_defaults_swap_the_factors_the_demo_recipe_makes_spurious():
    from clip_icm import defaults

    # defaults stays free of numpy for the CLI's --help, so it writes the recipe's factors out
    assert defaults.DEMO_TRUE_SWAPS == td.DEMO_RECIPE.spurious_factors
