import json
import multiprocessing
import os

import numpy as np
import pytest

import clip_icm.store as store_mod
from clip_icm.resources import PACKAGE_DIR, cache_dir
from clip_icm.store import EmbeddingStore, default_root, make_key


def _array(seed, n=20, d=8):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32) * 5


def _data_file(store, key):
    manifest = json.loads((store.root / key[:2] / f"{key}.json").read_text())
    return store.root / key[:2] / manifest["data"]


def test_roundtrip_is_float16_memmap(tmp_path):
    store = EmbeddingStore(tmp_path)
    assert store.get("ab" * 20) is None
    store.put("ab" * 20, _array(0), meta={"what": "test"})
    got = store.get("ab" * 20)
    assert isinstance(got, np.memmap) and got.dtype == np.float16 and got.shape == (20, 8)
    np.testing.assert_allclose(got, _array(0), rtol=1e-3, atol=1e-3)
    assert (store.stats.hits, store.stats.misses) == (1, 1)


def test_keys_are_stable_and_order_sensitive():
    assert make_key("m", [1, 2], {"b": 1, "a": 2}) == make_key("m", [1, 2], {"a": 2, "b": 1})
    assert make_key("m", [1, 2]) != make_key("m", [2, 1])
    assert len(make_key("x")) == 40


def test_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path / "c"))
    assert default_root() == tmp_path / "c"
    assert EmbeddingStore().root == tmp_path / "c"
    monkeypatch.delenv("CLIP_ICM_CACHE")
    assert default_root() == cache_dir() and PACKAGE_DIR not in default_root().parents  # never in the package


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "delete_data", "garbage_manifest"])
def test_corrupt_entry_is_detected_and_recomputed(tmp_path, damage):
    store = EmbeddingStore(tmp_path)
    key = make_key("entry")
    store.put(key, _array(1))
    data = _data_file(store, key)
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-7])
    elif damage == "flip_byte":
        raw = bytearray(data.read_bytes())
        raw[-3] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "delete_data":
        data.unlink()
    else:
        (store.root / key[:2] / f"{key}.json").write_text("{not json")
    assert store.get(key) is None and store.stats.corrupt == 1
    calls = []
    value = store.get_or_compute(key, lambda: calls.append(1) or _array(1))
    assert calls == [1]
    np.testing.assert_allclose(value, _array(1), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(store.get(key), value)


def test_hit_does_not_compute(tmp_path):
    store = EmbeddingStore(tmp_path)
    store.put("k" * 40, _array(2))

    def boom():
        raise AssertionError("computed on a hit")

    assert store.get_or_compute("k" * 40, boom).shape == (20, 8)


def test_write_killed_midway_leaves_no_entry_and_no_temp(tmp_path, monkeypatch):
    store = EmbeddingStore(tmp_path)

    def dying_fsync(fd):
        raise KeyboardInterrupt  # a kill between writing and publishing

    monkeypatch.setattr(store_mod.os, "fsync", dying_fsync)
    with pytest.raises(KeyboardInterrupt):
        store.put("d" * 40, _array(3))
    monkeypatch.undo()
    assert store.get("d" * 40) is None
    assert list((tmp_path / "dd").iterdir()) == []


def test_non_finite_values_are_refused(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        EmbeddingStore(tmp_path).put("e" * 40, np.full((2, 2), 1e6))


def _writer(root, key, seed, rounds):
    store = EmbeddingStore(root)
    for _ in range(rounds):
        store.put(key, _array(seed, n=400, d=64))


def test_concurrent_writers_never_publish_a_mixed_entry(tmp_path):
    key = make_key("shared")
    candidates = [_array(s, n=400, d=64).astype(np.float16) for s in range(3)]
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_writer, args=(tmp_path, key, s, 25)) for s in range(3)]
    for w in writers:
        w.start()
    reader, seen = EmbeddingStore(tmp_path), 0
    while any(w.is_alive() for w in writers):
        got = reader.get(key)
        if got is not None:
            seen += 1
            assert any(np.array_equal(got, c) for c in candidates)
    for w in writers:
        w.join()
        assert w.exitcode == 0
    final = reader.get(key)
    assert final is not None and any(np.array_equal(final, c) for c in candidates)
    assert reader.stats.corrupt == 0
    assert not [f for f in os.listdir(tmp_path / key[:2]) if f.endswith(".tmp")]
    # each rewrite removed the data file it replaced: only the last one is left
    assert sorted(os.listdir(tmp_path / key[:2])) == sorted([f"{key}.json", _data_file(reader, key).name])


# ---------------------------------------------------------------- a seed folder (the dashboard's demo seed)

def _seed(tmp_path, key="cd" * 20):
    """A seed folder holding one entry, written by a store as any entry is."""
    EmbeddingStore(tmp_path / "seed").put(key, _array(3), meta={"kind": "embeddings", "dataset": "seeded"})
    return tmp_path / "seed", key


def test_a_key_missing_here_is_copied_in_from_the_seed_and_then_read_as_ones_own(tmp_path):
    seed, key = _seed(tmp_path)
    store = EmbeddingStore(tmp_path / "cache", seed=seed)
    array, meta = store.get_entry(key)
    np.testing.assert_array_equal(array, EmbeddingStore(seed).get(key))
    assert meta == {"kind": "embeddings", "dataset": "seeded"}
    assert (store.root / key[:2] / f"{key}.json").is_file()  # the size bound and `cache prune` see it now
    assert _data_file(store, key).parent == store.root / key[:2]  # served from the cache's own copy
    store.get(key)
    assert (store.stats.seeded, store.stats.hits, store.stats.misses) == (1, 2, 0)
    assert store.get("ef" * 20) is None and store.stats.misses == 1  # in neither


def test_a_seed_copy_is_not_synced_and_one_spoiled_later_is_copied_again(tmp_path, monkeypatch):
    """The seed keeps the original, so its copy skips fsync (a power cut may spoil it): a spoiled copy
    fails its checksum and is copied from the seed again, not a miss."""
    import os

    seed, key = _seed(tmp_path)
    store = EmbeddingStore(tmp_path / "cache", seed=seed)
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    store.get(key)
    assert synced == []  # the seed's copy
    store.put("ef" * 20, _array(4))
    assert len(synced) == 2  # an entry of its own: data file and manifest
    data = _data_file(store, key)
    data.write_bytes(b"\0" * data.stat().st_size)  # what a power cut can leave of an unsynced file
    np.testing.assert_array_equal(store.get(key), EmbeddingStore(seed).get(key))
    assert (store.stats.corrupt, store.stats.seeded, store.stats.misses) == (1, 2, 0)
    assert _data_file(store, key).read_bytes() != b"\0" * data.stat().st_size  # the copy is whole again


def test_a_damaged_seed_entry_is_a_miss_and_is_not_copied(tmp_path):
    seed, key = _seed(tmp_path)
    data = _data_file(EmbeddingStore(seed), key)
    data.write_bytes(data.read_bytes()[:-8] + b"\0" * 8)
    store = EmbeddingStore(tmp_path / "cache", seed=seed)
    assert store.get(key) is None
    assert not (store.root / key[:2]).exists()
    assert (store.stats.seeded, store.stats.misses) == (0, 1)


def test_a_cache_folder_that_cannot_be_written_is_served_the_seeds_own_copy(tmp_path, monkeypatch):
    seed, key = _seed(tmp_path)
    store = EmbeddingStore(tmp_path / "cache", seed=seed)

    def read_only(*args, **kwargs):  # what a read-only folder does to a user who is not root (tests run as root)
        raise PermissionError(13, "Permission denied", str(store.root))

    monkeypatch.setattr(store, "put", read_only)
    np.testing.assert_array_equal(store.get(key), EmbeddingStore(seed).get(key))
    assert (store.stats.seeded, store.stats.hits) == (1, 1)


def test_a_seed_copy_that_keeps_reading_as_corrupt_is_copied_once_per_read_not_forever(tmp_path, monkeypatch):
    import clip_icm.store as store_mod

    seed, key = _seed(tmp_path)
    store = EmbeddingStore(tmp_path / "cache", seed=seed)
    real = store_mod._checked

    def here_always_corrupt(manifest_path, key, raw):  # a folder that spoils every write (a failing disk)
        if store.root in manifest_path.parents:
            raise ValueError("checksum mismatch")
        return real(manifest_path, key, raw)

    monkeypatch.setattr(store_mod, "_checked", here_always_corrupt)
    assert store.get(key) is None
    assert (store.stats.seeded, store.stats.corrupt) == (1, 1)
