"""The one row L2-normalise helper every module uses (evaluation, projection, reduce, scm, service)."""
import numpy as np

from clip_icm.embeddings import unit_rows


def test_rows_become_unit_length_and_keep_their_direction():
    X = np.random.default_rng(0).normal(size=(50, 7)) * np.arange(1, 51)[:, None]
    unit = unit_rows(X)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(unit * np.linalg.norm(X, axis=1, keepdims=True), X, rtol=1e-12)


def test_a_zero_row_stays_zero_instead_of_nan():
    unit = unit_rows(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert np.array_equal(unit, [[0.0, 0.0], [0.6, 0.8]])


def test_keeps_the_dtype_and_works_on_one_vector():
    X = np.array([[3.0, 4.0]], dtype=np.float32)
    assert unit_rows(X).dtype == np.float32
    assert np.array_equal(unit_rows(np.array([0.0, 2.0])), [0.0, 1.0])
