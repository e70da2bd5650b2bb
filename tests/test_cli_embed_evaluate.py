import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from clip_icm.cli import main
from tests.folders import make_messy_domainbed
from tests.tiny_clip import write_local_dir

REPO = Path(__file__).resolve().parent.parent
FAST = ["--pretrained", "none", "--quiet", "--text-banks", "styles", "--templates", "single", "--workers", "0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    messy = make_messy_domainbed(base / "data", n_per_class=4, truncated=True)
    model = write_local_dir(base / "tiny")
    return messy, f"local-dir:{model}", base


def _args(setup, cache, *extra):
    messy, model, _ = setup
    return ["--root", str(messy.root), "--model", model, "--cache", str(cache), *FAST, *extra]


def _counts(stdout):
    computed, reused = re.search(r"Cache: (\d+) entries computed, (\d+) reused", stdout).groups()
    return int(computed), int(reused)


def test_evaluate_messy_folder_is_complete_and_reproducible(setup, tmp_path, capsys):
    messy, _, _ = setup
    out1, out2 = tmp_path / "a.csv", tmp_path / "b.json"
    assert main(["evaluate", *_args(setup, tmp_path / "c"), "--out", str(out1)]) == 0
    first = capsys.readouterr()
    for domain in messy.domains:
        assert domain in first.out
    for name in ("corrupt.jpg", "empty.jpg", "notes.txt", ".hidden.jpg", "truncated.jpg"):
        assert name in first.out
    assert "CLIP" in first.out and "ICM" in first.out and "Orth-Cali" in first.out
    assert "guitar_case" in first.err  # the class missing from one domain is a warning line
    assert main(["evaluate", *_args(setup, tmp_path / "c"), "--out", str(out2)]) == 0
    second = capsys.readouterr().out
    assert "model not loaded" in second and _counts(second)[0] == 0
    rows = pd.read_csv(out1)
    again = pd.DataFrame(json.loads(out2.read_text())["rows"])
    pd.testing.assert_frame_equal(rows, again[rows.columns], check_dtype=False)
    assert set(rows.target) == set(messy.domains)
    assert {"CLIP", "icm", "pca", "null_space", "orth_cali", "orth_cali_class_free", "icm_as_released",
            "augmentation"} == set(rows.method)
    # A folder gets the source-only rule and the model choice by default, as the demo does.
    assert set(rows.selected_by) == {"source validation + intervened source validation"}
    assert rows.groupby("target").chosen.sum().to_dict() == {d: 1 for d in messy.domains}
    assert (rows[rows.chosen].role == "target").all()
    assert "Model to deploy, per target" in first.out
    assert "target images" not in first.out  # by default the choice reads no target image
    assert all(f"{domain}: deploy " in first.out for domain in messy.domains)
    skipped = json.loads(out2.read_text())["skipped"]
    assert any(path.endswith("truncated.jpg") for path, _ in skipped)


def test_single_target_and_options(setup, tmp_path, capsys):
    code = main(["evaluate", *_args(setup, tmp_path / "c"), "--target", "Real World", "--k", "8", "--lam", "10",
                 "--methods", "icm", "--interventions", "grayscale,invert", "--per-op", "--choice", "unlabelled-target",
                 "--out", str(tmp_path / "r.csv")])
    assert code == 0
    out = capsys.readouterr().out
    assert "K=8, lam=10" in out and "image:grayscale" in out and "image:invert" in out
    # --choice unlabelled-target: the choice also reads the target's images, and says so
    assert "Model to deploy, per target" in out and "unlabelled target images" in out and "never their labels" in out
    rows = pd.read_csv(tmp_path / "r.csv")
    # --k / --lam by hand: no selection; the model choice's candidates are evaluated beside the methods asked for
    assert set(rows.target) == {"Real World"} and set(rows.method) == {"CLIP", "icm", "augmentation"}
    assert set(rows.selected_by) == {"fixed"} and rows.chosen.sum() == 1


def test_select_chooses_k_and_lam_per_target_and_names_the_rule(setup, tmp_path, capsys):
    from clip_icm.cli import SCORING_NAMES, TASK_NAMES
    from clip_icm.evaluation import SCORINGS, TASKS

    assert SCORING_NAMES == tuple(SCORINGS) and TASK_NAMES == TASKS
    code = main(["evaluate", *_args(setup, tmp_path / "c"), "--methods", "icm,pca", "--interventions", "invert",
                 "--select", "interventional", "--out", str(tmp_path / "s.csv")])
    assert code == 0
    out = capsys.readouterr().out
    assert "chosen per target by source validation + intervened source validation" in out
    assert "no target label" in out
    rows = pd.read_csv(tmp_path / "s.csv")
    assert set(rows.selected_by) == {"source validation + intervened source validation"}
    per_target = rows.groupby("target")[["K", "lam"]].nunique()
    assert (per_target == 1).all().all()  # one chosen pair per split, used by every method


@pytest.mark.parametrize("extra, message", [
    (["--prompts", "usual_look"], "factors.csv"),
    (["--model", "ViT-Nope"], "unknown model 'ViT-Nope'"),
    (["--root", "/no/such/folder"], "is not a folder"),
    (["--target", "moon"], "unknown domain 'moon'"),
    (["--k", "999"], "--k must be between"),
    (["--methods", "magic"], "unknown projection method 'magic'; available: augmentation, icm"),
    (["--out", "r.txt"], "--out must end in .csv or .json"),
    (["--interventions", "greyscale"], "greyscale"),
    (["--val-fraction", "0"], "evaluate needs source validation rows"),  # was sklearn's "0 samples" traceback line
])
def test_bad_input_is_one_line_and_nonzero(setup, tmp_path, capsys, extra, message):
    assert main(["evaluate", *_args(setup, tmp_path / "c"), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]


def test_k_above_the_models_dimension_fails_before_embedding(setup, tmp_path, capsys):
    cache = tmp_path / "c"
    assert main(["evaluate", *_args(setup, cache), "--k", "999"]) == 1
    err = capsys.readouterr().err
    assert "--k must be between 1 and the embedding dimension" in err and "got 999" in err
    assert not cache.exists() or not any(cache.rglob("*.npy"))  # read from the model's config, nothing embedded


def test_unknown_method_fails_before_embedding(setup, tmp_path, capsys):
    cache = tmp_path / "c"
    assert main(["evaluate", *_args(setup, cache), "--methods", "icm,magic"]) == 1
    assert "unknown projection method 'magic'" in capsys.readouterr().err
    assert not cache.exists() or not any(cache.rglob("*"))  # nothing was embedded


@pytest.mark.parametrize("extra, message", [
    (["--pair-sets", "image:random,text:sytles"], "no pair set text:sytles in this run; it builds: image:random, "
                                                   "text:styles"),
    (["--text-banks", "none", "--cross-modal"], "choose at least one text bank"),
])
def test_pair_set_names_and_silent_drops_fail_before_embedding(setup, tmp_path, capsys, extra, message):
    cache = tmp_path / "c"
    assert main(["evaluate", *_args(setup, cache), *extra]) == 1
    assert message in capsys.readouterr().err
    assert not cache.exists() or not any(cache.rglob("*.npy"))  # nothing was embedded


PAIR_NAMES = [
    ("--templates", "ensembel", "unknown zero-shot template set 'ensembel'; available: ensemble, single"),
    ("--text-banks", "styles,stlyes", "unknown text bank 'stlyes'; available: conditions, contexts, styles"),
    ("--interventions", "greyscale", "unknown image intervention 'greyscale'; available: colour_jitter, equalize"),
    ("--true-swaps", "hat", "unknown true swap factor 'hat'; available: colour, background, style"),
    ("--intervened-val", "counterfactaul", "unknown intervened validation set 'counterfactaul'; available: "
                                           "counterfactual, conflict, image"),
]
EVALUATE_NAMES = [
    ("--methods", "icm,magic", "unknown projection method 'magic'; available: augmentation, icm, icm_as_released"),
    ("--protocol", "relesed", "unknown evaluation protocol 'relesed'; available: ours, released"),
    ("--task", "open-class", "unknown task 'open-class'; available: domain_shift, open_class"),
    ("--pair-sets", "true:nope", "no pair set true:nope in this run; it builds: image:random"),
]


@pytest.mark.parametrize("command, flag, wrong, message", [("embed", *case) for case in PAIR_NAMES]
                         + [("evaluate", *case) for case in PAIR_NAMES + EVALUATE_NAMES])
def test_every_wrong_name_fails_listing_the_valid_ones_before_any_model_loads(setup, tmp_path, capsys, monkeypatch,
                                                                              command, flag, wrong, message):
    import clip_icm.backend as backend

    def no_model(*args, **kwargs):
        raise AssertionError("a model was looked up before the names were checked")

    monkeypatch.setattr(backend, "model_key", no_model)
    monkeypatch.setattr(backend, "load_model", no_model)
    cache = tmp_path / "c"
    assert main([command, *_args(setup, cache, flag, wrong)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not cache.exists() or not any(cache.rglob("*.npy"))


def test_missing_weights_offline_is_one_line(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    messy, _, _ = setup
    code = main(["embed", "--root", str(messy.root), "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k",
                 "--cache", str(tmp_path / "c"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "ViT-B-32" in err and str(tmp_path / "hub") in err and len(err.strip().splitlines()) == 1


def test_help_explains_the_defaults(capsys):
    assert main(["embed", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--root" in text and "ToyDomains" in text and "--pretrained" in text and "examples" in text
    assert main(["evaluate", "--help"]) == 0
    assert "--target" in capsys.readouterr().out


KILLER = """
import os, signal, sys
import clip_icm.store as store
published = []
real_replace = os.replace
def replace(src, dst):
    if str(dst).endswith(".json") and len(os.path.basename(os.path.dirname(dst))) == 2:  # a store manifest
        if len(published) == {after}:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 just before publishing an entry
        published.append(dst)
    real_replace(src, dst)
store.os.replace = replace
from clip_icm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_embed_killed_then_rerun_recomputes_only_what_is_missing(setup, tmp_path, capsys):
    args = ["embed", *_args(setup, tmp_path / "c")]
    killed = subprocess.run([sys.executable, "-c", KILLER.replace("{after}", "2"), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert main(args) == 0
    computed, reused = _counts(capsys.readouterr().out)
    assert reused == 2  # the two entries published before the kill
    assert main(["embed", *_args(setup, tmp_path / "fresh")]) == 0
    assert _counts(capsys.readouterr().out) == (computed + reused, 0)
    # the resumed cache gives the same numbers as a clean one
    assert main(["evaluate", *_args(setup, tmp_path / "c"), "--out", str(tmp_path / "resumed.csv")]) == 0
    assert main(["evaluate", *_args(setup, tmp_path / "fresh"), "--out", str(tmp_path / "clean.csv")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "resumed.csv"), pd.read_csv(tmp_path / "clean.csv"))


def test_fully_cached_run_does_not_import_torch(setup, tmp_path):
    args = ["embed", *_args(setup, tmp_path / "c")]
    assert main(args) == 0
    probe = "import sys; from clip_icm.cli import main; code = main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(code)"
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert "model not loaded" in done.stdout


def test_skipped_summary_counts_reasons_and_truncates():
    from clip_icm.cli import _skipped_text

    assert _skipped_text([]) == "Skipped files: none"
    skipped = [("a", "unreadable: x"), ("b", "unreadable: y"), ("c", "not an image")]
    lines = _skipped_text(skipped, limit=2).splitlines()
    assert lines[0] == "Skipped files: 3 (1 not an image, 2 unreadable)"
    assert lines[1:3] == ["  a: unreadable: x", "  b: unreadable: y"] and "1 more" in lines[3]


def test_a_missing_demo_world_is_drawn_while_the_model_resolves(tmp_path, monkeypatch):
    """On a fresh machine `embed` draws the demo world in another process while it resolves the
    model (both about 4 s on one core), then scans it as usual."""
    from clip_icm import toydomains

    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path))
    started = []
    draw = toydomains.draw_demo_data_elsewhere

    def recorded(root=None):
        started.append(draw(root))
        return started[-1]

    monkeypatch.setattr(toydomains, "draw_demo_data_elsewhere", recorded)
    assert main(["embed", "--max-per-domain", "8", "--interventions", "", "--text-banks", "", "--quiet"]) == 0
    assert len(started) == 1 and started[0] is not None and started[0].returncode == 0
    assert (tmp_path / "toydomains" / "recipe.json").is_file()
