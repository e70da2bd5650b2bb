"""The hostile-world list of issue 24: inputs an attacker or a careless user brings (forged cache
entries, special files, odd images and names, interrupted or starved runs, numbers that make no
sense). Each case must end in its clear outcome (a named error, one line, a skip with a reason,
or the correct result): never a traceback, never a hang. docs/SECURITY.md has the table of cases.
"""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_icm.store import EmbeddingStore, atomic_write, make_key
from tests.test_reliability import AS_USER, FAST, REPO, _cli, _folder, _one_line_error, _run, messy, tiny  # noqa: F401 (fixtures)


def _returns_within(seconds: float, call):
    """``call()``'s value (or its exception), failing the test (not hanging it) when it takes
    longer than ``seconds``."""
    box = {}

    def run():
        try:
            box["value"] = call()
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---------------------------------------------------------------- the store trusts no manifest field

def _entry(tmp_path, meta=None):
    store = EmbeddingStore(tmp_path / "cache")
    key = make_key("hostile")
    store.put(key, np.ones((4, 3), np.float32), meta)
    manifest = store.root / key[:2] / f"{key}.json"
    return store, key, manifest


def _rewrite(manifest, **fields):
    content = json.loads(manifest.read_text())
    content.update(fields)
    manifest.write_text(json.dumps(content))


def _retarget_data(manifest, target):
    """Point the entry's data file at ``target`` (a symlink under the very name the store wrote)."""
    data = manifest.parent / json.loads(manifest.read_text())["data"]
    data.unlink()
    data.symlink_to(target)


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_a_data_file_that_is_a_fifo_or_a_device_is_a_miss_not_a_hang(special, tmp_path):
    store, key, manifest = _entry(tmp_path)
    if special == "fifo":
        os.mkfifo(tmp_path / "pipe")
        _retarget_data(manifest, tmp_path / "pipe")
    else:
        _retarget_data(manifest, "/dev/zero")
    assert _returns_within(10, lambda: store.get(key)) is None
    assert store.stats.corrupt == 1


@pytest.mark.parametrize("name", ["../outside.npy", "ABSOLUTE", "other.npy"])
def test_a_manifest_naming_a_file_outside_its_entry_is_a_miss(name, tmp_path):
    store, key, manifest = _entry(tmp_path)
    outside = tmp_path / "cache" / "outside.npy"
    np.save(outside, np.full((4, 3), 7, np.float16))  # a valid array, with its true checksum
    data_name = str(outside) if name == "ABSOLUTE" else name
    if name == "other.npy":
        np.save(manifest.parent / "other.npy", np.full((4, 3), 7, np.float16))
    from clip_icm.hashing import file_digest

    _rewrite(manifest, data=data_name, sha256=file_digest(outside))
    assert store.get(key) is None and store.stats.corrupt == 1


def test_a_forged_meta_fails_its_checksum(tmp_path):
    store, key, manifest = _entry(tmp_path, {"failed": {}})
    _rewrite(manifest, meta={"failed": {"0": "forged"}})
    assert store.get_entry(key) is None and store.stats.corrupt == 1


@pytest.mark.parametrize("meta", [{"failed": ["0"]}, {"failed": {"x": "y"}}, {"failed": {"0": 5}},
                                  {"failed": {"99": "no such row"}}, {"failed": {"0": "row 0 is not zeros"}}])
def test_image_entries_whose_failures_cannot_be_true_are_embedded_again(meta, tmp_path):
    """A writer with access can forge a consistent entry (docs/SECURITY.md); what the store holds
    for an image chunk is still checked against what the embedder writes, so a list there is no
    AttributeError, and a valid image's row is never dropped as failed."""
    from clip_icm.pipeline import _stored_failures

    store, key, manifest = _entry(tmp_path, meta)
    vectors, stored = store.get_entry(key)
    assert stored == meta and _stored_failures(vectors, stored) is None


def test_true_failures_are_read_back(tmp_path):
    from clip_icm.pipeline import _stored_failures

    store = EmbeddingStore(tmp_path)
    vectors = np.ones((12, 3), np.float32)
    vectors[[3, 10]] = 0.0
    store.put("k" * 40, vectors, {"failed": {3: "truncated", 10: "not an image"}})
    assert _stored_failures(*store.get_entry("k" * 40)) == {3: "truncated", 10: "not an image"}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.json", lambda fh: fh.write(b"{}"))
        EmbeddingStore(tmp_path / "cache").put("m" * 40, np.ones((2, 2)))
    finally:
        os.umask(old)
    written = [tmp_path / "out.json", *(p for p in (tmp_path / "cache").rglob("*") if p.is_file())]
    assert len(written) == 3
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# ---------------------------------------------------------------- interrupted and starved runs

def test_ctrl_c_during_embed_is_one_line_and_exit_130(messy, tiny, tmp_path):
    """A real SIGINT once the embedding has started (the progress bar is on stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "clip_icm", "embed", "--root", str(messy.root), "--model", tiny,
                             "--cache", str(tmp_path / "c"), *[a for a in FAST if a != "--quiet"],
                             "--batch-size", "1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ,
                            "HF_HUB_OFFLINE": "1"})
    seen = b""
    while b"%|" not in seen:  # a progress bar: the model is loaded, images are being embedded
        byte = proc.stderr.read(1)
        assert byte, seen.decode()
        seen += byte
    proc.send_signal(signal.SIGINT)
    err = (seen + proc.stderr.read()).decode()
    assert proc.wait(timeout=120) == 130, err
    lines = [line for line in err.replace("\r", "\n").splitlines()
             if line.strip() and "|" not in line and not line.startswith("warning: ")]
    assert lines == ["interrupted: what was embedded so far is kept in the cache; run the command again to resume"], err


def test_an_interrupted_evaluate_resumes_to_the_uninterrupted_result(messy, tiny, tmp_path, capsys, monkeypatch):
    from clip_icm.backend import ClipBackend

    args = ["evaluate", "--root", str(messy.root), "--model", tiny, *FAST, "--batch-size", "4"]
    real, calls = ClipBackend.forward_images, []

    def interrupted_at_the_third_batch(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(ClipBackend, "forward_images", interrupted_at_the_third_batch)
    code, _, err = _run([*args, "--cache", str(tmp_path / "c")], capsys)
    assert code == 130 and err.strip().splitlines()[-1].startswith("interrupted:") and "Traceback" not in err
    monkeypatch.setattr(ClipBackend, "forward_images", real)
    resumed, fresh = tmp_path / "resumed.json", tmp_path / "fresh.json"
    assert _run([*args, "--cache", str(tmp_path / "c"), "--out", str(resumed)], capsys)[0] == 0
    assert _run([*args, "--cache", str(tmp_path / "fresh"), "--out", str(fresh)], capsys)[0] == 0
    assert json.loads(resumed.read_text())["rows"] == json.loads(fresh.read_text())["rows"]


def test_a_read_only_cache_folder_is_one_line_before_any_work(messy, tiny, tmp_path):
    cache = tmp_path / "c"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        done = _cli(["embed", "--root", str(messy.root), "--model", tiny, "--cache", str(cache), *FAST],
                    prefix=AS_USER)
    finally:
        cache.chmod(0o755)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith("warning: ")]
    assert errors == [f"error: the cache folder {str(cache)!r} is not writable (Permission denied); give another "
                      "with --cache DIR or $CLIP_ICM_CACHE"]
    assert list(cache.iterdir()) == []


def test_a_full_cache_disk_is_one_line(messy, tiny, tmp_path, capsys, monkeypatch):
    import errno

    import clip_icm.store as store_mod

    def full(path, write, sync=True):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod, "atomic_write", full)
    code, _, err = _run(["embed", "--root", str(messy.root), "--model", tiny, "--cache", str(tmp_path / "c"),
                         *FAST], capsys)
    _one_line_error(code, err, f"the cache folder {str(tmp_path / 'c')!r} is full (No space left on device); free "
                    "some space and run again to resume, or give another folder with --cache DIR")


def test_out_onto_a_read_only_file_is_one_line_before_any_work(messy, tiny, tmp_path):
    out = tmp_path / "rows.csv"
    out.write_text("kept\n")
    out.chmod(0o444)
    done = _cli(["evaluate", "--root", str(messy.root), "--model", tiny, "--cache", str(tmp_path / "c"), *FAST,
                 "--out", str(out)], prefix=AS_USER)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == f"error: --out {str(out)!r} is read-only; remove it or give another file name"
    assert out.read_text() == "kept\n" and not (tmp_path / "c").exists()


def test_out_that_cannot_be_written_names_the_out_file_not_a_temp_file(messy, tiny, tmp_path, capsys, monkeypatch):
    import clip_icm.store as store_mod

    out = tmp_path / "rows.csv"
    real = store_mod.atomic_write

    def refuse_the_out_file(path, write, sync=True):
        if path == out:
            raise PermissionError(13, "Permission denied", str(path.parent / ".rows.csv.x1y2.tmp"))
        return real(path, write, sync)

    monkeypatch.setattr(store_mod, "atomic_write", refuse_the_out_file)
    code, _, err = _run(["evaluate", "--root", str(messy.root), "--model", tiny, "--cache", str(tmp_path / "c"), *FAST,
                         "--out", str(out)], capsys)
    _one_line_error(code, err, f"--out {str(out)!r} could not be written (Permission denied)")
    assert ".tmp" not in err


# ---------------------------------------------------------------- special files and links in a data folder

def _two_domains(root, classes=("cat", "dog"), n=2):
    return _folder(root, {"art": classes, "photo": classes}, n=n)


def _scan_within(seconds, root, **kw):
    from clip_icm.datasets import scan_domain_folder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scan's notes are checked as data
        return _returns_within(seconds, lambda: scan_domain_folder(root, **kw))


@pytest.mark.parametrize("verify", ["none", "header", "full"])
def test_a_fifo_named_like_an_image_is_skipped_not_a_hang(verify, tmp_path):
    root = _two_domains(tmp_path / "data")
    os.mkfifo(root / "art" / "cat" / "pipe.jpg")
    scan = _scan_within(20, root, verify=verify)
    assert dict(scan.skipped)[str(root / "art" / "cat" / "pipe.jpg")] == "not a regular file: a named pipe (FIFO)"
    assert len(scan) == 8


def test_a_device_linked_under_an_image_name_is_skipped(tmp_path):
    root = _two_domains(tmp_path / "data")
    (root / "art" / "cat" / "zero.png").symlink_to("/dev/zero")
    scan = _scan_within(20, root, verify="none")
    assert dict(scan.skipped)[str(root / "art" / "cat" / "zero.png")] == "not a regular file: a character device"
    assert len(scan) == 8


def test_a_file_link_leaving_the_data_folder_is_skipped(tmp_path):
    root = _two_domains(tmp_path / "data")
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    (root / "art" / "cat" / "leak.png").symlink_to(outside)
    (root / "art" / "cat" / "inside.png").symlink_to(root / "photo" / "cat" / "0.png")  # inside: an ordinary file
    scan = _scan_within(20, root)
    assert dict(scan.skipped)[str(root / "art" / "cat" / "leak.png")] == f"link leaving the data folder: points to {outside}"
    assert str(root / "art" / "cat" / "inside.png") in scan.paths and len(scan) == 9


def test_a_file_link_to_itself_is_skipped(tmp_path):
    root = _two_domains(tmp_path / "data")
    (root / "art" / "cat" / "self.png").symlink_to(root / "art" / "cat" / "self.png")
    scan = _scan_within(20, root)
    assert dict(scan.skipped)[str(root / "art" / "cat" / "self.png")].startswith("unreadable file: OSError")
    assert len(scan) == 8


@pytest.mark.parametrize("link, target", [("loop", "."), ("art/loop", ".."), ("art/cat/loop", "../.."),
                                          ("art/cat/sub", "../../photo/dog"), ("art/mirror", "../photo/cat"),
                                          ("elsewhere", "OUTSIDE")])
def test_linked_folders_are_skipped_and_reported_never_followed(link, target, tmp_path):
    """Issue 24 found loops followed one level (24 files became 96 images in 6 classes, target
    images leaked into the sources) and links inside class folders dropped without a word."""
    root = _two_domains(tmp_path / "data", n=3)
    outside = _two_domains(tmp_path / "outside")
    (root / link).symlink_to(outside if target == "OUTSIDE" else target, target_is_directory=True)
    scan = _scan_within(20, root)
    assert len(scan) == 12 and scan.class_folders == ("cat", "dog") and scan.domain_names == ("art", "photo")
    assert dict(scan.skipped)[str(root / link)].startswith("linked folder: not followed")


def test_a_folder_named_like_an_image_is_read_as_a_folder(tmp_path):
    root = _two_domains(tmp_path / "data")
    _folder(root / "art" / "cat", {"album.jpg": ("",)}, n=2)  # art/cat/album.jpg/<2 images>
    scan = _scan_within(20, root, verify="full")
    assert len(scan) == 10 and str(root / "art" / "cat" / "album.jpg" / "0.png") in scan.paths
    assert not any("album.jpg" in path and path.endswith("album.jpg") for path, _ in scan.skipped)


@pytest.mark.parametrize("names, shown", [
    (("Dog", "dog"), "'Dog', 'dog' all read as 'dog'"),
    (("dog_x", "dog-x", "dog x"), "'dog x', 'dog-x', 'dog_x' all read as 'dog x'"),
    ((unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")), r"'cafe\u0301', 'caf\xe9' all read"),
])
def test_class_folders_that_read_as_one_name_are_reported(names, shown, tmp_path):
    root = _folder(tmp_path / "data", {"art": (*names, "other"), "photo": (*names, "other")}, n=1)
    if len({p.name for p in (root / "art").iterdir()}) < len(names) + 1:
        pytest.fail("this test needs a case-sensitive file system")
    scan = _scan_within(20, root)
    assert len(scan.class_folders) == len(names) + 1  # kept apart, as on disk
    collisions = [note for note in scan.notes if "all read as" in note]
    assert len(collisions) == 1 and f"class folders {shown}" in collisions[0], scan.notes
    assert "rename all but one" in collisions[0]


def test_domain_folders_that_read_as_one_name_are_reported(tmp_path):
    root = _folder(tmp_path / "data", {"Art": ("cat", "dog"), "art": ("cat", "dog"), "photo": ("cat", "dog")}, n=1)
    scan = _scan_within(20, root)
    assert [n for n in scan.notes if "all read as" in n] == [
        "domain folders 'Art', 'art' all read as 'art' (identical prompts; one folder on a case-insensitive disk); "
        "rename all but one"]


# ---------------------------------------------------------------- images: one RGB the model sees, or a reason

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _halves(size=(20, 10), left=RED, right=BLUE, mode="RGB"):
    im = Image.new("RGB", size, right)
    im.paste(left, (0, 0, size[0] // 2, size[1]))
    return im.convert(mode)


def test_exif_orientation_is_applied(tmp_path):
    from clip_icm.datasets import load_image

    im = _halves()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    shown = load_image(tmp_path / "rotated.jpg")
    assert shown.size == (10, 20)
    assert np.abs(np.subtract(shown.getpixel((5, 2)), RED)).max() < 40  # the left half is now on top
    assert np.abs(np.subtract(shown.getpixel((5, 17)), BLUE)).max() < 40


@pytest.mark.parametrize("mode, pixels, expected", [
    ("I;16", np.full((8, 8), 32896, np.uint16), (128, 128, 128)),   # 16-bit grey: scaled, not clipped to white
    ("CMYK", None, WHITE),                                           # CMYK with no ink
    ("LA", None, WHITE),                                             # grey + alpha: transparent is white
])
def test_wide_and_odd_modes_become_the_rgb_the_model_sees(mode, pixels, expected, tmp_path):
    from clip_icm.datasets import load_image

    if pixels is not None:
        im = Image.fromarray(pixels)
        assert im.mode == mode
    elif mode == "CMYK":
        im = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    else:
        im = Image.new("LA", (8, 8), (0, 0))
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    im.save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (8, 8)
    assert np.abs(np.asarray(rgb, int) - expected).max() <= 1


def test_a_16_bit_rgb_png_is_scaled_not_clipped(tmp_path):
    import struct
    import zlib

    from clip_icm.datasets import load_image

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + np.full((4, 3), 40000, ">u2").tobytes() for _ in range(4))  # Pillow writes no 16-bit RGB
    (tmp_path / "rgb16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0))
                                         + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert np.unique(np.asarray(load_image(tmp_path / "rgb16.png"))).tolist() == [156]  # 40000 / 257


def test_a_palette_image_with_a_transparent_index_is_white_there(tmp_path):
    from clip_icm.datasets import load_image

    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.save(tmp_path / "p.png", transparency=0)
    rgb = load_image(tmp_path / "p.png")
    assert rgb.getpixel((0, 0)) == WHITE and rgb.getpixel((3, 3)) == RED  # not black where transparent


@pytest.mark.parametrize("suffix", ["gif", "webp", "png"])
def test_an_animation_gives_its_first_frame(suffix, tmp_path):
    from clip_icm.datasets import load_image

    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE, (0, 255, 0))]
    frames[0].save(tmp_path / f"anim.{suffix}", save_all=True, append_images=frames[1:], duration=100, loop=0,
                   **({"lossless": True} if suffix == "webp" else {}))
    with Image.open(tmp_path / f"anim.{suffix}") as check:
        assert getattr(check, "n_frames", 1) == 3
    assert np.abs(np.subtract(load_image(tmp_path / f"anim.{suffix}").getpixel((8, 8)), RED)).max() <= 2


@pytest.mark.parametrize("values, expected", [
    (np.full((8, 8), 0.5, np.float32), 128),      # 0-1 floats: were black
    (np.full((8, 8), 200, np.int32), 200),        # 0-255 in 32-bit integers: were near black (/257)
    (np.full((8, 8), 40000, np.int32), 156),      # 0-65535 in 32-bit integers
])
def test_32_bit_tiffs_are_scaled_from_their_range(values, expected, tmp_path):
    from clip_icm.datasets import load_image

    Image.fromarray(values).save(tmp_path / "wide.tif")
    assert Image.open(tmp_path / "wide.tif").mode in ("F", "I")
    assert np.unique(np.asarray(load_image(tmp_path / "wide.tif"))).tolist() == [expected]


@pytest.mark.parametrize("values, reason", [
    (np.array([[-5.0, 3000.0]] * 4, np.float32), "32-bit image with values from -5 to 3000: no known scale"),
    (np.array([[np.nan, 1.0]] * 4, np.float32), "32-bit image with NaN or infinite values"),
    (np.array([[0, 70000]] * 4, np.int32), "32-bit image with values from 0 to 70000: no known scale"),
])
def test_32_bit_tiffs_with_no_known_scale_are_skipped_with_the_reason(values, reason, tmp_path):
    from clip_icm.datasets import RejectedImage, load_image, scan_domain_folder

    root = _two_domains(tmp_path / "data")
    Image.fromarray(np.repeat(values, 4, axis=1)).save(root / "art" / "cat" / "wide.tif")
    with pytest.raises(RejectedImage, match=reason):
        load_image(root / "art" / "cat" / "wide.tif")
    scan = _scan_within(20, root, verify="full")
    assert dict(scan.skipped)[str(root / "art" / "cat" / "wide.tif")].startswith(reason)


@pytest.mark.parametrize("size, reason", [
    ((9000, 9000), "too large: 9000x9000 pixels, over the limit of 67,108,864"),    # under Pillow's own limit
    ((14000, 14000), "too large: Image size (196000000 pixels) exceeds limit"),      # over twice Pillow's limit
    ((4000, 40), "absurd aspect ratio: 4000x40 pixels (more than 50:1)"),
])
def test_bombs_and_strips_are_skipped_before_decoding(size, reason, tmp_path):
    from clip_icm.datasets import RejectedImage, load_image

    root = _two_domains(tmp_path / "data")
    Image.new("1", size).save(root / "art" / "cat" / "big.png")  # 1 bit a pixel: small to write
    for verify in ("header", "full"):
        scan = _scan_within(30, root, verify=verify)
        assert dict(scan.skipped)[str(root / "art" / "cat" / "big.png")].startswith(reason) and len(scan) == 8
    with pytest.raises(RejectedImage, match=re.escape(reason)):
        load_image(root / "art" / "cat" / "big.png")


def test_an_embed_run_reports_odd_images_and_embeds_the_rest(tiny, tmp_path, capsys):
    root = _two_domains(tmp_path / "data", n=3)
    Image.new("1", (9000, 9000)).save(root / "art" / "cat" / "bomb.png")
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(root / "art" / "dog" / "float.tif")
    Image.fromarray(np.array([[-1.0, 9.0e5]] * 8, np.float32)).save(root / "photo" / "dog" / "odd.tif")
    code, out, err = _run(["embed", "--root", str(root), "--model", tiny, "--cache", str(tmp_path / "c"), *FAST],
                          capsys)
    assert code == 0 and "Traceback" not in err, err
    assert "13 images" in out  # 12 + the 0-1 float TIFF
    assert f"{root / 'art' / 'cat' / 'bomb.png'}: too large: 9000x9000 pixels" in out  # by the scan's header check
    assert (f"{root / 'photo' / 'dog' / 'odd.tif'}: unreadable image: RejectedImage: 32-bit image with values from -1 "
            "to 900000") in out  # found when decoding


# ---------------------------------------------------------------- names are data, never markup

MARKUP_NAMES = ["<b>bold</b>", 'x<br>y', '<a href="http://evil.example">click</a>', "R&D \"quoted\" 'single'",
                "café " + "long" * 60]


def _markup_points(names):
    import pandas as pd

    n = len(names)
    return pd.DataFrame({"id": range(2 * n), "class": names * 2, "domain": ["<i>dom</i>"] * n + ["plain"] * n,
                         "role": ["source"] * n + ["target"] * n, "prediction": names[::-1] * 2,
                         "correct": [True, False] * n})


def _no_markup_from(text, names):
    """No name reaches ``text`` as markup: every ``<`` there is plotly's own (<br>, <b> of a target
    tick, <extra>), never the start of a name's tag."""
    for name in names:
        if "<" in name:
            assert name not in text, text


def test_names_in_scatter_legends_and_hovers_are_escaped():
    import html

    from clip_icm import figures

    points = _markup_points(MARKUP_NAMES)
    fig = figures.scatter_layout(np.zeros((len(points), 2)), points, "class", title="<b>t</b>")
    for trace in fig.data:
        _no_markup_from(trace.name, MARKUP_NAMES)
        for hover in trace.hovertext:
            _no_markup_from(hover, MARKUP_NAMES + ["<i>dom</i>"])
            shown_class = hover.split("<br>")[0].removeprefix("class: ")
            assert html.unescape(shown_class) in MARKUP_NAMES  # what shows is the name itself
    assert {html.unescape(t.name.rsplit(" (", 1)[0]) for t in fig.data} == set(MARKUP_NAMES)
    assert fig.layout.title.text == "&lt;b&gt;t&lt;/b&gt;"


def test_names_in_bar_ticks_confusion_axes_and_exported_html_are_escaped():
    import html

    import pandas as pd

    from clip_icm import figures

    domains = ["<b>art</b>", '<a href="http://evil.example">photo</a>']
    table = pd.DataFrame({"domain": domains * 2, "method": ["icm", "icm", "clip", "clip"],
                          "protocol": ["zero-shot"] * 4, "label": ["ICM", "ICM", "<i>CLIP</i>", "<i>CLIP</i>"],
                          "accuracy": [0.5, 0.6, 0.7, 0.8]})
    bars = figures.accuracy_bars(table, target=domains[1])
    ticks = [x for trace in bars.data for x in trace.x]
    assert "<b>&lt;a href=\"http://evil.example\"&gt;photo&lt;/a&gt; (target)</b>" in ticks  # only our <b> is markup
    _no_markup_from(" ".join(ticks) + " ".join(t.name for t in bars.data), domains + ["<i>CLIP</i>"])
    confusion = figures.confusion_heatmaps({"x": np.eye(2)}, domains, {"x": "<u>title</u>"})
    assert [html.unescape(c) for c in confusion.data[0].x] == domains
    _no_markup_from(" ".join(confusion.data[0].x) + confusion.layout.annotations[0].text, domains + ["<u>title</u>"])
    exported = figures.figure_html(bars).decode()
    assert "evil.example" in exported and "&lt;a href" in exported


@pytest.mark.parametrize("typed, reason", [
    ("~nosuchuser/x", "Folder not found: ~nosuchuser/x (Could not determine home directory.)"),
    ("/tmp/a\x00b", "Folder not found: /tmp/a\\x00b (embedded null byte)"),
    ("/" + "d" * 5000, "(5,001 characters) (File name too long)"),
])
def test_odd_folder_text_is_a_message_not_a_traceback(typed, reason):
    from clip_icm import service

    with pytest.raises(service.ServiceError) as caught:
        service.detect_folder(typed)
    assert reason in str(caught.value) and len(str(caught.value)) < 400


def test_markdown_in_a_name_is_shown_as_typed():
    from dashboard.texts import plain

    for text in ("[click](http://evil.example)", "**bold** _it_ `code` :red[x] :material/home: $x^2$ <b>html</b>",
                 "a\\b | ~ &amp; www.evil.example me@evil.example"):
        escaped = plain(text)
        assert re.sub(r"\\(.)", r"\1", escaped) == text  # each mark escaped, nothing else changed
        for live in (r"\]\(", r"\*\*", r":red\[", r"://", r"www\.", r"@", r"&amp;", r"<b>"):
            assert not re.search(r"(?<!\\)" + live, escaped), (live, escaped)


@pytest.mark.parametrize("typed", ["[click me](http://evil.example)", "~nosuchuser/x", "/tmp/a\x00b", "/" + "d" * 5000])
def test_the_folder_field_answers_odd_text_with_an_escaped_message(typed):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    at.session_state["ctl_source"], at.session_state["ctl_root"] = "folder", typed
    at.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 1 and errors[0].startswith("Folder not found\\:"), errors
    assert not re.search(r"(?<!\\)[\[\]]", errors[0]) and len(errors[0]) < 500  # a link's brackets are escaped
    assert not at.get("plotly_chart")


def test_terminal_escapes_in_names_are_printed_as_data(tiny, tmp_path, capsys):
    """A folder name with an escape sequence (a colour, a cleared screen, an OSC 8 hyperlink)
    reaches the CLI's summary, warnings and skipped list as its escapes."""
    hostile = "cat\x1b[2J\x1b]8;;mailto:x@evil.example\x07link\x1b]8;;\x07"
    root = _folder(tmp_path / "data", {"art": (hostile, "dog"), "photo": (hostile, "dog"), "sketch": ("dog",)})
    (root / "art" / hostile / "notes.txt").write_text("not an image")
    code, out, err = _run(["embed", "--root", str(root), "--model", tiny, "--cache", str(tmp_path / "c"), *FAST], capsys)
    assert code == 0 and "\x1b" not in out + err and "\x07" not in out + err
    assert "cat\\x1b[2J\\x1b]8;;mailto:x@evil.example\\x07link" in out  # the skipped file's path
    assert "has no images of class 'cat\\x1b[2J" in err  # the scan's warning about sketch


def test_the_page_icon_is_served_by_the_dashboard_never_fetched():
    """A :material/...: favicon is fetched from fonts.gstatic.com; the page's is its own file, which
    Streamlit serves from this server's /media/ path."""
    from streamlit.testing.v1 import AppTest

    from dashboard import FAVICON

    def page(icon: str) -> None:
        import streamlit as st
        from streamlit.commands.page_config import _get_favicon_string

        st.text(_get_favicon_string(icon))

    at = AppTest.from_function(page, args=(str(FAVICON),)).run()
    assert FAVICON.read_bytes().startswith(b"\x89PNG")
    url = at.text[0].value  # a path on the page's own server (AppTest's is under /mock/)
    assert url.startswith("/") and not url.startswith("//") and "/media/" in url and url.endswith(".png")
    assert "page_icon=FAVICON" in (REPO / "dashboard" / "shell.py").read_text()


# ---------------------------------------------------------------- the API: named errors, and properties

from hypothesis import HealthCheck, assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from clip_icm.errors import InvalidInput  # noqa: E402
from clip_icm.projection import (InvariantProjection, NullSpaceProjection, OrthCaliProjection,  # noqa: E402
                                 PCAProjection, ReleasedMoments)

# No example database in the repository, no flaky deadline on a busy 2-core machine.
PROPERTY = settings(database=None, deadline=None, max_examples=60,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _pairs(seed=0, n=12, d=5):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    return z, z + 0.1 * rng.normal(size=(n, d))


@pytest.mark.parametrize("case, call, message", [
    ("NaN in Z", lambda z, zd: InvariantProjection(2).fit(np.where(z > 1, np.nan, z), zd), "Z contains NaN or inf"),
    ("inf in Z_do", lambda z, zd: InvariantProjection(2).fit(z, np.where(zd > 1, np.inf, zd)), "Z_do contains NaN or inf"),
    ("finite 1e200", lambda z, zd: InvariantProjection(2).fit(z * 1e200, zd), "overflow their second moments"),
    ("1e200, released", lambda z, zd: ReleasedMoments(z * 1e200, zd), "overflow their second moments"),
    ("lam 1e308", lambda z, zd: InvariantProjection(2, lam=1e308).fit(z, z + 10.0), "overflows float64"),
    ("K = 0", lambda z, zd: InvariantProjection(0).fit(z, zd), "n_components=0 must be an integer between 1 and D=5"),
    ("K > D", lambda z, zd: InvariantProjection(6).fit(z, zd), "n_components=6 must be an integer between 1 and D=5"),
    ("K a string", lambda z, zd: PCAProjection("2").fit(z, zd), "n_components='2' must be an integer"),
    ("lam < 0", lambda z, zd: InvariantProjection(2, lam=-1.0).fit(z, zd), "lam must be >= 0"),
    ("lam a string", lambda z, zd: InvariantProjection(2, lam="1").fit(z, zd), "lam must be a finite number, got '1'"),
    ("lam None", lambda z, zd: InvariantProjection(2, lam=None).fit(z, zd), "lam must be a finite number, got None"),
    ("lam NaN", lambda z, zd: OrthCaliProjection(lam=float("nan")).fit(z, zd), "lam must be a finite number"),
    ("shapes differ", lambda z, zd: InvariantProjection(2).fit(z, zd[:-1]), "must have the same shape"),
    ("one sample", lambda z, zd: InvariantProjection(2).fit(z[:1], zd[:1]), "need at least 2 pairs"),
    ("1-D input", lambda z, zd: InvariantProjection(2).fit(z[0], zd[0]), "must be a 2-D array"),
    ("strings", lambda z, zd: InvariantProjection(2).fit([["a", "b"]] * 3, zd), "Z must be a 2-D array of numbers"),
    ("ragged", lambda z, zd: InvariantProjection(2).fit([[1.0, 2.0], [1.0]], zd), "Z must be a 2-D array of numbers"),
    ("all-zero Z", lambda z, zd: InvariantProjection(4).fit(np.zeros_like(z), zd), "Z is all zeros"),
    ("transform width", lambda z, zd: InvariantProjection(2).fit(z, zd).transform(z[:, :4]), "X has 4 features"),
    ("transform NaN", lambda z, zd: InvariantProjection(2).fit(z, zd).transform(z * np.nan), "X contains NaN"),
])
def test_the_estimators_refuse_nonsense_with_a_named_error(case, call, message):
    z, zd = _pairs()
    with pytest.raises(InvalidInput, match=re.escape(message)):
        call(z, zd)


@pytest.mark.parametrize("case, call, message", [
    ("K a string", lambda: _eval_config(n_components="4"), "n_components (K) must be an integer"),
    ("K = 0", lambda: _eval_config(n_components=0), "n_components (K) must be an integer of at least 1"),
    ("lam a string", lambda: _eval_config(lam="1"), "lam must be a finite number, got lam='1'"),
    ("lam inf", lambda: _eval_config(lam=float("inf")), "lam must be a finite number"),
    ("NaN features", lambda: _zero_shot(features=np.full((3, 5), np.nan)), "features contains NaN or inf"),
    ("feature width", lambda: _zero_shot(features=np.ones((3, 4))), "features have 4 dimensions, text_features 5"),
    ("NaN prompts", lambda: _zero_shot(text=np.full((1, 2, 5), np.nan)), "text_features contains NaN or inf"),
    ("one class", lambda: _probe(y=np.zeros(6, int)), "needs at least 2 classes"),
    ("labels short", lambda: _probe(y=np.array([0, 1, 0])), "train_X has 6 rows and train_y 3 labels"),
    ("inf rows", lambda: _probe(X=np.full((6, 5), np.inf)), "train_X contains NaN or inf"),
])
def test_the_evaluation_functions_refuse_nonsense_with_a_named_error(case, call, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        call()


def _eval_config(**kw):
    from clip_icm.evaluation import EvalConfig

    return EvalConfig(**kw)


def _zero_shot(features=None, text=None):
    from clip_icm.evaluation import zero_shot_predict

    features = np.ones((3, 5)) if features is None else features
    return zero_shot_predict(features, np.ones((1, 2, 5)) if text is None else text)


def _probe(X=None, y=None):
    from clip_icm.evaluation import fit_linear_probe

    X = np.random.default_rng(0).normal(size=(6, 5)) if X is None else X
    y = np.array([0, 1] * 3) if y is None else y
    return fit_linear_probe(X, y, X, np.array([0, 1] * 3))


FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)


@st.composite
def _pair_stacks(draw):
    n, d = draw(st.integers(2, 10)), draw(st.integers(1, 6))
    z = draw(hnp.arrays(np.float64, (n, d), elements=FINITE))
    z_do = draw(hnp.arrays(np.float64, (n, d), elements=FINITE))
    assume(np.abs(z).max() > 1e-3)
    return z, z_do


@PROPERTY
@given(_pair_stacks(), st.data())
def test_property_every_valid_fit_keeps_the_estimator_contract(pairs, data):
    z, z_do = pairs
    d = z.shape[1]
    k = data.draw(st.integers(1, d), label="K")
    lam = data.draw(st.floats(0, 1e3, allow_nan=False), label="lam")
    estimators = [InvariantProjection(k, lam), InvariantProjection(k, lam, selection="as_released"),
                  PCAProjection(k), NullSpaceProjection(n_components=k)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank-deficient stacks warn; that is their contract
        for estimator in estimators:
            fitted = estimator.fit(z, z_do)
            rows = fitted.components_
            assert 1 <= len(rows) <= k and rows.shape[1] == d
            np.testing.assert_allclose(rows @ rows.T, np.eye(len(rows)), atol=1e-6)
            np.testing.assert_allclose(fitted.transform(z), type(estimator)(**estimator.get_params())
                                       .fit_transform(z, z_do), atol=1e-8)


ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(-5, 10), st.floats(), st.text(max_size=3),
                     st.lists(st.floats(), max_size=3))


@PROPERTY
@given(st.integers(1, 6), st.integers(1, 5), ANYTHING, ANYTHING,
       st.sampled_from(["clean", "nan", "inf", "huge", "zero", "short", "wide"]))
def test_property_any_input_fits_or_raises_invalid_input(n, d, k, lam, damage):
    z, z_do = _pairs(n=n, d=d)
    if damage in ("nan", "inf", "huge"):
        z[0, 0] = {"nan": np.nan, "inf": -np.inf, "huge": 1e300}[damage]
    elif damage == "zero":
        z[:] = 0.0
    elif damage == "short":
        z_do = z_do[:-1]
    elif damage == "wide":
        z_do = np.hstack([z_do, z_do])
    bad_k = isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d
    bad_lam = isinstance(lam, bool) or not isinstance(lam, (int, float)) or not np.isfinite(lam) or lam < 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            InvariantProjection(k, lam).fit(z, z_do)
        except InvalidInput:
            return
    assert not (bad_k or bad_lam or damage != "clean" or n < 2), (k, lam, damage, n)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@PROPERTY
@given(JSON, st.sampled_from(["data", "sha256", "meta", "shape", "format", "meta_sha256", "whole"]))
def test_property_a_manifest_of_any_shape_is_a_hit_or_a_miss(tmp_path_factory, value, field):
    store, key, manifest = _entry(tmp_path_factory.mktemp("m"), {"failed": {}})
    if field == "whole":
        manifest.write_text(json.dumps(value))
    else:
        _rewrite(manifest, **{field: value})
    entry = _returns_within(10, lambda: store.get_entry(key))
    assert entry is None or (entry[0].shape == (4, 3) and isinstance(entry[1], dict))


@PROPERTY
@given(st.binary(max_size=64))
def test_property_manifest_bytes_are_a_hit_or_a_miss(tmp_path_factory, raw):
    store, key, manifest = _entry(tmp_path_factory.mktemp("m"))
    manifest.write_bytes(raw)
    assert store.get_entry(key) is None


@PROPERTY
@given(JSON)
def test_property_stored_failures_of_any_shape_are_read_or_refused(meta):
    from clip_icm.pipeline import _stored_failures

    vectors = np.zeros((5, 3), np.float16)
    vectors[0] = 1.0
    failed = _stored_failures(vectors, meta if isinstance(meta, dict) else {"failed": meta})
    assert failed is None or all(isinstance(r, int) and 1 <= r < 5 and isinstance(w, str) for r, w in failed.items())


@PROPERTY
@given(JSON)
def test_property_a_hash_memo_of_any_shape_costs_time_never_correctness(tmp_path_factory, memo):
    from clip_icm.pipeline import _hashes, file_hash

    folder = tmp_path_factory.mktemp("h")
    image = folder / "a.png"
    Image.new("RGB", (4, 4)).save(image)
    if isinstance(memo, dict) and memo:
        memo = {str(image): next(iter(memo.values()))}  # a value of any shape under the real path
    (folder / "memo.json").write_text(json.dumps(memo))
    hashes = _hashes(np.array([str(image)]), None, folder / "memo.json")
    assert hashes.tolist() == [file_hash(image)]  # no random memo matches the file's stamp


@PROPERTY
@given(st.text(max_size=30))
def test_property_number_lists_on_the_command_line_parse_or_say_why(text):
    import argparse

    from clip_icm.cli import _float_list

    try:
        values = _float_list(text)
    except argparse.ArgumentTypeError:
        return
    assert values and all(isinstance(v, float) for v in values)


PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


@PROPERTY
@given(st.sampled_from([b"", PNG_HEAD, b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBPVP8 "]),
       st.binary(max_size=200))
def test_property_any_file_bytes_decode_or_fail_as_a_decode_error(tmp_path_factory, head, tail):
    """What the backend catches per image (its _DECODE_ERRORS) is all a broken file may raise:
    anything else would stop a whole embedding run."""
    from clip_icm.backend import _DECODE_ERRORS
    from clip_icm.datasets import _check_image, load_image

    path = tmp_path_factory.mktemp("img") / "x.png"
    path.write_bytes(head + tail)
    for verify in ("header", "full"):
        reason = _returns_within(10, lambda: _check_image(path, verify))
        assert reason is None or isinstance(reason, str)
    try:
        image = _returns_within(10, lambda: load_image(path))
    except _DECODE_ERRORS:
        return
    assert image.mode == "RGB"


@pytest.mark.parametrize("content, reason", [
    ("a,b\n1,2\n", "it lacks the column(s) path, cls, style, colour, background, x, y, size, rotation, seed"),
    ("", "(No columns to parse from file)"),
    ('path,cls\n"unclosed', "(Error tokenizing data"),
])
def test_a_factors_csv_of_another_kind_is_one_line(content, reason, tiny, tmp_path, capsys):
    """factors.csv makes a folder a ToyDomains world; someone else's file of that name (or a
    damaged one) once gave pandas' KeyError traceback."""
    root = _two_domains(tmp_path / "data")
    (root / "factors.csv").write_text(content)
    code, _, err = _run(["embed", "--root", str(root), "--model", tiny, "--cache", str(tmp_path / "c"), *FAST], capsys)
    _one_line_error(code, err, f"{root / 'factors.csv'} is not a ToyDomains factors table", reason,
                    "rename the file to use the folder as plain images")


@PROPERTY
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12), max_size=6),
       st.lists(st.lists(st.text(max_size=6) | st.floats().map(str), min_size=1, max_size=6), max_size=4))
def test_property_a_factors_csv_of_any_shape_loads_or_says_why(tmp_path_factory, header, rows):
    import csv

    from clip_icm.toydomains import _NEEDED_COLUMNS, load_factors

    root = tmp_path_factory.mktemp("f")
    with open(root / "factors.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    try:
        table = load_factors(root)
    except InvalidInput as e:
        assert "is not a ToyDomains factors table" in str(e)
        return
    assert set(_NEEDED_COLUMNS) <= set(table.columns)


@pytest.mark.parametrize("content", ['{not json', '{"model_cfg": {"embed_dim": 4}}', '[1, 2]',
                                     '{"model_cfg": {"vision_cfg": {"image_size": "big"}}}',
                                     '{"preprocess_cfg": 3, "model_cfg": {"vision_cfg": {"image_size": 32}}}'])
def test_a_local_model_folder_with_a_broken_config_is_one_line(content, tmp_path, capsys):
    """A local-dir: folder whose open_clip_config.json is damaged or another tool's: once a
    JSONDecodeError, AttributeError or KeyError traceback."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(content)
    code, _, err = _run(["embed", "--model", f"local-dir:{folder}", "--pretrained", "none", "--quiet",
                         "--cache", str(tmp_path / "c")], capsys)
    _one_line_error(code, err, f"{folder / 'open_clip_config.json'} is not an open_clip model config (")


def test_a_local_model_config_open_clip_cannot_build_is_one_line(tiny, tmp_path, capsys):
    folder = Path(tiny[len("local-dir:"):])
    broken = tmp_path / "model"
    broken.mkdir()
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["layers"] = "twelve"
    (broken / "open_clip_config.json").write_text(json.dumps(config))
    code, _, err = _run(["embed", "--root", str(_two_domains(tmp_path / "data")), "--model", f"local-dir:{broken}",
                         "--pretrained", "none", "--quiet", "--workers", "0", "--cache", str(tmp_path / "c")], capsys)
    _one_line_error(code, err, f"open_clip cannot build a model from {broken / 'open_clip_config.json'} (")


@pytest.mark.parametrize("recipe", ["{damaged", "", "[]"])
def test_a_damaged_demo_recipe_draws_the_world_again(recipe, tmp_path):
    from clip_icm.toydomains import _has_demo

    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "recipe.json").write_text(recipe)
    (tmp_path / "demo" / "factors.csv").write_text("path\n")
    assert _has_demo(tmp_path / "demo") is False  # drawn again by ensure_demo_data, never a JSONDecodeError


@PROPERTY
@given(JSON)
@example({"key": 5})
@example({"key": ["a", "list"], "files": {}})
def test_property_a_model_memo_of_any_shape_gives_the_true_model_key(tmp_path_factory, memo):
    from clip_icm.backend import ModelConfig, _memo_name, model_key, resolve_model

    cfg = ModelConfig("toy-clip", device="cpu")
    memo_dir = tmp_path_factory.mktemp("models")
    if isinstance(memo, dict):
        memo.setdefault("files", {})  # the shape that once returned any "key" as the model's key
    (memo_dir / f"{_memo_name(cfg)}.json").write_text(json.dumps(memo))
    assert model_key(cfg, memo_dir) == resolve_model(cfg).key
