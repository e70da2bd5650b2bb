"""Uploads: a zip of a data set unpacked under guards (no entry outside the folder, no links, caps on
entries and bytes), single files kept by content, and the data set found inside an unpacked zip."""
import io
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from clip_icm.datasets import scan_domain_folder, scan_manifest
from clip_icm.errors import InvalidInput
from clip_icm.uploads import data_in, save_upload, unpack_zip
from tests.folders import make_messy_domainbed


def _zip(entries: dict[str, bytes], links: dict[str, str] = {}) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def _tree_zip(root: Path, top: str = "PACS") -> bytes:
    return _zip({f"{top}/{p.relative_to(root)}": p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()})


def test_a_zipped_domainbed_tree_unpacks_to_the_same_scan(tmp_path):
    messy = make_messy_domainbed(tmp_path / "messy", n_per_class=2)
    data = _tree_zip(messy.root)
    folder = unpack_zip(data, tmp_path / "uploads")
    found = data_in(folder)
    assert found == folder / "PACS"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mine, theirs = scan_domain_folder(found), scan_domain_folder(messy.root)
    assert [str(Path(p).relative_to(found)) for p in mine.paths] == [str(Path(p).relative_to(messy.root))
                                                                     for p in theirs.paths]
    np.testing.assert_array_equal(mine.labels, theirs.labels)
    (found / "marker").write_text("kept")
    assert unpack_zip(data, tmp_path / "uploads") == folder and (found / "marker").is_file()  # the same bytes: reused
    assert not [p for p in (tmp_path / "uploads").iterdir() if p.name.startswith(".")]  # no half-unpacked sibling left


def test_a_zip_of_images_and_a_manifest_is_found_by_its_manifest(tmp_path):
    messy = make_messy_domainbed(tmp_path / "messy", n_per_class=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = scan_domain_folder(messy.root)
    lines = ["path,label,domain"] + [f"{Path(p).relative_to(messy.root)},{scan.class_folders[y]},{d}"
                                     for p, y, d in zip(scan.paths, scan.labels, scan.domains)]
    entries = {str(Path(p).relative_to(messy.root)): Path(p).read_bytes() for p in scan.paths}
    folder = unpack_zip(_zip({**entries, "list.csv": "\n".join(lines).encode()}), tmp_path / "uploads")
    assert data_in(folder) == folder / "list.csv"
    assert len(scan_manifest(folder / "list.csv")) == len(scan)


@pytest.mark.parametrize("entries, links, message", [
    ({"../evil.txt": b"x"}, {}, "would land outside the upload's folder"),
    ({"a/../../evil.txt": b"x"}, {}, "would land outside the upload's folder"),
    ({"/etc/evil": b"x"}, {}, "would land outside the upload's folder"),
    ({"C:\\evil": b"x"}, {}, "would land outside the upload's folder"),
    ({"ok.txt": b"x"}, {"link": "/etc/passwd"}, "holds a symbolic link ('link')"),
])
def test_hostile_entries_refuse_the_zip_and_leave_nothing(tmp_path, entries, links, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        unpack_zip(_zip(entries, links), tmp_path / "uploads")
    assert not (tmp_path / "evil.txt").exists() and not list((tmp_path / "uploads").glob("*"))


def test_bombs_and_crowds_are_refused_from_the_headers(tmp_path):
    bomb = _zip({"zeros.bin": bytes(10_000_000)})  # 10 MB of zeros compress to about 10 kB
    assert len(bomb) < 50_000
    with pytest.raises(InvalidInput, match="would unpack to 10,000,000 bytes, over the limit of 1,000,000"):
        unpack_zip(bomb, tmp_path / "uploads", max_bytes=1_000_000)
    crowd = _zip({f"f{i}.txt": b"x" for i in range(20)})
    with pytest.raises(InvalidInput, match="holds 20 entries, over the limit of 10"):
        unpack_zip(crowd, tmp_path / "uploads", max_files=10)
    with pytest.raises(InvalidInput, match="not a readable zip file"):
        unpack_zip(b"PK\x03\x04 not really", tmp_path / "uploads")
    assert not (tmp_path / "uploads").exists() or not list((tmp_path / "uploads").iterdir())


def test_a_single_file_is_kept_by_content_under_a_safe_name(tmp_path):
    first = save_upload(b"caption,caption_do\na,b\n", "../../my pairs.csv", tmp_path)
    assert first.parent.parent == tmp_path and first.name == "my_pairs.csv"
    assert first.read_bytes().startswith(b"caption")
    assert save_upload(b"caption,caption_do\na,b\n", "my pairs.csv", tmp_path) == first
    assert save_upload(b"other", "my pairs.csv", tmp_path).parent != first.parent
