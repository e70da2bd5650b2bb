"""Streamed Gram sums (issue 21, item 1): PairMoments.streamed sums Z^T Z and Delta^T Delta block by
block over memory-mapped store entries, equal to the in-memory moments, never holding the stack whole."""
import numpy as np
import pytest

from clip_icm.errors import InvalidInput
from clip_icm.projection import InvariantProjection, PairMoments
from clip_icm.store import EmbeddingStore, make_key, stored_pairs


def _clip_like(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm rows with a common mean (as CLIP's are) and their intervened copies, in float16 as stored."""
    gen = np.random.default_rng(seed)
    Z = gen.normal(size=(n, dim)) + 3 * gen.normal(size=dim)
    Z_do = Z + 0.3 * gen.normal(size=(n, dim)) * (np.arange(dim) < dim // 4)  # the intervention moves a quarter
    norm = np.linalg.norm(Z, axis=1, keepdims=True)
    return (Z / norm).astype(np.float16), (Z_do / norm).astype(np.float16)


@pytest.fixture
def stored(tmp_path):
    """Seven chunks of uneven sizes in a store: their keys and the same rows in memory."""
    store, keys, Zs, Z_dos = EmbeddingStore(tmp_path), [], [], []
    for i, n in enumerate((500, 1, 333, 1000, 64, 700, 402)):
        Z, Z_do = _clip_like(n, 48, seed=i)
        keys.append((make_key("z", i), make_key("z_do", i)))
        store.put(keys[-1][0], Z)
        store.put(keys[-1][1], Z_do)
        Zs.append(Z)
        Z_dos.append(Z_do)
    return store, keys, np.concatenate(Zs), np.concatenate(Z_dos)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("block", [1, 97, 8192])
def test_streamed_moments_from_the_store_equal_the_in_memory_ones(stored, block):
    store, keys, Z, Z_do = stored
    streamed = PairMoments.streamed(stored_pairs(store, keys), block=block)
    whole = PairMoments.of(Z, Z_do)
    assert streamed.n == whole.n == 3000
    assert _relative(streamed.zz, whole.zz) < 1e-6 and _relative(streamed.dd, whole.dd) < 1e-6
    assert isinstance(store.get(keys[0][0]), np.memmap)  # what was summed: mapped files, not loaded arrays
    a = InvariantProjection(n_components=8, lam=1.0).fit_moments(streamed)
    b = InvariantProjection(n_components=8, lam=1.0).fit_moments(whole)
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-6)
    np.testing.assert_allclose(a.eigenvalues_, b.eigenvalues_, rtol=1e-6, atol=1e-12)


def test_no_more_than_one_block_is_read_at_a_time(stored):
    store, keys, _, _ = stored
    read: list[int] = []

    class Watched:
        """A stored array that records the rows each read asks for."""

        def __init__(self, array):
            self.array = array

        def __len__(self):
            return len(self.array)

        def __getitem__(self, rows):
            read.append(len(self.array[rows]))
            return self.array[rows]

    parts = ((Watched(Z), Watched(Z_do)) for Z, Z_do in stored_pairs(store, keys))
    PairMoments.streamed(parts, block=256)
    assert max(read) == 256 and sum(read) == 2 * 3000


def test_bad_streams_are_refused_in_the_callers_terms(tmp_path, stored):
    store, keys, Z, Z_do = stored
    with pytest.raises(InvalidInput, match="every part was empty"):
        PairMoments.streamed(iter(()))
    with pytest.raises(InvalidInput, match="rows of Z_do"):
        PairMoments.streamed([(Z[:10], Z_do[:9])])
    with pytest.raises(InvalidInput, match="dimension 47 after parts of dimension 48"):
        PairMoments.streamed([(Z[:10], Z_do[:10]), (Z[:10, :47], Z_do[:10, :47])])
    with pytest.raises(InvalidInput, match="NaN or inf"):
        PairMoments.streamed([(np.full((4, 3), np.nan), np.zeros((4, 3)))])
    with pytest.raises(InvalidInput, match="at least 2 pairs"):
        PairMoments.streamed([(Z[:1], Z_do[:1])])
    with pytest.raises(InvalidInput, match="block must be a positive integer"):
        PairMoments.streamed([(Z, Z_do)], block=0)
    with pytest.raises(InvalidInput, match="no stored entry"):
        PairMoments.streamed(stored_pairs(store, [*keys, (keys[0][0], make_key("never stored"))]))
