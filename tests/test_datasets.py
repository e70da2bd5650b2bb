import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_icm.datasets import (
    DATASETS,
    detect_datasets,
    is_domainbed_folder,
    load_image,
    readable_name,
    scan_domain_folder,
    split_mask,
)
from tests.folders import class_image, make_messy_domainbed


def quiet_scan(root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan_domain_folder(root, **kw)


@pytest.fixture
def messy(tmp_path):
    return make_messy_domainbed(tmp_path / "data")


@pytest.mark.parametrize(
    "folder, words",
    [("art_painting", "art painting"), ("Alarm_Clock", "alarm clock"), ("t-shirt", "t shirt"),
     ("Real World", "real world"), ("bird", "bird"), ("  double__under ", "double under")],
)
def test_readable_name(folder, words):
    assert readable_name(folder) == words


def test_known_datasets_use_domainbed_folder_names():
    assert DATASETS.get("PACS").domains == ("art_painting", "cartoon", "photo", "sketch")
    assert "Real World" in DATASETS.get("OfficeHome").domains
    assert DATASETS.get("OfficeHome").folders[0] == "office_home"
    assert DATASETS.get("TerraIncognita").domains == ("location_100", "location_38", "location_43", "location_46")
    assert len(DATASETS.get("DomainNet").domains) == 6
    assert DATASETS.get("PACS").readable_domains[0] == "art painting"
    assert set(DATASETS.available()) >= {"PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet"}


def test_scan_finds_every_domain_class_and_image(messy):
    with pytest.warns(UserWarning, match="'sketch' has no images of class 'guitar_case'"):
        scan = scan_domain_folder(messy.root)
    assert scan.domain_names == messy.domains
    assert scan.class_folders == messy.classes
    assert scan.class_names == ("dog", "giraffe", "guitar case")
    assert len(scan) == messy.n_images == len(scan.labels) == len(scan.domains)
    assert scan.missing == messy.missing
    assert scan.counts() == {"Real World": 9, "photo": 9, "sketch": 6}


def test_missing_class_does_not_shift_indices(messy):
    scan = quiet_scan(messy.root)
    for path, label in zip(scan.paths, scan.labels):
        assert Path(path).parent.name == scan.class_folders[label]
    sketch = scan.labels[scan.domains == "sketch"]
    assert set(sketch) == {0, 1}  # dog, giraffe keep indices 0 and 1 although guitar_case is absent


def test_messy_files_are_skipped_and_reported(messy):
    scan = quiet_scan(messy.root)
    reasons = {Path(p).name: r for p, r in scan.skipped}
    assert set(reasons) == set(messy.skipped)
    for name, start in messy.skipped.items():
        assert reasons[name].startswith(start), (name, reasons[name])
    assert not any(Path(p).name in messy.skipped for p in scan.paths)
    assert scan.skipped_summary()["hidden file"] == 2


def test_dangling_link_is_reported(messy):
    link = messy.root / "photo" / "dog" / "gone.jpg"
    link.symlink_to(messy.root / "nowhere.jpg")
    scan = quiet_scan(messy.root)
    assert dict(scan.skipped)[str(link)].startswith("unreadable file")
    assert len(scan) == messy.n_images


def test_full_verify_catches_truncated_jpeg(tmp_path):
    messy = make_messy_domainbed(tmp_path, truncated=True)
    assert str(messy.truncated) in quiet_scan(tmp_path).paths  # a header check cannot see it
    full = quiet_scan(tmp_path, verify="full")
    assert str(messy.truncated) in dict(full.skipped)
    assert len(full) == messy.n_images - 1


def test_scan_is_deterministic(messy):
    a, b = quiet_scan(messy.root), quiet_scan(messy.root)
    assert (a.paths == b.paths).all() and (a.labels == b.labels).all()


def test_max_per_domain_is_seeded_and_stratified(messy):
    a = quiet_scan(messy.root, max_per_domain=4, seed=1)
    b = quiet_scan(messy.root, max_per_domain=4, seed=1)
    assert (a.paths == b.paths).all()
    assert a.counts() == {"Real World": 4, "photo": 4, "sketch": 4}
    # Round-robin over classes: every class of a domain is represented.
    assert set(a.labels[a.domains == "photo"]) == {0, 1, 2}
    seeds = {tuple(quiet_scan(messy.root, max_per_domain=4, seed=s).paths) for s in range(5)}
    assert len(seeds) > 1
    with pytest.raises(ValueError, match="max_per_domain"):
        scan_domain_folder(messy.root, max_per_domain=0)
    with pytest.raises(ValueError, match="verify must be"):
        scan_domain_folder(messy.root, verify="partial")


def test_named_dataset_under_a_data_root(tmp_path):
    make_messy_domainbed(tmp_path / "PACS")
    for d, new in [("photo", "art_painting"), ("Real World", "cartoon")]:
        (tmp_path / "PACS" / d).rename(tmp_path / "PACS" / new)
    (tmp_path / "PACS" / "photo").mkdir()
    assert detect_datasets(tmp_path) == ["PACS"]
    scan = quiet_scan(tmp_path, dataset="PACS")
    assert scan.dataset == "PACS" and scan.domain_names == ("art_painting", "cartoon", "sketch")
    with pytest.raises(ValueError, match="'VLCS' not found"):
        scan_domain_folder(tmp_path, dataset="VLCS")
    with pytest.raises(ValueError, match="unknown dataset 'Nope'.*PACS"):
        scan_domain_folder(tmp_path, dataset="Nope")


def test_detect_is_strict_about_root_itself(messy, tmp_path):
    # The messy folder has "photo" and "sketch" (PACS names) but not all PACS domains.
    assert detect_datasets(messy.root) == []
    assert is_domainbed_folder(messy.root)
    assert not is_domainbed_folder(messy.root / "photo" / "dog")
    assert detect_datasets(tmp_path / "nowhere") == []


def _write(path: Path, label: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(class_image(label, path.parent.parent.name, 0)).save(path)


def test_error_root_missing(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        scan_domain_folder(tmp_path / "missing")


def test_error_no_images(tmp_path):
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "a" / "x" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no readable images"):
        quiet_scan(tmp_path)


def test_error_one_domain(tmp_path):
    _write(tmp_path / "a" / "x" / "1.png")
    _write(tmp_path / "a" / "y" / "1.png", 1)
    with pytest.raises(ValueError, match="only one domain"):
        scan_domain_folder(tmp_path)


def test_error_one_class(tmp_path):
    _write(tmp_path / "a" / "x" / "1.png")
    _write(tmp_path / "b" / "x" / "1.png")
    with pytest.raises(ValueError, match="only one class"):
        scan_domain_folder(tmp_path)


def test_domain_with_only_corrupt_files_is_dropped_with_warning(messy):
    bad = messy.root / "broken" / "dog"
    bad.mkdir(parents=True)
    (bad / "x.jpg").write_bytes(b"garbage")
    with pytest.warns(UserWarning) as record:
        scan = scan_domain_folder(messy.root)
    assert any("'broken' in" in str(w.message) and "no readable images" in str(w.message) for w in record)
    assert "broken" not in scan.domain_names


def test_split_is_per_domain_class_and_seeded(messy):
    scan = quiet_scan(messy.root)
    train = split_mask(scan.labels, scan.domains, 0.34, seed=0)
    assert (train == split_mask(scan.labels, scan.domains, 0.34, seed=0)).all()
    for d in scan.domain_names:
        for y in np.unique(scan.labels[scan.domains == d]):
            group = train[(scan.domains == d) & (scan.labels == y)]
            assert group.sum() == 2 and (~group).sum() == 1  # 3 images -> 2 train, 1 val
    others = [split_mask(scan.labels, scan.domains, 0.34, seed=s) for s in range(1, 6)]
    assert any((o != train).any() for o in others)


def test_split_does_not_depend_on_other_domains(messy):
    scan = quiet_scan(messy.root)
    full = split_mask(scan.labels, scan.domains, seed=3)
    keep = scan.domains != "Real World"
    alone = split_mask(scan.labels[keep], scan.domains[keep], seed=3)
    assert (alone == full[keep]).all()


def test_split_edge_cases():
    labels, domains = np.array([0, 0, 1]), np.array(["a", "a", "a"])
    assert split_mask(labels, domains, 0.0).all()
    train = split_mask(labels, domains, 0.01)
    assert train[2] and train[:2].sum() == 1  # singletons stay in train; pairs give one to val
    with pytest.raises(ValueError, match="val_fraction"):
        split_mask(labels, domains, 1.0)
    with pytest.raises(ValueError, match="equal length"):
        split_mask(labels, domains[:2])


def test_load_image_handles_modes(tmp_path):
    rgb = class_image(0, "photo", 0, size=16)
    cases = {
        "rgba.png": Image.fromarray(rgb).convert("RGBA"),
        "grey.png": Image.fromarray(rgb).convert("L"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "grey16.png": Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        out = load_image(tmp_path / name)
        assert out.mode == "RGB" and out.size == (16, 16), name
    grey16 = np.asarray(load_image(tmp_path / "grey16.png"))[..., 0]
    assert np.abs(grey16.astype(int) - rgb[..., 0]).max() <= 1  # scaled, not clipped to 255


def test_load_image_composites_transparency_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert (np.asarray(load_image(tmp_path / "clear.png")) == 255).all()


def test_load_image_applies_exif_orientation(tmp_path):
    im = Image.fromarray(class_image(0, "photo", 0, size=16)[:, :8])  # 8 wide, 16 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (16, 8)


def test_load_image_raises_on_corrupt(messy):
    with pytest.raises(OSError):
        load_image(messy.root / "photo" / "dog" / "corrupt.jpg")
