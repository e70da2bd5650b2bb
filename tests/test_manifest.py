"""Data sets listed in a manifest table (path, label, domain) instead of a DomainBed folder tree:
the same scan, embeddings and per-domain table as the folder, and every bad row or file reported."""
import csv
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clip_icm.datasets import scan_domain_folder, scan_manifest
from clip_icm.errors import InvalidInput
from clip_icm.evaluation import EvalConfig, leave_one_domain_out
from clip_icm.pipeline import DataConfig, InterventionConfig, embed_dataset
from clip_icm.store import EmbeddingStore
from tests.folders import class_image, make_messy_domainbed

FEW = InterventionConfig(image=("invert",), text_banks=("styles",), text_pairs_per_class=2, templates="single")


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy_domainbed(tmp_path_factory.mktemp("messy"), n_per_class=4)


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the messy folder lacks a class on purpose
        return fn(*args, **kw)


def _manifest_of(scan, path: Path, extra_rows=()) -> Path:
    """The folder scan's images as a manifest at ``path`` (paths relative to its folder)."""
    rows = [[str(Path(p).relative_to(path.parent)), scan.class_folders[y], d]
            for p, y, d in zip(scan.paths, scan.labels, scan.domains)] + list(extra_rows)
    frame = pd.DataFrame(rows, columns=["path", "label", "domain"])
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_manifest_of_a_folder_scans_to_the_same_rows(messy, suffix):
    folder = _quiet(scan_domain_folder, messy.root)
    corrupt = ["photo/dog/corrupt.jpg", "dog", "photo"]  # a candidate both scans must open and skip alike
    listed = _quiet(scan_manifest, _manifest_of(folder, messy.root / f"m{suffix}", [corrupt]))
    assert listed.root == str(messy.root / f"m{suffix}") and listed.folder == messy.root
    np.testing.assert_array_equal(listed.paths, folder.paths)
    np.testing.assert_array_equal(listed.labels, folder.labels)
    np.testing.assert_array_equal(listed.domains, folder.domains)
    assert (listed.class_names, listed.domain_names, listed.missing) == (folder.class_names, folder.domain_names,
                                                                          folder.missing)
    assert dict(listed.skipped)[str(messy.root / "photo/dog/corrupt.jpg")].startswith("unreadable image")
    few = _quiet(scan_manifest, messy.root / f"m{suffix}", max_per_domain=4, seed=3)
    np.testing.assert_array_equal(few.paths, _quiet(scan_domain_folder, messy.root, max_per_domain=4, seed=3).paths)


def test_a_manifest_gives_the_folders_embeddings_and_per_domain_table(tmp_path, messy, model):
    store = EmbeddingStore(tmp_path / "c")
    by_folder = _quiet(embed_dataset, DataConfig(str(messy.root)), model, FEW, store)
    manifest = _manifest_of(by_folder.scan, messy.root / "list.csv")
    by_list = _quiet(embed_dataset, DataConfig(str(manifest)), model, FEW, store)
    a, b = by_folder.embeddings, by_list.embeddings
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.is_train, b.is_train)
    assert [p.name for p in a.pairs] == [p.name for p in b.pairs]
    for p, q in zip(a.pairs, b.pairs):
        np.testing.assert_array_equal(p.z_do, q.z_do)
    assert by_list.computed == 0  # the same images: every vector came from the folder run's entries
    config = EvalConfig(8, 1.0, "relative", ("icm",))
    pd.testing.assert_frame_equal(_quiet(leave_one_domain_out, a, config=config),
                                  _quiet(leave_one_domain_out, b, config=config))


def _write(path: Path, rows) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "domain"])
        writer.writerows(rows)
    return path


def _images(root: Path, n: int = 2) -> list[list[str]]:
    rows = []
    for d, domain in enumerate(("day", "night")):
        for label, cls in enumerate(("cat", "dog")):
            for i in range(n):
                path = root / "img" / f"{domain}_{cls}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(class_image(label, domain, i)).save(path)
                rows.append([f"img/{path.name}", cls, domain])
    return rows


def test_bad_rows_are_skipped_with_their_reason(tmp_path):
    rows = _images(tmp_path)
    (tmp_path / "img" / "folder.png").mkdir()
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "img" / "notes.txt").write_text("hello")
    manifest = _write(tmp_path / "m.csv", rows + [
        ["img/absent.png", "cat", "day"],       # line 10: missing
        ["img/folder.png", "cat", "day"],       # a folder
        ["img/broken.png", "cat", "day"],       # unreadable
        ["img/notes.txt", "cat", "day"],        # not an image
        ["", "cat", "day"],                     # line 14: empty cell
        [rows[0][0], "dog", "night"],           # line 15: listed before
    ])
    scan = scan_manifest(manifest)
    assert len(scan) == 8 and scan.domain_names == ("day", "night") and scan.class_names == ("cat", "dog")
    reasons = dict(scan.skipped)
    assert reasons[str(tmp_path / "img" / "absent.png")] == "missing file: no such file"
    assert reasons[str(tmp_path / "img" / "folder.png")] == "not a regular file: a folder"
    assert reasons[str(tmp_path / "img" / "broken.png")].startswith("unreadable image")
    assert reasons[str(tmp_path / "img" / "notes.txt")].startswith("not an image file")
    assert reasons[f"{manifest}:14"] == "empty cell: path is empty"
    assert reasons[f"{manifest}:15"] == "duplicate row: the image of line 2"


@pytest.mark.parametrize("content, message", [
    ("path,label\nimg/a.png,cat\n", "lacks the column(s) domain"),
    ("", "is empty"),
    ("path,label,domain\nimg/a.png,cat\n", "line 2 has 2 fields, the header has 3"),
    ("path,label,domain\n../outside.png,cat,day\n", "names '../outside.png', outside the manifest's folder"),
    ("path,label,domain\n/etc/passwd,cat,day\n", "names '/etc/passwd', outside the manifest's folder"),
])
def test_a_bad_manifest_is_one_line(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(InvalidInput) as err:
        scan_manifest(tmp_path / "m.csv")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_manifest_needs_two_domains_with_images(tmp_path):
    rows = _images(tmp_path)
    with pytest.raises(InvalidInput, match="only one domain with images"):
        scan_manifest(_write(tmp_path / "m.csv", [r for r in rows if r[2] == "day"]))
    with pytest.raises(InvalidInput, match="names a folder under a data root; a manifest"):
        DataConfig(str(tmp_path / "m.csv"), dataset="PACS")


def test_cli_embeds_and_evaluates_a_manifest_with_image_pairs_relative_to_it(tmp_path, model, capsys):
    from clip_icm.cli import main

    data = tmp_path / "data"
    rows = _images(data, n=4)
    manifest = _write(data / "m.csv", rows + [["img/absent.png", "cat", "day"]])
    for path, _, _ in rows:  # a retouched copy of each image, beside the data set (the manifest does not list it)
        (data / "copies").mkdir(exist_ok=True)
        Image.open(data / path).rotate(90).save(data / "copies" / Path(path).name)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("path,path_do\n" + "".join(f"{p},copies/{Path(p).name}\n" for p, _, _ in rows))
    common = ["--root", str(manifest), "--model", model.name, "--pretrained", "none", "--cache", str(tmp_path / "c"),
              "--quiet", "--templates", "single", "--workers", "0", "--text-banks", "none", "--interventions",
              "invert"]
    assert main(["embed", *common]) == 0
    out = capsys.readouterr().out
    assert f"Data: {manifest}: 16 images, 2 classes" in out and "missing file" in out
    assert main(["evaluate", *common, "--image-pairs", str(pairs), "--methods", "icm", "--k", "4",
                 "--pair-sets", "image-pairs:pairs", "--select", "interventional"]) == 0
    out = capsys.readouterr().out
    assert "image-pairs:pairs (12)" in out  # the 12 training rows; the 4 validation rows are intervened validation
    assert "chosen per target by source validation + intervened source validation" in out
    assert main(["embed", *common[:1], str(tmp_path / "nothing.txt"), *common[2:]]) == 1
    assert "is not a folder, nor a manifest (.csv, .jsonl, .parquet)" in capsys.readouterr().err
    assert main(["embed", *common, "--dataset", "PACS"]) == 1
    assert "a manifest lists its images itself" in capsys.readouterr().err


def test_the_example_manifest_has_the_columns_a_scan_reads():
    from clip_icm.datasets import MANIFEST_COLUMNS
    from clip_icm.tables import read_table

    table = read_table(Path(__file__).resolve().parent.parent / "data" / "examples" / "manifest.csv", MANIFEST_COLUMNS)
    assert len(table.rows) == 4 and {r["domain"] for r in table.rows} == {"location_38", "location_46"}


def test_a_toydomains_world_listed_in_a_manifest_keeps_its_true_swaps_and_numbers(tmp_path, model):
    """factors.csv plus a label column is a manifest whose factor columns stand for factors.csv: the
    demo's defaults (true swaps, counterfactual validation, usual-look prompts) give the same pairs,
    intervened validation rows and per-domain table as the folder."""
    from clip_icm import defaults
    from clip_icm.toydomains import generate_toydomains, load_factors

    root = generate_toydomains(tmp_path / "toy", n_per_class_per_domain=3, image_size=32)
    factors = load_factors(root).reset_index(drop=True)
    factors.assign(label=factors.cls).to_parquet(root / "world.parquet")
    factors.drop(columns=["colour"]).assign(label=factors.cls).to_csv(root / "plain.csv", index=False)
    assert defaults.has_factors(str(root / "world.parquet")) and not defaults.has_factors(str(root / "plain.csv"))
    cfg = InterventionConfig(image=(), text_banks=(), templates="single", true_swaps=defaults.DEMO_TRUE_SWAPS,
                             look_prompts=True)
    store = EmbeddingStore(tmp_path / "c")
    a = embed_dataset(DataConfig(str(root)), model, cfg, store).embeddings
    b = embed_dataset(DataConfig(str(root / "world.parquet")), model, cfg, store).embeddings
    assert [p.name for p in b.pairs] == ["true:colour", "true:background"]
    assert [c.name for c in b.intervened_val] == ["counterfactual:colour+background"]
    for p, q in zip(a.pairs + a.intervened_val, b.pairs + b.intervened_val):
        np.testing.assert_array_equal(p.z_do, q.z_do)
    assert a.look_prompts.keys() == b.look_prompts.keys()
    config = EvalConfig(8, 1.0, "relative", ("icm",), defaults.DEMO_PAIR_SETS, prompts="usual_look")
    pd.testing.assert_frame_equal(_quiet(leave_one_domain_out, a, config=config),
                                  _quiet(leave_one_domain_out, b, config=config))
    with pytest.raises(InvalidInput, match="true swaps need the ToyDomains dataset"):
        embed_dataset(DataConfig(str(root / "plain.csv")), model, cfg, store)
