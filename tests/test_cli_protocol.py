"""CLI: evaluate --protocol released, --task open_class, and their bad input (one line, nothing embedded)."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import clip_icm.pipeline as pipeline
from clip_icm.cli import main
from tests.tiny_clip import write_local_dir

FAST = ["--pretrained", "none", "--quiet", "--text-banks", "styles", "--templates", "single", "--workers", "0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Three domains x four classes of small coloured images, and a tiny random CLIP."""
    base = tmp_path_factory.mktemp("cli_protocol")
    gen = np.random.default_rng(0)
    for d, domain in enumerate(("photo", "sketch", "cartoon")):
        for c, name in enumerate(("cat", "dog", "horse", "guitar")):
            folder = base / "data" / domain / name
            folder.mkdir(parents=True)
            for i in range(6):
                pixels = gen.integers(0, 255, size=(32, 32, 3)) // (c + 1) + 30 * d
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return base / "data", f"local-dir:{write_local_dir(base / 'tiny')}"


def _args(setup, cache, *extra):
    root, model = setup
    return ["evaluate", "--root", str(root), "--model", model, "--cache", str(cache), *FAST, *extra]


@pytest.fixture
def model_configs(monkeypatch):
    seen = []
    real = pipeline.embed_dataset

    def spy(data, model, *args, **kwargs):
        seen.append(model)
        return real(data, model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "embed_dataset", spy)
    return seen


def test_released_protocol(setup, tmp_path, capsys, model_configs):
    out = tmp_path / "r.csv"
    assert main(_args(setup, tmp_path / "c", "--protocol", "released", "--target", "sketch", "--k", "8",
                      "--methods", "icm_as_released,orth_cali", "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert "protocol: released code" in text and "20% holdout" in text and "C=0.316" in text
    assert "target [protocol: released code]" in text
    assert [line.split()[-1] for line in text.splitlines() if line.startswith("sketch")] == ["n/a"]  # Orth-Cali probe
    assert "K=8, lam=1000 fixed; lam absolute" in text
    assert [m.precision for m in model_configs] == ["fp32"]
    rows = pd.read_csv(out)
    assert set(rows.preset) == {"released"} and set(rows.lam_mode) == {"absolute"} and set(rows.lam) == {1000.0}
    assert set(rows[rows.role == "target"].n) == {int(0.2 * 24)}
    assert set(rows.method) == {"CLIP", "icm_as_released", "orth_cali"}


def test_ours_is_the_default_and_named(setup, tmp_path, capsys, model_configs):
    assert main(_args(setup, tmp_path / "c", "--target", "sketch", "--k", "8", "--methods", "icm")) == 0
    text = capsys.readouterr().out
    assert "protocol: this project" in text and "whole target domain" in text and "lam=1 fixed; lam relative" in text
    assert [m.precision for m in model_configs] == ["auto"]


def test_open_class_task(setup, tmp_path, capsys):
    out = tmp_path / "o.csv"
    assert main(_args(setup, tmp_path / "c", "--task", "open_class", "--k", "8", "--methods", "icm,orth_cali",
                      "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert "Open-class" in text and "HM" in text and "base" in text and "new" in text
    assert "(whole target domain)" in text and "class split seed 0; no probe" in text
    rows = pd.read_csv(out)
    assert set(rows.classes) == {"base", "new", "harmonic mean"} and set(rows.target) == {"photo", "sketch", "cartoon"}
    # what Orth-Cali's P0 removes, in the rows and printed (averaged over the targets)
    orth = rows[rows.method == "orth_cali"]
    assert orth.spurious_span.between(0, 1).all() and rows[rows.method != "orth_cali"].spurious_span.isna().all()
    removed, dim, span = orth.spurious_removed.mean(), int(orth.dim.iloc[0]), orth.spurious_span.mean()
    assert 0 < removed < dim
    assert f"Orth-Cali: P0 removes {removed:.0f} of D = {dim} directions" in text
    assert f"they span {span:.0%} of the class prompts' between-class energy" in text
    assert ("warning: Orth-Cali's spurious prompts span most of" in text) == (span > 0.5)


@pytest.mark.parametrize("extra, message", [
    (["--protocol", "paper"], "unknown evaluation protocol 'paper'; available: ours, released"),
    (["--task", "zero_shot"], "unknown task 'zero_shot'; available: domain_shift, open_class"),
    (["--protocol", "released", "--lam-mode", "relative"], "uses a absolute lam"),
    (["--protocol", "released", "--precision", "bf16"], "runs fp32 forward passes"),
])
def test_bad_protocol_and_task_fail_before_embedding(setup, tmp_path, capsys, extra, message):
    cache = tmp_path / "c"
    assert main(_args(setup, cache, *extra)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]
    assert not cache.exists() or not any(cache.rglob("*"))


def test_open_class_with_too_few_classes_is_one_line(setup, tmp_path, capsys):
    root, model = setup
    small = tmp_path / "small"
    for domain in ("a", "b"):
        for name in ("x", "y", "z"):
            (small / domain / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), (i * 40, 90, 10)).save(small / domain / name / f"{i}.png")
    args = ["evaluate", "--root", str(small), "--model", model, "--cache", str(tmp_path / "c"), *FAST,
            "--task", "open_class"]
    assert main(args) == 1
    assert "at least 2 base and 2 new classes; 3 classes" in capsys.readouterr().err


def test_negative_lam_is_a_clear_error_with_top_k_and_a_warning_with_the_released_slice(setup, tmp_path, capsys):
    cache = tmp_path / "c"
    assert main(_args(setup, cache, "--target", "sketch", "--k", "8", "--methods", "icm", "--lam", "-1")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "a negative lam is accepted only with --methods icm_as_released" in err[-1]
    assert not cache.exists() or not any(cache.rglob("*"))  # refused before embedding
    assert main(_args(setup, cache, "--target", "sketch", "--k", "8", "--methods", "icm_as_released",
                      "--lam", "-1")) == 0
    err = capsys.readouterr().err
    assert "warning: lam=-1 < 0" in err and "rewards the directions that move" in err


def test_orth_cali_queries_are_named(setup, tmp_path, capsys):
    assert main(_args(setup, tmp_path / "c", "--orth-cali-queries", "all")) == 2
    assert "invalid choice: 'all'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_released_open_class_takes_the_first_half_of_the_classes(setup, tmp_path, capsys):
    out = tmp_path / "o.csv"
    assert main(_args(setup, tmp_path / "c", "--protocol", "released", "--task", "open_class", "--target", "sketch",
                      "--k", "8", "--methods", "icm_as_released", "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert "(whole target domain)" in text and "the first half of the sorted classes as base" in text
    rows = pd.read_csv(out)
    target = rows[(rows.role == "target") & (rows.method == "CLIP")].set_index("classes")
    assert target.loc["base", "n"] == target.loc["new", "n"] == 12  # cat, dog | guitar, horse: 2 x 6 images each
