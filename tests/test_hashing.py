"""The one content-hashing helper: every key and seed built on it keeps the value it had when
each caller hashed by hand (a changed value would silently invalidate every user's cache)."""
import hashlib

import pytest

from clip_icm.hashing import digest, file_digest, json_digest
from clip_icm.protocols import domainbed_seed_hash
from clip_icm.seeding import seed_hash
from clip_icm.service import content_key
from clip_icm.store import make_key


def test_keys_and_seeds_keep_their_values():
    # Pinned from the hand-written hashes these helpers replaced.
    assert make_key("images", "abc", None, ["h1", "h2"], {"b": 1, "a": 2}) == "355f69c1e5599099aa70c81771f4697d2f14e479"
    assert seed_hash("pair rows", 0, "x") == 133526895
    assert domainbed_seed_hash(0, 3) == 1796103049  # DomainBed's md5-based misc.seed_hash
    assert content_key("a", 1, (2, 3)) == "a012b57faebd7cca"


def test_digest_hashes_text_as_utf8_and_bytes_as_they_are():
    assert digest("é") == hashlib.sha256("é".encode()).hexdigest() == digest("é".encode())
    assert digest(b"x", "md5") == hashlib.md5(b"x").hexdigest()
    with pytest.raises(ValueError):
        digest(b"x", "no-such-algorithm")


def test_json_digest_ignores_dict_order_but_not_list_order():
    assert json_digest({"a": 1, "b": [1, 2]}) == json_digest({"b": [1, 2], "a": 1})
    assert json_digest([1, 2]) != json_digest([2, 1])


def test_file_digest_reads_large_files_in_blocks(tmp_path):
    data = bytes(range(256)) * (1 << 15)  # 8 MiB: two blocks
    (tmp_path / "f").write_bytes(data)
    assert file_digest(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError):
        file_digest(tmp_path / "missing")
