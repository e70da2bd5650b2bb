"""A user's own caption pairs and image pairs: strict file reading, pair sets beside the built-in
ones, round trips against the pairs the pipeline builds itself, and bad input on purpose."""
import csv
import re
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_icm.errors import InvalidInput
from clip_icm.evaluation import without_domain
from clip_icm.interventions import make_text_pairs, text_pair_words
from clip_icm.pipeline import DataConfig, InterventionConfig, embed_dataset, planned_pair_sets
from clip_icm.store import EmbeddingStore
from clip_icm.tables import read_table
from clip_icm.user_pairs import read_caption_pairs, read_image_pairs
from tests.folders import make_messy_domainbed

BARE = dict(image=(), text_banks=(), templates="single", intervened_val=())


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy_domainbed(tmp_path_factory.mktemp("messy"), n_per_class=4)


def _csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _embed(root, model, store_dir, **cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the messy folder lacks a class on purpose
        return embed_dataset(DataConfig(str(root)), model, InterventionConfig(**cfg), EmbeddingStore(store_dir))


# ---------------------------------------------------------------- bad files: one line each
@pytest.mark.parametrize("name, content, message", [
    ("p.csv", b"", "is empty"),
    ("p.csv", b"caption,caption_do\n", "has a header but no rows"),
    ("p.csv", b"caption,other\na,b\n", "lacks the column(s) caption_do; it has: caption, other"),
    ("p.csv", b"caption,caption_do\na,b\nc,d,e\n", "line 3 has 3 fields, the header has 2"),
    ("p.csv", b"caption,caption_do\na,b\nc\n", "line 3 has 1 fields, the header has 2"),
    ("p.csv", b"caption,caption_do\nna\xefve,b\xe9\n", "is not UTF-8 text"),
    ("p.csv", b"caption,caption,caption_do\na,b,c\n", "names the column(s) caption more than once"),
    ("p.jsonl", b'{"caption": "a", "caption_do": "b"}\n{"caption": "a"\n', "line 2 is not valid JSON"),
    ("p.jsonl", b'["a", "b"]\n', "line 1 is not a JSON object"),
    ("p.jsonl", b'{"caption": "a", "caption_do": "b"}\n{"caption": "c"}\n', "line 2 has the keys caption"),
    ("p.csv", b"caption,caption_do\na,b\nc\x00,d\n", "line 3 holds a NUL character"),
    ("p.txt", b"caption,caption_do\na,b\n", "unknown format '.txt'"),
    ("p.parquet", b"PAR1 not really", "is not a readable Parquet file"),
])
def test_each_bad_caption_file_is_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as err:
        read_caption_pairs(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_folder_or_a_missing_file_is_not_a_table(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(InvalidInput, match="is a folder, not a file"):
        read_table(tmp_path / "d.csv", ("path",))
    with pytest.raises(InvalidInput, match="cannot be read"):
        read_caption_pairs(tmp_path / "absent.csv")
    with pytest.raises(InvalidInput, match="cannot be read"):  # found before anything is embedded
        InterventionConfig(text_pairs=(str(tmp_path / "absent.csv"),))


def test_bad_rows_are_skipped_with_their_line_and_a_file_of_only_bad_rows_is_an_error(tmp_path):
    path = _csv(tmp_path / "mine.csv", ["caption", "caption_do", "class"], [
        ["a photo of a dog.", "a sketch of a dog.", "dog"],
        ["", "a sketch of a dog.", "dog"],                        # empty cell
        ["a photo of a dog.", "a photo of a dog.", "dog"],        # no change
        ["a photo of a dog.", "a sketch of a dog.", "dog"],       # duplicate of line 2
        ["a photo of a dog.", "a sketch of a cat.", "dog"],       # the class changes: kept, noted
        ["a photo of a dog.", "a drawing of a dog.", ""],         # no class
    ])
    pairs = read_caption_pairs(path)
    assert pairs.name == "captions:mine" and len(pairs.texts) == 2 and pairs.classes == ("dog", "dog")
    reasons = dict(pairs.skipped)
    assert reasons[f"{path}:3"].startswith("empty cell: caption is empty")
    assert reasons[f"{path}:4"].startswith("not a pair")
    assert reasons[f"{path}:5"] == "duplicate row: the same as line 2"
    assert reasons[f"{path}:7"] == "empty cell: class is empty"
    assert len(pairs.notes) == 1 and pairs.notes[0].startswith(f"{path}:6: the class 'dog' is named in one caption")
    only_bad = _csv(tmp_path / "bad.csv", ["caption", "caption_do"], [["same", "same"]])
    with pytest.raises(InvalidInput, match=r"has no usable row \(1 skipped, e.g. .*bad.csv:2: not a pair"):
        read_caption_pairs(only_bad)


def test_jsonl_and_parquet_read_like_csv(tmp_path):
    import pandas as pd

    rows = [{"caption": "a photo of a dog.", "caption_do": "a photo of a dog in the snow.", "class": "dog"},
            {"caption": "a photo of a giraffe.", "caption_do": "a sketch of a giraffe.", "class": "giraffe"}]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pd.DataFrame(rows).to_parquet(tmp_path / "c.parquet")
    _csv(tmp_path / "c.csv", list(rows[0]), [list(r.values()) for r in rows])
    read = [read_caption_pairs(tmp_path / f"c.{ext}") for ext in ("csv", "jsonl", "parquet")]
    assert {(p.texts, p.texts_do, p.classes) for p in read} == {(read[0].texts, read[0].texts_do, read[0].classes)}
    assert len({p.digest for p in read}) == 3  # the digest is of the file's bytes


# ---------------------------------------------------------------- caption pairs in the pipeline
def test_caption_pairs_written_from_a_bank_give_the_banks_pair_set(tmp_path, messy, model):
    class_names = ["dog", "giraffe", "guitar case"]
    texts, texts_do, index = make_text_pairs(class_names, ["styles"], 2, 0)
    path = _csv(tmp_path / "styles.csv", ["caption", "caption_do", "class"],
                [[t, t_do, ["dog", "giraffe", "guitar_case"][c]] for t, t_do, c in zip(texts, texts_do, index)])
    run = _embed(messy.root, model, tmp_path / "c", **{**BARE, "text_banks": ("styles",)}, text_pairs_per_class=2,
                 text_pairs=(str(path),))
    emb = run.embeddings
    assert [p.name for p in emb.pairs] == ["text:styles", "captions:styles"]
    assert planned_pair_sets(InterventionConfig(**{**BARE, "text_banks": ("styles",)},
                                                text_pairs=(str(path),))) == ["text:styles", "captions:styles"]
    bank, own = emb.pair_set("text:styles"), emb.pair_set("captions:styles")
    assert own.kind == "text" and own.domains is None
    np.testing.assert_array_equal(own.z, bank.z)
    np.testing.assert_array_equal(own.z_do, bank.z_do)
    np.testing.assert_array_equal(own.labels, bank.labels)
    assert own.variant_words.tolist() == text_pair_words(class_names, ["styles"], 2, 0)


def test_caption_pairs_change_the_key_with_the_files_content_and_report_unknown_classes(tmp_path, messy, model):
    path = _csv(tmp_path / "mine.csv", ["caption", "caption_do", "class"],
                [["a photo of a dog.", "a photo of a dog at night.", "dog"],
                 ["a photo of a zebra.", "a photo of a zebra at night.", "zebra"]])
    first = _embed(messy.root, model, tmp_path / "c", **BARE, text_pairs=(str(path),))
    assert dict(first.skipped)["captions:mine, pair 2"].startswith("unknown class: 'zebra' is not a class")
    assert first.embeddings.pair_set("captions:mine").labels.tolist() == [0]
    path.write_text(path.read_text().replace("at night", "in the rain"))
    second = _embed(messy.root, model, tmp_path / "c", **BARE, text_pairs=(str(path),))
    assert second.embeddings.key != first.embeddings.key
    assert not np.array_equal(second.embeddings.pair_set("captions:mine").z_do,
                              first.embeddings.pair_set("captions:mine").z_do)
    again = _embed(messy.root, model, tmp_path / "c", **BARE, text_pairs=(str(path),))
    assert again.embeddings.key == second.embeddings.key and again.computed == 0  # all from the store


def test_caption_pairs_without_a_class_column_have_no_labels_and_two_files_of_one_name_clash(tmp_path, messy, model):
    path = _csv(tmp_path / "free.csv", ["caption", "caption_do"], [["a dog on grass.", "a dog on snow."]])
    run = _embed(messy.root, model, tmp_path / "c", **BARE, text_pairs=(str(path),))
    own = run.embeddings.pair_set("captions:free")
    assert own.labels is None and own.variant_words.tolist() == ["snow"]
    (tmp_path / "other").mkdir()
    twin = _csv(tmp_path / "other" / "free.csv", ["caption", "caption_do"], [["a", "b"]])
    with pytest.raises(InvalidInput, match="two pairs files make the pair set captions:free"):
        InterventionConfig(text_pairs=(str(path), str(twin)))


# ---------------------------------------------------------------- image pairs
def test_image_pairs_of_re_rendered_objects_give_the_true_swap_pair_set(tmp_path, model):
    """The ToyDomains world's true colour swaps, written as files and listed as image pairs, embed
    to the same pairs as the pipeline's own re-renders."""
    from clip_icm.toydomains import generate_toydomains, load_factors, render_counterfactual

    root = generate_toydomains(tmp_path / "toy", n_per_class_per_domain=2, image_size=32)
    cfg = dict(image=(), text_banks=(), templates="single", true_swaps=("colour",))
    truth = embed_dataset(DataConfig(str(root)), model, InterventionConfig(**cfg), EmbeddingStore(tmp_path / "c"))
    emb = truth.embeddings
    factors = load_factors(root)
    (root / ".pairs").mkdir()  # hidden: the folder scan leaves it out of the data set
    rows = []
    for path in emb.paths[emb.is_train]:
        relative = str(Path(path).relative_to(root))
        copy = Path(".pairs") / relative.replace("/", "_")
        render_counterfactual(factors.loc[relative].to_dict(), "colour", 0).save(root / copy)
        rows.append([relative, str(copy)])
    listing = _csv(tmp_path / "colour.csv", ["path", "path_do"], rows)
    own = embed_dataset(DataConfig(str(root)), model, InterventionConfig(**cfg, image_pairs=(str(listing),)),
                        EmbeddingStore(tmp_path / "c")).embeddings
    true, mine = own.pair_set("true:colour"), own.pair_set("image-pairs:colour")
    assert mine.kind == "image"
    np.testing.assert_array_equal(mine.z, true.z)
    np.testing.assert_array_equal(mine.z_do, true.z_do)
    np.testing.assert_array_equal(mine.labels, true.labels)
    np.testing.assert_array_equal(mine.domains_do, mine.domains)


def _image(path: Path, label: int = 0, seed: int = 0) -> str:
    from tests.folders import class_image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(class_image(label, "photo", 50 + seed)).save(path)
    return str(path)


def test_image_pairs_place_each_pair_in_the_data_set_and_report_what_they_skip(tmp_path, messy, model):
    root = messy.root
    first = _embed(root, model, tmp_path / "c", **BARE).embeddings
    rel = [str(Path(p).relative_to(root)) for p in first.paths]
    train = [r for r, t in zip(rel, first.is_train) if t]
    val = [r for r, t in zip(rel, first.is_train) if not t]
    label = dict(zip(rel, first.labels.tolist()))
    domain = dict(zip(rel, first.domains.tolist()))
    same_class_other_domain = next(r for r in train if label[r] == label[train[0]] and domain[r] != domain[train[0]])
    other_class = next(r for r in train if label[r] != label[train[0]])
    val_same_class = next(r for r in val if label[r] == label[train[0]])
    _image(root / ".copies" / "a.png")
    (root / ".copies" / "broken.png").write_bytes(b"\x89PNG not an image")
    listing = _csv(tmp_path / "cams.csv", ["path", "path_do"], [
        [train[0], ".copies/a.png"],                    # 2: a retouched copy outside the data set
        [train[0], same_class_other_domain],           # 3: two cameras, both in the data set
        [train[0], other_class],                       # 4: different classes
        [train[0], val_same_class],                    # 5: its second image is a validation row
        [train[1], ".copies/absent.png"],              # 6: missing file
        [train[1], ".copies/broken.png"],              # 7: unreadable
        ["stray.png", ".copies/a.png"],                # 8: first image not in the data set
        [val[0], ".copies/a.png"],                     # 9: a validation row: intervened validation
    ])
    run = _embed(root, model, tmp_path / "c", **{**BARE, "intervened_val": ("pairs",)}, image_pairs=(str(listing),))
    emb = run.embeddings
    pairs = emb.pair_set("image-pairs:cams")
    assert len(pairs.z) == 2
    i0 = rel.index(train[0])
    np.testing.assert_array_equal(pairs.z, emb.features[[i0, i0]])
    np.testing.assert_array_equal(pairs.z_do[1], emb.features[rel.index(same_class_other_domain)])
    assert pairs.domains_do.tolist() == [domain[train[0]], domain[same_class_other_domain]]
    reasons = {where.rsplit(":", 1)[1]: why for where, why in run.skipped if where.startswith(str(listing))}
    assert sorted(reasons) == ["4", "5", "6", "7", "8"]
    assert reasons["4"].startswith("different classes")
    assert reasons["5"].startswith("validation row: its intervened image")
    assert reasons["6"].startswith("missing file")
    assert reasons["7"].startswith("unreadable image")
    assert reasons["8"].startswith("not in the data set")
    (check,) = emb.intervened_val
    assert check.name == "val image-pairs:cams" and check.kind == "intervened validation"
    np.testing.assert_array_equal(check.z, emb.features[[rel.index(val[0])]])
    np.testing.assert_array_equal(check.z_do, pairs.z_do[:1])  # the same copy, embedded once, through the store
    # leave-one-domain-out drops the pair whose second image is from the held-out domain
    assert len(without_domain(emb, domain[same_class_other_domain]).pair_set("image-pairs:cams").z) == 1


def test_image_pairs_outside_the_data_folder_refuse_the_file(tmp_path, messy, model):
    outside = _image(tmp_path / "elsewhere.png")
    some_image = str(Path(next(Path(messy.root, "photo", "dog").glob("*.png"))).relative_to(messy.root))
    for bad in ("../elsewhere.png", outside):
        listing = _csv(tmp_path / "out.csv", ["path", "path_do"], [[some_image, bad]])
        with pytest.raises(InvalidInput, match=r"out.csv:2 names .*, outside the data set's folder"):
            _embed(messy.root, model, tmp_path / "c", **BARE, image_pairs=(str(listing),))


def test_image_pairs_need_a_training_pair_and_pairs_validation_needs_a_file(tmp_path, messy, model):
    listing = _csv(tmp_path / "none.csv", ["path", "path_do"], [["stray.png", "photo/dog/dog_001.jpg"]])
    with pytest.raises(InvalidInput, match="no usable pair starts at a training image"):
        _embed(messy.root, model, tmp_path / "c", **BARE, image_pairs=(str(listing),))
    with pytest.raises(InvalidInput, match="intervened validation 'pairs' reads the image pairs files"):
        InterventionConfig(intervened_val=("pairs",))
    assert read_image_pairs(listing).name == "image-pairs:none"


# ---------------------------------------------------------------- the command line
def _cli_args(messy, model, cache, *extra):
    return ["--root", str(messy.root), "--model", model.name, "--pretrained", "none", "--cache", str(cache), "--quiet",
            "--templates", "single", "--workers", "0", "--interventions", "invert", "--text-banks", "none", *extra]


def test_cli_fits_on_caption_and_image_pairs_and_reports_their_skipped_rows(tmp_path, messy, model, capsys):
    from clip_icm.cli import main

    captions = _csv(tmp_path / "night.csv", ["caption", "caption_do", "class"],
                    [["a photo of a dog.", "a photo of a dog at night.", "dog"],
                     ["a photo of a giraffe.", "a photo of a cat at night.", "giraffe"]])
    dog = sorted(str(p.relative_to(messy.root)) for p in (messy.root / "photo" / "dog").glob("dog_*"))
    images = _csv(tmp_path / "cams.csv", ["path", "path_do"], [[d, "sketch/dog/absent.png"] for d in dog]
                  + [[d, e] for d, e in zip(dog, sorted(str(p.relative_to(messy.root))
                                                         for p in (messy.root / "Real World" / "dog").glob("dog_*")))])
    out = tmp_path / "rows.csv"
    code = main(["evaluate", *_cli_args(messy, model, tmp_path / "c", "--text-pairs", str(captions), "--image-pairs",
                                        str(images), "--pair-sets", "captions:night,image-pairs:cams", "--methods",
                                        "icm", "--target", "sketch", "--k", "8", "--out", str(out))])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "fitted on pair sets: captions:night,image-pairs:cams" in captured.out
    assert re.search(r"image-pairs:cams \(\d+\)", captured.out) and "captions:night (2)" in captured.out
    assert f"{images}:2: missing file" in captured.out
    assert "warning: " + f"{captions}:3: the class 'giraffe' is named in one caption only" in captured.err
    assert out.is_file()


def test_cli_bad_pairs_files_are_one_line_before_any_embedding(tmp_path, messy, model, capsys):
    from clip_icm.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("caption\nonly one column\n")
    assert main(["embed", *_cli_args(messy, model, tmp_path / "c", "--text-pairs", str(bad))]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "lacks the column(s) caption_do" in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.npy"))
    wrong = _csv(tmp_path / "good.csv", ["caption", "caption_do"], [["a dog.", "a dog at night."]])
    assert main(["evaluate", *_cli_args(messy, model, tmp_path / "c", "--text-pairs", str(wrong), "--pair-sets",
                                        "captions:other")]) == 1
    assert "no pair set captions:other in this run; it builds: image:random, captions:good" in capsys.readouterr().err


def test_the_example_files_read_cleanly():
    examples = Path(__file__).resolve().parent.parent / "data" / "examples"
    captions = read_caption_pairs(examples / "captions.csv")
    assert len(captions.texts) == 40 and not captions.skipped and not captions.notes
    from clip_icm.toydomains import CLASSES

    assert set(captions.classes) == set(CLASSES)  # written for the demo world
    images = read_image_pairs(examples / "image_pairs.csv")
    assert images.name == "image-pairs:image_pairs" and len(images.paths) == 2
