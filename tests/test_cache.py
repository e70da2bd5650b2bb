"""The cache: info, list, prune (orphans, age, size: least recently used first), clear, the size
bound on writes, removal beside concurrent readers, and the ``cache`` command's answers."""
import json
import logging
import multiprocessing
import os
import time

import numpy as np
import pytest

from clip_icm import cache
from clip_icm.cache import format_size, parse_age, parse_size
from clip_icm.cli import CACHE_KINDS, main
from clip_icm.errors import InvalidInput
from clip_icm.store import EmbeddingStore, make_key

DAY = 86400


def _array(seed, n=20, d=8):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _files(store, key):
    """(manifest, data file) of an entry."""
    manifest = store.root / key[:2] / f"{key}.json"
    return manifest, manifest.parent / json.loads(manifest.read_text())["data"]


def _size(store, key):
    return sum(p.stat().st_size for p in _files(store, key))


def _last_used(store, key, when):
    os.utime(_files(store, key)[0], (when, when))


@pytest.fixture
def known(tmp_path):
    """Four entries of known kinds, data sets and models, an orphaned data file, a killed write's
    temp file and a demo world of 500 bytes."""
    store = EmbeddingStore(tmp_path)
    keys = {name: make_key(name) for name in ("images", "pairs", "layout", "result")}
    store.put(keys["images"], _array(0), {"kind": "embeddings", "dataset": "PACS", "folder": "/d/PACS",
                                          "model": "ViT-B-32 / openai"})
    store.put(keys["pairs"], _array(1, n=40), {"kind": "pairs", "dataset": "PACS", "folder": "/d/PACS",
                                               "model": "ViT-B-32 / openai"})
    store.put(keys["layout"], _array(2, d=2), {"kind": "layouts", "dataset": "ToyDomains demo", "model": "toy-clip"})
    store.put(keys["result"], np.zeros(0), {"kind": "kept results", "value": [1, 2]})  # origin not recorded
    folder = tmp_path / keys["images"][:2]
    (folder / f"{keys['images']}.0123456789abcdef.npy").write_bytes(b"x" * 1000)  # named by no manifest
    (folder / f".{keys['images']}.json.abc.tmp").write_bytes(b"y" * 10)
    (tmp_path / "toydomains").mkdir()
    (tmp_path / "toydomains" / "image.png").write_bytes(b"z" * 500)
    return store, keys


def test_info_counts_and_sizes_are_exact(known):
    store, keys = known
    sizes = {name: _size(store, key) for name, key in keys.items()}
    assert sizes["images"] == 128 + 20 * 8 * 2 + _files(store, keys["images"])[0].stat().st_size  # npy header + f16
    report = cache.info(store.root)
    assert report["folder"] == str(store.root)
    assert report["entries"] == 4 and report["entry_bytes"] == sum(sizes.values())
    assert report["kinds"] == {"embeddings": {"entries": 1, "bytes": sizes["images"]},
                               "pairs": {"entries": 1, "bytes": sizes["pairs"]},
                               "layouts": {"entries": 1, "bytes": sizes["layout"]},
                               "kept results": {"entries": 1, "bytes": sizes["result"]}}
    assert report["datasets"] == [
        {"dataset": "PACS", "model": "ViT-B-32 / openai", "entries": 2, "bytes": sizes["images"] + sizes["pairs"]},
        *sorted([{"dataset": "ToyDomains demo", "model": "toy-clip", "entries": 1, "bytes": sizes["layout"]},
                 {"dataset": cache.NOT_RECORDED, "model": cache.NOT_RECORDED, "entries": 1,
                  "bytes": sizes["result"]}], key=lambda g: -g["bytes"]),
    ]
    assert report["orphans"] == {"files": 2, "bytes": 1010}
    assert report["other"] == {"toydomains": 500}
    assert report["total_bytes"] == sum(sizes.values()) + 1010 + 500
    assert set(CACHE_KINDS) == set(cache.KINDS)  # the CLI's copy (kept so that --help imports nothing)


def test_entries_without_a_recorded_kind_are_classified_by_what_they_hold(tmp_path):
    store = EmbeddingStore(tmp_path)  # as a store written before entries said their kind
    store.put(make_key("a"), _array(0), {"failed": {}})
    store.put(make_key("b"), _array(1, d=2))
    store.put(make_key("c"), np.zeros(0), {"value": 1.5})
    kinds = {e.key: e.kind for e in cache.entries(tmp_path)}
    assert kinds == {make_key("a"): "embeddings", make_key("b"): "layouts", make_key("c"): "kept results"}


def test_list_filters_and_orders_most_recently_used_first(known):
    store, keys = known
    for age, name in enumerate(("images", "pairs", "layout", "result")):
        _last_used(store, keys[name], time.time() - (age + 1) * DAY)
    assert [e.key for e in cache.entries(store.root)] == [keys[n] for n in ("images", "pairs", "layout", "result")]
    assert [e.key for e in cache.entries(store.root, dataset="PACS")] == [keys["images"], keys["pairs"]]
    assert [e.key for e in cache.entries(store.root, dataset="/d/PACS", kind="pairs")] == [keys["pairs"]]
    row = cache.entry_row(cache.entries(store.root, kind="layouts")[0])
    assert row["dataset"] == "ToyDomains demo" and row["last_used"].endswith("+00:00") and "mtime_ns" not in row
    with pytest.raises(InvalidInput, match="unknown kind 'maps'; kinds: embeddings, pairs"):
        cache.entries(store.root, kind="maps")


def test_a_read_makes_an_entry_the_most_recently_used(known):
    store, keys = known
    for age, name in enumerate(("images", "pairs", "layout", "result")):
        _last_used(store, keys[name], time.time() - (age + 1) * DAY)
    assert EmbeddingStore(store.root).get(keys["result"]) is not None
    assert cache.entries(store.root)[0].key == keys["result"]


def test_prune_removes_orphans_only_by_default(known):
    store, keys = known
    removed = cache.prune(store.root)
    assert (removed.entries, removed.orphans, removed.bytes, removed.busy) == (0, 2, 1010, 0)
    report = cache.info(store.root)
    assert report["entries"] == 4 and report["orphans"] == {"files": 0, "bytes": 0}
    assert all(store.get(key) is not None for key in keys.values())


def test_prune_by_age_removes_the_entries_unused_for_longer(known):
    store, keys = known
    now = time.time()
    for name, days in (("images", 40), ("pairs", 10), ("layout", 31), ("result", 0)):
        _last_used(store, keys[name], now - days * DAY)
    removed = cache.prune(store.root, older_than=parse_age("30d"), now=now)
    assert removed.entries == 2 and removed.kinds == {"embeddings": 1, "layouts": 1}
    assert {e.key for e in cache.entries(store.root)} == {keys["pairs"], keys["result"]}
    assert store.get(keys["images"]) is None and store.get(keys["pairs"]) is not None


def test_prune_by_size_removes_the_least_recently_used_first(known):
    store, keys = known
    now = time.time()
    for name, days in (("images", 3), ("pairs", 1), ("layout", 4), ("result", 2)):
        _last_used(store, keys[name], now - days * DAY)
    sizes = {name: _size(store, key) for name, key in keys.items()}
    # room for the two most recently used (pairs, result) and not one byte more
    removed = cache.prune(store.root, max_size=sizes["pairs"] + sizes["result"])
    assert removed.entries == 2 and removed.bytes == sizes["layout"] + sizes["images"] + 1010
    assert {e.key for e in cache.entries(store.root)} == {keys["pairs"], keys["result"]}
    removed = cache.prune(store.root, max_size=sizes["pairs"] + sizes["result"] - 1)
    assert [e.key for e in cache.entries(store.root)] == [keys["pairs"]]  # the older of the two went


def test_an_entry_in_use_is_never_removed(known):
    store, keys = known
    manifest = _files(store, keys["pairs"])[0]
    with cache.locked(manifest):  # a reader between the manifest and its data file
        removed = cache.prune(store.root, max_size=0)
    assert removed.busy == 1 and removed.entries == 3
    assert [e.key for e in cache.entries(store.root)] == [keys["pairs"]]
    np.testing.assert_allclose(store.get(keys["pairs"]), _array(1, n=40), rtol=1e-3, atol=1e-3)


def test_an_entry_used_since_the_scan_is_not_removed(known, monkeypatch):
    store, keys = known
    scanned = cache.scan(store.root)
    assert store.get(keys["images"]) is not None  # read after the scan: its manifest's mtime moved
    monkeypatch.setattr(cache, "scan", lambda root=None: scanned)
    removed = cache.clear(store.root)
    monkeypatch.undo()
    assert removed.busy == 1 and [e.key for e in cache.entries(store.root)] == [keys["images"]]


def test_clear_one_data_set_then_everything(known):
    store, keys = known
    removed = cache.clear(store.root, dataset="PACS")
    assert removed.entries == 2 and removed.orphans == 0  # orphans belong to no data set
    assert {e.key for e in cache.entries(store.root)} == {keys["layout"], keys["result"]}
    removed = cache.clear(store.root)
    assert (removed.entries, removed.orphans) == (2, 2)
    report = cache.info(store.root)
    assert report["entries"] == 0 and report["other"] == {"toydomains": 500}  # the demo world stays
    assert cache.clear(store.root, everything=True).bytes == 500
    assert cache.info(store.root)["total_bytes"] == 0
    with pytest.raises(InvalidInput, match="not both"):
        cache.clear(store.root, dataset="PACS", everything=True)


def test_a_rewritten_key_leaves_no_orphan(tmp_path):
    store = EmbeddingStore(tmp_path)
    key = make_key("rewritten")
    for seed in range(3):
        store.put(key, _array(seed))
    manifest, data = _files(store, key)
    assert sorted(p.name for p in manifest.parent.iterdir()) == sorted([manifest.name, data.name])
    assert cache.info(tmp_path)["orphans"]["files"] == 0
    np.testing.assert_allclose(store.get(key), _array(2), rtol=1e-3, atol=1e-3)


def test_a_write_past_the_bound_removes_the_least_recently_used_and_says_so(tmp_path, caplog):
    writer = EmbeddingStore(tmp_path)
    keys = [make_key("bounded", i) for i in range(4)]
    for i, key in enumerate(keys[:3]):
        writer.put(key, _array(i))
        _last_used(writer, key, time.time() - (10 - i) * DAY)
    one = _size(writer, keys[0])
    assert writer.get(keys[0]) is not None  # read: now the most recently used
    bounded = EmbeddingStore(tmp_path, max_size=3 * one)
    with caplog.at_level(logging.WARNING, logger="clip_icm.store"):
        bounded.put(keys[3], _array(3))
    assert {e.key for e in cache.entries(tmp_path)} == {keys[0], keys[2], keys[3]}
    assert bounded.stats.evicted == 1
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"clip-icm cache: removed 1 least recently used entry ({format_size(one)}) to stay under "
                     f"its bound of {format_size(3 * one)} (said once; python -m clip_icm cache info shows the rest)"]
    with caplog.at_level(logging.WARNING, logger="clip_icm.store"):
        bounded.put(make_key("bounded", 4), _array(4))  # another removal: counted, not said again
    assert bounded.stats.evicted == 2 and len(caplog.records) == 1


def test_the_bound_comes_from_the_environment(tmp_path, monkeypatch):
    store = EmbeddingStore(tmp_path)
    monkeypatch.setenv(cache.MAX_SIZE_VAR, "0")
    store.put(make_key("first"), _array(0))
    store.put(make_key("second"), _array(1))  # the bound is 0: the first entry makes room
    assert [e.key for e in cache.entries(tmp_path)] == [make_key("second")]
    monkeypatch.setenv(cache.MAX_SIZE_VAR, "2 parsecs")
    with pytest.raises(InvalidInput, match=r"\$CLIP_ICM_CACHE_MAX_SIZE: unknown size unit 'parsecs'"):
        store.put(make_key("third"), _array(2))
    monkeypatch.setenv(cache.MAX_SIZE_VAR, "")
    store.put(make_key("third"), _array(2))  # empty: no bound
    assert len(cache.entries(tmp_path)) == 2


def _rewrite_and_prune(root, keys, rounds):
    store = EmbeddingStore(root)
    for i in range(rounds):
        for j, key in enumerate(keys):
            store.put(key, _array(j * 100 + i % 3, n=400, d=64))
        cache.prune(root, max_size=0) if i % 2 else cache.clear(root)


def test_a_reader_during_prunes_gets_its_entry_or_a_clean_miss(tmp_path):
    keys = [make_key("contended", j) for j in range(3)]
    candidates = {key: [_array(j * 100 + s, n=400, d=64).astype(np.float16) for s in range(3)]
                  for j, key in enumerate(keys)}
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_rewrite_and_prune, args=(tmp_path, keys, 40)) for _ in range(2)]
    for w in workers:
        w.start()
    reader, hits = EmbeddingStore(tmp_path), 0
    while any(w.is_alive() for w in workers):
        for key in keys:
            got = reader.get(key)
            if got is not None:
                hits += 1
                assert any(np.array_equal(got, c) for c in candidates[key])  # never half an array
    for w in workers:
        w.join()
        assert w.exitcode == 0
    assert reader.stats.corrupt == 0 and reader.stats.misses > 0  # misses, cleanly; never a broken entry
    assert cache.info(tmp_path)["orphans"]["files"] == 0


@pytest.mark.parametrize("text, expected", [("2GB", 2 * 10**9), ("500 MB", 5 * 10**8), ("1.5GiB", 3 * 2**29),
                                            ("100k", 10**5), ("1234", 1234), ("0", 0), ("2 tb", 2 * 10**12)])
def test_sizes_as_people_write_them(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, message", [("-1GB", "must not be negative"), ("2XB", "unknown size unit 'XB'"),
                                           ("lots", "not a size"), ("", "not a size")])
def test_bad_sizes_say_why(text, message):
    with pytest.raises(InvalidInput, match=message):
        parse_size(text)


def test_ages_and_their_errors():
    assert [parse_age(t) for t in ("45s", "90m", "90min", "12h", "30d", "2w")] == [45, 5400, 5400, 43200,
                                                                                   30 * DAY, 14 * DAY]
    for text, message in (("-3d", "must not be negative"), ("3y", "unknown age unit 'y'"), ("3", "unknown age unit"),
                          ("soon", "not an age")):
        with pytest.raises(InvalidInput, match=message):
            parse_age(text)


def test_sizes_read_as_people_read_them():
    assert [format_size(n) for n in (0, 999, 1000, 1_234_567, 2 * 10**9, 3 * 10**12)] == [
        "0 B", "999 B", "1.0 kB", "1.2 MB", "2.0 GB", "3.0 TB"]


# ---------------------------------------------------------------- the command

def test_cache_info_and_list_commands(known, capsys):
    store, keys = known
    assert main(["cache", "info", "--cache", str(store.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == cache.info(store.root)
    assert main(["cache", "info", "--cache", str(store.root)]) == 0
    text = capsys.readouterr().out
    assert f"Cache folder: {store.root}" in text and "PACS / ViT-B-32 / openai: 2 entries" in text
    assert "Orphaned files: 2, 1.0 kB" in text and "toydomains/ 500 B (the demo world's images)" in text
    assert main(["cache", "list", "--cache", str(store.root), "--dataset", "PACS", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["key"] for r in rows} == {keys["images"], keys["pairs"]}
    assert main(["cache", "list", "--cache", str(store.root), "--kind", "layouts"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"1 entries, {format_size(_size(store, keys['layout']))}")


def test_cache_prune_and_clear_commands(known, capsys, monkeypatch):
    store, keys = known
    assert main(["cache", "prune", "--cache", str(store.root), "--max-size", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 4
    store.put(keys["images"], _array(0), {"dataset": "PACS"})
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # no terminal to ask on
    assert main(["cache", "clear", "--cache", str(store.root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add --yes" in err and "Remove 1 entries" in err
    assert len(cache.entries(store.root)) == 1  # nothing removed
    assert main(["cache", "clear", "--cache", str(store.root), "--yes"]) == 0
    assert capsys.readouterr().out.startswith("Removed 1 entries (1 embeddings)")
    assert cache.entries(store.root) == []


@pytest.mark.parametrize("argv, message", [
    (["prune", "--max-size=-1GB"], "a size must not be negative, got '-1GB'"),
    (["prune", "--max-size", "-1GB"], "argument --max-size: a size must not be negative, got '-1GB'"),
    (["prune", "--older-than", "-3d"], "argument --older-than: an age must not be negative, got '-3d'"),
    (["prune", "--max-size", "2XB"], "unknown size unit 'XB'"),
    (["prune", "--older-than", "3y"], "unknown age unit 'y'"),
    (["prune", "--older-than", "later"], "not an age"),
    (["list", "--kind", "maps"], "invalid choice: 'maps'"),
    (["clear", "--all", "--dataset", "PACS", "--yes"], "--all and --dataset exclude each other"),
    (["scrub"], "invalid choice: 'scrub'"),
])
def test_bad_cache_arguments_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(["cache", *argv, "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_evaluate_takes_a_cache_bound(tmp_path, capsys):
    assert main(["embed", "--cache-max-size", "lots", "--cache", str(tmp_path)]) == 2
    assert "argument --cache-max-size: not a size: 'lots'" in capsys.readouterr().err


def test_an_embedding_run_says_what_its_entries_are_and_what_its_bound_removed(tmp_path, capsys, caplog):
    from tests.folders import make_messy_domainbed
    from tests.tiny_clip import write_local_dir

    messy = make_messy_domainbed(tmp_path / "data", n_per_class=2)
    model = f"local-dir:{write_local_dir(tmp_path / 'tiny')}"
    embed = ["embed", "--root", str(messy.root), "--model", model, "--pretrained", "none", "--quiet",
             "--text-banks", "styles", "--templates", "single", "--workers", "0", "--interventions", "grayscale"]
    assert main([*embed, "--cache", str(tmp_path / "c")]) == 0
    assert "removed" not in capsys.readouterr().out
    report = cache.info(tmp_path / "c")
    kinds = {kind: n["entries"] for kind, n in report["kinds"].items()}
    # embeddings: the images (a chunk per domain) and the class prompts; pairs: the grayscale pairs and the
    # grayscale validation rows (a chunk per domain each), and the styles bank's prompts: its pairs, its
    # class-free prompts and its attribute prompts (Orth-Cali's)
    domains = len(set(messy.domains))
    assert kinds == {"embeddings": domains + 1, "pairs": 2 * domains + 3, "layouts": 0, "kept results": 0}
    assert [(g["dataset"], g["model"]) for g in report["datasets"]] == [(messy.root.name, f"{model} / none")]
    assert {e.folder for e in cache.entries(tmp_path / "c")} == {str(messy.root)}
    # bounded to 1 byte: each write removes every entry before it, and the run says so once
    with caplog.at_level(logging.WARNING, logger="clip_icm.store"):
        assert main([*embed, "--cache", str(tmp_path / "bounded"), "--cache-max-size", "1"]) == 0
    computed = sum(kinds.values())
    assert (f"Cache: {computed} entries computed, 0 reused (model loaded), {computed - 1} least recently used "
            "removed to stay under the size bound") in capsys.readouterr().out
    said = sorted(r.getMessage() for r in caplog.records if r.name == "clip_icm.store")
    assert said[0] == "clip-icm cache: past its bound of 1 B even so: what is left is in use, or this entry"
    assert len(said) == 2
    assert said[1].startswith("clip-icm cache: removed 1 least recently used entry")
    assert len(cache.entries(tmp_path / "bounded")) == 1
