"""The fault list of issue 12, end to end: each case is a bad input or a broken environment that
once gave a traceback, a silent loss or a wrong result, and must now give a one-line error or the
correct result. Everything runs on small generated folders and a tiny random-weight model, in
seconds; the permission cases drop root's override (CAP_DAC_OVERRIDE) in a subprocess.

The promises these tests (and the ones named in README, "What we promise and how we test it")
stand for are listed there.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clip_icm import service
from clip_icm.cli import main
from tests.folders import class_image, make_messy_domainbed
from tests.tiny_clip import save_checkpoint, write_local_dir

REPO = Path(__file__).resolve().parent.parent
FAST = ["--pretrained", "none", "--quiet", "--text-banks", "styles", "--templates", "single", "--workers", "0",
        "--interventions", "grayscale"]
# Root reads every file whatever its mode; without these two capabilities it obeys the modes.
AS_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return f"local-dir:{write_local_dir(tmp_path_factory.mktemp('tiny') / 'model')}"


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy_domainbed(tmp_path_factory.mktemp("messy") / "data", n_per_class=3)


def _folder(root: Path, layout: dict[str, tuple[str, ...]], n: int = 3, fmt: str = "png") -> Path:
    """``layout``: domain -> its classes; n images each (BMP: same size whatever the pixels)."""
    for d, classes in layout.items():
        for label, c in enumerate(classes):
            (root / d / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(class_image(label, d, i)).save(root / d / c / f"{i}.{fmt}")
    return root


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit code 1 and one error line (warning lines about the data may come before it)."""
    errors = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert code == 1, err
    assert len(errors) == 1 and errors[0].startswith("error:"), err
    for needle in needles:
        assert needle in errors[0], errors[0]


def _cli(args: list[str], prefix: tuple[str, ...] = (), **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "clip_icm", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}, **kw)


# ---------------------------------------------------------------- 1. bad checkpoint files

def _checkpoints(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (--model, --pretrained) of a file that is not weights for that model."""
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("labelling notes, not weights\n")
    noise = np.random.default_rng(0).bytes(4096)
    (folder / "noise.pt").write_bytes(noise)
    (folder / "noise.safetensors").write_bytes(noise)
    other = save_checkpoint(folder / "other_arch.bin", seed=1)  # real weights, another architecture
    return {"text file": ("toy-clip", str(folder / "notes.txt")), "random .pt": ("toy-clip", str(folder / "noise.pt")),
            "random .safetensors": ("toy-clip", str(folder / "noise.safetensors")),
            "another architecture's weights": ("ViT-B-32", str(other))}


@pytest.mark.parametrize("case", ["text file", "random .pt", "random .safetensors", "another architecture's weights"])
def test_a_bad_checkpoint_is_a_one_line_error(case, messy, tmp_path, capsys):
    model, checkpoint = _checkpoints(tmp_path / "ckpt")[case]
    code, _, err = _run(["embed", "--root", str(messy.root), "--model", model, "--pretrained", checkpoint,
                         "--cache", str(tmp_path / "c"), "--quiet", "--workers", "0"], capsys)
    _one_line_error(code, err, "is not a usable checkpoint", Path(checkpoint).name)


def test_a_bad_checkpoint_in_the_dashboard_is_a_message_at_the_top(tmp_path):
    from streamlit.testing.v1 import AppTest

    from dashboard import cached

    notes = tmp_path / "notes.txt"
    notes.write_text("not weights\n")
    cached.clear()
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=240)
    at.query_params["page"] = "explorer"  # "/" opens the Story
    for key, value in {"ctl_source": "demo", "ctl_cap": 2, "ctl_model_kind": "local", "ctl_local_arch": "toy-clip",
                       "ctl_ckpt": str(notes), "ctl_n_pairs": 8}.items():
        at.session_state[key] = value
    at.run()
    cached.clear()
    assert not at.exception, [e.value for e in at.exception]
    assert "is not a usable checkpoint" in at.main.error[0].value  # the first thing under the title
    assert not at.main.status, "the status box is replaced by the error, not left running"


# ---------------------------------------------------------------- 2. a device this machine does not have

@pytest.mark.parametrize("device, message", [
    ("cuda", "not available here"), ("cuda:7", "not available here"), ("mps", "not available here"),
    ("tpu", "unknown device 'tpu'"), ("cuda:x", "unknown device"),
])
def test_a_missing_device_is_a_one_line_error(device, message, messy, tiny, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a CPU machine, even when run on a GPU one
    # wraps: torch's compiler looks up is_available.__wrapped__ when it is first imported
    monkeypatch.setattr(torch.backends.mps, "is_available", functools.wraps(torch.backends.mps.is_available)(
        lambda: False))
    code, _, err = _run(["embed", "--root", str(messy.root), "--model", tiny, "--device", device,
                         "--cache", str(tmp_path / "c"), *FAST], capsys)
    _one_line_error(code, err, message)


# ---------------------------------------------------------------- 3. unreadable folders

def test_unreadable_folders_are_reported_not_lost(tiny, tmp_path):
    root = _folder(tmp_path / "data", {"art": ("cat", "dog"), "photo": ("cat", "dog")})
    _folder(root / "photo" / "cat" / "more", {"": ("",)}, n=2)  # a sub-folder of a class folder
    (root / "photo" / "cat" / "more").chmod(0)
    (root / "art" / "dog").chmod(0)
    try:
        done = _cli(["embed", "--root", str(root), "--model", tiny, "--cache", str(tmp_path / "c"), *FAST],
                    prefix=AS_USER)
    finally:
        (root / "photo" / "cat" / "more").chmod(0o755)
        (root / "art" / "dog").chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "Skipped files: 2 (2 unreadable folder)" in done.stdout
    assert f"{root / 'photo' / 'cat' / 'more'}: unreadable folder: PermissionError" in done.stdout
    assert "domain 'art' has no images of class 'dog' (unreadable folder: PermissionError" in done.stderr


def test_an_unreadable_folder_in_the_picker_is_a_message(tmp_path):
    root = _folder(tmp_path / "data", {"art": ("cat", "dog"), "photo": ("cat", "dog")}, n=1)
    (root / "art").chmod(0)
    probe = ("from clip_icm import service\n"
             f"try:\n    service.detect_folder({str(root)!r})\nexcept service.ServiceError as e:\n    print(e)")
    try:
        done = subprocess.run([*AS_USER, sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    finally:
        (root / "art").chmod(0o755)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.startswith(f"Could not read {root}") and "Permission denied" in done.stdout


# ---------------------------------------------------------------- 4. serving: localhost, allowed roots, no scan of /

def _listening(port: int) -> set[str]:
    """Addresses (hex, as the kernel writes them) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_dashboard_listens_on_localhost_only(tmp_path):
    import tomllib

    from tests.test_browser import _free_port, _wait_http

    assert tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]["address"] == "127.0.0.1"
    port, log = _free_port(), tmp_path / "streamlit.log"
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port)],
                            cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}", proc, log=log)
        listening = _listening(port)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = log.read_text()
    assert "Network URL" not in text and "External URL" not in text, text
    assert listening == {"0100007F"}, listening  # 127.0.0.1 and nothing else, not 0.0.0.0 or ::


def test_folders_outside_the_allowed_roots_are_refused(tmp_path, monkeypatch):
    inside = _folder(tmp_path / "allowed" / "data", {"art": ("cat", "dog"), "photo": ("cat", "dog")}, n=1)
    outside = _folder(tmp_path / "elsewhere", {"art": ("cat", "dog"), "photo": ("cat", "dog")}, n=1)
    monkeypatch.setenv(service.DATA_ROOTS_VAR, str(tmp_path / "allowed"))
    roots = service.data_roots(exposed=True)
    assert service.detect_folder(str(inside), roots)["is_dataset"]
    for path in (outside, inside / ".." / ".." / "elsewhere", "/etc"):
        with pytest.raises(service.ServiceError, match="outside the folders this dashboard may read"):
            service.detect_folder(str(path), roots)
    (tmp_path / "allowed" / "link").symlink_to(outside)  # a link inside that points outside
    with pytest.raises(service.ServiceError, match="outside"):
        service.detect_folder(str(tmp_path / "allowed" / "link"), roots)
    monkeypatch.delenv(service.DATA_ROOTS_VAR)
    assert service.data_roots(exposed=False) is None  # localhost: the user's own machine
    assert Path.home().resolve() in service.data_roots(exposed=True)


@pytest.mark.parametrize("how", ["served on a network", "roots listed"])
def test_the_dashboard_on_a_network_limits_the_folder_picker(how, tmp_path, monkeypatch):
    import streamlit
    from streamlit.testing.v1 import AppTest

    outside = _folder(tmp_path / "elsewhere", {"art": ("cat", "dog"), "photo": ("cat", "dog")}, n=1)
    if how == "roots listed":
        monkeypatch.setenv(service.DATA_ROOTS_VAR, str(tmp_path / "allowed"))
    else:  # `streamlit run ... --server.address 0.0.0.0`: the default roots, data/ and the home folder
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.setattr(streamlit, "get_option", lambda key, real=streamlit.get_option:
                            "0.0.0.0" if key == "server.address" else real(key))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    at.session_state["ctl_source"], at.session_state["ctl_root"] = "folder", str(outside)
    at.run()
    assert not at.exception
    assert any("outside the folders this dashboard may read" in e.value for e in at.sidebar.error)
    assert not at.main.error and not at.get("plotly_chart")  # nothing was scanned


@pytest.mark.parametrize("root", ["/", "/usr", "~"])
def test_no_scan_starts_on_a_whole_filesystem(root, monkeypatch, tmp_path):
    home = _folder(tmp_path / "home", {"art": ("cat", "dog"), "photo": ("cat", "dog")}, n=1)
    monkeypatch.setenv("HOME", str(home))
    found = service.detect_folder(root)
    assert not found["is_dataset"] and "too broad" in found["problem"]
    request = service.EmbeddingRequest(source="folder", root=root)
    with pytest.raises(service.ServiceError, match="too broad"):
        service.load_embeddings(request)


# ---------------------------------------------------------------- 5. content keys by content; damaged memos

def test_a_same_size_image_with_its_mtime_reset_is_embedded_again(tiny, tmp_path, capsys):
    root = _folder(tmp_path / "data", {"art": ("cat", "dog"), "photo": ("cat", "dog")}, fmt="bmp")
    args = ["embed", "--root", str(root), "--model", tiny, "--cache", str(tmp_path / "c"), *FAST]
    assert main(args) == 0
    image, other = root / "art" / "cat" / "0.bmp", root / "art" / "dog" / "1.bmp"
    stat = image.stat()
    image.write_bytes(other.read_bytes())  # another picture, the same number of bytes
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert image.stat().st_size == stat.st_size and image.stat().st_mtime_ns == stat.st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "0 entries computed" not in out and "model loaded" in out  # art's chunks are new content


@pytest.mark.parametrize("memo", ["[1, 2, 3]", '"text"', "{\"x\": 5}", "{not json", ""])
def test_a_damaged_memo_is_discarded_not_fatal(memo, messy, tiny, tmp_path, capsys):
    args = ["embed", "--root", str(messy.root), "--model", tiny, "--cache", str(tmp_path / "c"), *FAST]
    assert main(args) == 0
    memos = list((tmp_path / "c" / "hashes").glob("*.json")) + list((tmp_path / "c" / "models").glob("*.json"))
    assert len(memos) == 2
    for path in memos:
        path.write_text(memo)
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "0 entries computed" in out  # the memos only save time: the entries are still found
    for path in memos:
        json.loads(path.read_text())  # rewritten whole


def test_the_hash_memo_trusts_size_mtime_inode_and_ctime(tmp_path):
    from clip_icm.pipeline import _hashes

    image, memo = tmp_path / "a.jpg", tmp_path / "memo.json"
    image.write_bytes(b"A" * 100)
    first = _hashes(np.array([str(image)]), None, memo)
    entry = json.loads(memo.read_text())[str(image)]
    st = image.stat()
    assert entry[:4] == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    image.write_bytes(b"B" * 100)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _hashes(np.array([str(image)]), None, memo)[0] != first[0]


# ---------------------------------------------------------------- 6, 7. evaluate: per-split failures, early checks, streaming

@pytest.fixture(scope="module")
def one_class_sources(tmp_path_factory) -> Path:
    """Holding out art leaves sources with one class (cat): that split cannot train a probe."""
    return _folder(tmp_path_factory.mktemp("split") / "data",
                   {"art": ("cat", "dog"), "photo": ("cat",), "sketch": ("cat",)})


def test_one_bad_split_does_not_lose_the_others(one_class_sources, tiny, tmp_path, capsys):
    out = tmp_path / "rows.csv"
    code, stdout, err = _run(["evaluate", "--root", str(one_class_sources), "--model", tiny, "--cache",
                              str(tmp_path / "c"), *FAST, "--out", str(out)], capsys)
    assert code == 1
    assert "error: target 'art': the linear probe needs at least 2 classes" in err
    assert "1 of 3 split(s) failed" in err and "Traceback" not in err
    table = stdout.split("probe C chosen on source validation rows")[1]
    art = next(line for line in table.splitlines() if line.startswith("art"))
    assert "failed" in art
    assert any(line.startswith("photo") and "failed" not in line for line in table.splitlines())
    assert set(pd.read_csv(out).target) == {"photo", "sketch"}


@pytest.mark.parametrize("extra, message", [
    (["--out", "{tmp}"], "is a folder"),
    (["--out", "{tmp}/no/such/rows.csv"], "does not exist"),
    (["--out", "rows.txt"], "--out must end in .csv or .json"),
    (["--lam", "nan"], "--lam must be a finite number"),
    (["--lam", "-1"], "--lam must be a finite number"),
    (["--k", "0"], "--k must be at least 1"),
    (["--val-fraction", "1.5"], "--val-fraction"),
])
def test_bad_evaluate_arguments_fail_before_any_embedding(extra, message, messy, tiny, tmp_path, capsys):
    args = ["evaluate", "--root", str(messy.root), "--model", tiny, "--cache", str(tmp_path / "c"), *FAST]
    code, _, err = _run([*args, *[e.format(tmp=tmp_path) for e in extra]], capsys)
    _one_line_error(code, err, message)
    assert not (tmp_path / "c").exists()  # nothing was scanned, loaded or embedded


def test_a_dataset_name_without_root_is_an_error_not_the_demo(tmp_path, capsys):
    code, _, err = _run(["evaluate", "--dataset", "PACS", "--cache", str(tmp_path / "c"), *FAST], capsys)
    _one_line_error(code, err, "--dataset PACS needs --root")
    assert not (tmp_path / "c").exists()


def test_json_suffix_in_capitals_one_warning_line_and_n_as_a_count(messy, tiny, tmp_path):
    out = tmp_path / "rows.JSON"
    few_pairs = ["--n-pairs", "4", "--text-banks", "none"]  # fewer pairs than dimensions: rank-deficient fits
    done = _cli(["evaluate", "--root", str(messy.root), "--model", tiny, "--cache", str(tmp_path / "c"), *FAST,
                 *few_pairs, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["rows"]
    n_column = [line.split()[1] for line in done.stdout.splitlines() if line.startswith(("photo", "sketch", "mean"))]
    assert len(n_column) == 3 and all(n.isdigit() for n in n_column), n_column
    assert done.stderr.count("rank-deficient") == 1, done.stderr  # once, with a count, not once per fit
    assert "Traceback" not in done.stderr


def test_a_closed_pipe_keeps_the_rows_and_prints_no_traceback(messy, tiny, tmp_path):
    out = tmp_path / "rows.csv"
    proc = subprocess.Popen([sys.executable, "-m", "clip_icm", "evaluate", "--root", str(messy.root), "--model", tiny,
                             "--cache", str(tmp_path / "c"), *FAST, "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # like `| head -0`: the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert set(pd.read_csv(out).target) == set(messy.domains)


def test_rows_are_written_as_each_split_finishes(messy, tiny, tmp_path, capsys, monkeypatch):
    from clip_icm import evaluation

    out, seen = tmp_path / "rows.csv", []
    real = evaluation.evaluate_split

    def spy(emb, target, config):
        seen.append(set(pd.read_csv(out).target) if out.exists() else set())
        return real(emb, target, config)

    monkeypatch.setattr(evaluation, "evaluate_split", spy)
    assert main(["evaluate", "--root", str(messy.root), "--model", tiny, "--cache", str(tmp_path / "c"), *FAST,
                 "--out", str(out)]) == 0
    assert seen == [set(), {messy.domains[0]}, set(messy.domains[:2])]


# ---------------------------------------------------------------- 8. warnings from another thread

def test_another_threads_warnings_do_not_reach_the_pages_notes(messy, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path / "c"))
    stop = threading.Event()

    def noisy() -> None:  # what the UMAP warm-up did, as often as it can
        while not stop.is_set():
            warnings.warn("using precomputed metric; inverse_transform will be unavailable (test)", UserWarning)
            time.sleep(0.001)

    thread = threading.Thread(target=noisy, daemon=True)
    thread.start()
    try:
        notes: list[str] = []
        service.load_embeddings(service.EmbeddingRequest(
            source="folder", root=str(messy.root), model=tiny, pretrained="none",
            interventions=service.InterventionChoice(image_ops=("grayscale",), n_pairs=4)), notes=notes)
    finally:
        stop.set()
        thread.join()
    assert not any("precomputed" in n for n in notes), notes
    assert any("has no images of class 'guitar_case'" in n for n in notes)  # the scan's own notes are kept


class _NoProcessWideCapture:
    """The warnings module, except catch_warnings(): that swaps every thread's filters, and
    the page may be recording its own warnings meanwhile."""

    def __getattr__(self, name: str):
        return getattr(warnings, name)

    def catch_warnings(self, *args, **kwargs):
        raise AssertionError("catch_warnings() in clip_icm.reduce")


def test_layouts_neither_swap_the_warning_filters_nor_warn(monkeypatch):
    from clip_icm import reduce

    monkeypatch.setattr(reduce, "warnings", _NoProcessWideCapture())
    rng = np.random.default_rng(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", append=True)  # behind the standing filters: shows what they let through
        reduce.layout_2d(rng.normal(size=(40, 8)), init=rng.normal(size=(40, 2)))
    assert not caught, [str(w.message) for w in caught]


# ---------------------------------------------------------------- 9, 10. dashboard: domains per data set, ~ paths

def test_source_domains_do_not_carry_over_to_another_data_set():
    from streamlit.testing.v1 import AppTest

    script = f"""
import sys; sys.path.insert(0, {str(REPO)!r})
import numpy as np
import streamlit as st
from clip_icm.embeddings import EmbeddingSet
from dashboard import controls

def fake(domains, classes):
    n = len(domains)
    return EmbeddingSet(np.zeros((n, 4)), np.zeros(n, int), np.array(domains), np.ones(n, bool), list(classes),
                        np.zeros((1, len(classes), 4)), [], None, "k")

demo = fake(["art_painting", "cartoon", "photo", "sketch"], ["arrow", "star"])
five = fake(["art_painting", "cartoon", "clipart", "photo", "sketch"], ["dog", "horse"])
emb = five if st.session_state.get("use_five") else demo
target, sources = controls.domains_ui(emb, "cartoon")
st.write(target, "|", ",".join(sources))
"""
    at = AppTest.from_string(script, default_timeout=60).run()
    at.multiselect(key="ctl_sources").set_value(["photo"]).run()
    assert at.markdown[-1].value.endswith("| photo")
    at.session_state["use_five"] = True
    at.run()
    assert not at.exception
    assert at.multiselect(key="ctl_sources").value == ["art_painting", "clipart", "photo", "sketch"]


def test_a_home_relative_folder_works_in_the_dashboard_service(messy, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(messy.root.parent))
    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path / "c"))
    assert service.detect_folder("~/data")["path"] == str(messy.root.resolve())
    emb = service.load_embeddings(service.EmbeddingRequest(
        source="folder", root="~/data", model=tiny, pretrained="none",
        interventions=service.InterventionChoice(image_ops=("grayscale",), n_pairs=4)))
    assert sorted(emb.domain_names) == sorted(messy.domains)


# ---------------------------------------------------------------- 12. the minor ones

def test_a_single_domain_folder_gets_its_real_reason(tmp_path):
    from streamlit.testing.v1 import AppTest

    root = _folder(tmp_path / "one", {"art": ("cat", "dog")}, n=1)
    found = service.detect_folder(str(root))
    assert not found["is_dataset"] and "one domain folder" in found["problem"] and "'art'" in found["problem"]
    assert "looks like one domain" in service.detect_folder(str(root / "art"))["problem"]  # a level too deep
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    at.session_state["ctl_source"], at.session_state["ctl_root"] = "folder", str(root)
    at.run()
    assert not at.exception
    assert any("at least two domain folders" in e.value for e in at.sidebar.error)
    assert not at.main.error  # nothing was scanned, so no second, vaguer error
