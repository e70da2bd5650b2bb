"""Estimator contract of every projection method, bad input, and the closed form itself."""
import warnings

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from clip_icm.embeddings import PairSet
from clip_icm.errors import InvalidInput
from clip_icm.methods import METHODS, make_projection
from clip_icm.projection import (
    InvariantProjection,
    NullSpaceProjection,
    NegativeLamWarning,
    OrthCaliProjection,
    RankDeficientWarning,
    stack_pairs,
)

D, K_INV = 12, 4


def _pairs(n=200, seed=0):
    """Linear world: x = W [z_inv; z_var]; the pair resamples z_var only."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(D, D))
    z_inv = rng.normal(size=(n, K_INV))
    Z = np.c_[z_inv, rng.normal(size=(n, D - K_INV))] @ W.T
    Z_do = np.c_[z_inv, rng.normal(size=(n, D - K_INV))] @ W.T
    return Z, Z_do, W


@pytest.fixture(scope="module")
def pairs():
    return _pairs()


@pytest.mark.parametrize("method", METHODS.available())
def test_fit_transform_matches_fit_then_transform(method, pairs):
    Z, Z_do, _ = pairs
    est = make_projection(method, K_INV, 10.0)
    Y = est.fit_transform(Z, Z_do)
    np.testing.assert_allclose(Y, make_projection(method, K_INV, 10.0).fit(Z, Z_do).transform(Z), atol=1e-10)
    np.testing.assert_allclose(Y, Z @ est.components_.T, atol=1e-10)
    assert est.n_features_in_ == D
    if method == "augmentation":  # the identity: the full space, no spectrum
        np.testing.assert_array_equal(est.components_, np.eye(D))
        return
    if METHODS.get(method).text_only:  # Orth-Cali: P = P0 (I + lam M)^-1, no eigenproblem, no spectrum
        return
    assert est.eigenvalues_.shape == (D,)
    assert np.all(np.diff(est.eigenvalues_) <= 1e-9)  # descending


@pytest.mark.parametrize("method", METHODS.available())
def test_not_fitted(method, pairs):
    with pytest.raises(NotFittedError):
        make_projection(method, K_INV, 1.0).transform(pairs[0])


@pytest.mark.parametrize("method", ["icm", "icm_as_released", "pca", "null_space"])
def test_components_orthonormal_and_inverse(method, pairs):
    Z, Z_do, _ = pairs
    est = make_projection(method, K_INV, 10.0).fit(Z, Z_do)
    C = est.components_
    assert C.shape == (K_INV, D)
    np.testing.assert_allclose(C @ C.T, np.eye(K_INV), atol=1e-10)
    np.testing.assert_allclose(est.inverse_transform(est.transform(Z)), Z @ C.T @ C, atol=1e-8)


def test_signs_deterministic(pairs):
    Z, Z_do, _ = pairs
    C = InvariantProjection(K_INV, 10.0).fit(Z, Z_do).components_
    assert np.all(C[np.arange(K_INV), np.argmax(np.abs(C), axis=1)] > 0)
    # Re-fitting on permuted rows gives the same matrix, signs included.
    perm = np.random.default_rng(1).permutation(len(Z))
    np.testing.assert_allclose(InvariantProjection(K_INV, 10.0).fit(Z[perm], Z_do[perm]).components_, C, atol=1e-8)


def test_top_is_closed_form_and_as_released_is_ascending_slice(pairs):
    Z, Z_do, _ = pairs
    lam, n = 10.0, len(Z)
    M = Z.T @ Z / n - lam * (Z - Z_do).T @ (Z - Z_do) / n
    values, vectors = np.linalg.eigh(M)
    top = InvariantProjection(K_INV, lam).fit(Z, Z_do)
    released = InvariantProjection(K_INV, lam, selection="as_released").fit(Z, Z_do)
    np.testing.assert_allclose(top.eigenvalues_, values[::-1], rtol=1e-9, atol=1e-9)
    # Same subspaces as the explicit slices (projectors compared, signs irrelevant).
    for est, cols in ((top, vectors[:, -K_INV:]), (released, vectors[:, :K_INV])):
        np.testing.assert_allclose(est.components_.T @ est.components_, cols @ cols.T, atol=1e-8)


def test_relative_lam(pairs):
    Z, Z_do, _ = pairs
    est = InvariantProjection(K_INV, 2.0, lam_mode="relative").fit(Z, Z_do)
    expected = 2.0 * np.sum(Z**2) / np.sum((Z - Z_do) ** 2)
    assert est.lam_effective_ == pytest.approx(expected)
    absolute = InvariantProjection(K_INV, expected).fit(Z, Z_do)
    np.testing.assert_allclose(est.components_, absolute.components_, atol=1e-10)
    with pytest.raises(ValueError, match="identical"):
        InvariantProjection(K_INV, 1.0, lam_mode="relative").fit(Z, Z)


def test_invariance_ratio_orders_methods(pairs):
    Z, Z_do, _ = pairs
    icm = InvariantProjection(K_INV, 1e4).fit(Z, Z_do)
    released = InvariantProjection(K_INV, 1e4, selection="as_released").fit(Z, Z_do)
    assert icm.invariance_ratio(Z, Z_do) < 1e-3 < 0.5 < released.invariance_ratio(Z, Z_do)
    assert NullSpaceProjection(n_components=K_INV).fit(Z, Z_do).invariance_ratio(Z, Z_do) < 1e-8


def test_null_space_n_removed_equals_complement(pairs):
    Z, Z_do, _ = pairs
    a = NullSpaceProjection(n_removed=D - K_INV).fit(Z, Z_do)
    b = NullSpaceProjection(n_components=K_INV).fit(Z, Z_do)
    np.testing.assert_allclose(a.components_, b.components_)
    with pytest.raises(ValueError, match="exactly one"):
        NullSpaceProjection().fit(Z, Z_do)
    with pytest.raises(ValueError, match="n_removed"):
        NullSpaceProjection(n_removed=D).fit(Z, Z_do)


def _chuang_transcription(spurious, candidates, S, lam):
    """Chuang et al.'s debias_vl (discriminative/main.py), line for line: TruncatedSVD basis of
    the normalised spurious prompts, get_A / get_M over index pairs S, P = P0 inv(lam M + I)."""
    from sklearn.decomposition import TruncatedSVD

    unit = lambda X: X / np.linalg.norm(X, axis=1, keepdims=True)  # noqa: E731 (their F.normalize)
    spurious, candidates = unit(spurious), unit(candidates)
    tsvd = TruncatedSVD(n_components=len(spurious))
    tsvd.fit_transform(spurious)
    basis = tsvd.components_.T
    P0 = np.eye(len(basis)) - basis @ np.linalg.inv(basis.T @ basis) @ basis.T
    M = np.zeros((candidates.shape[1],) * 2)
    for i, j in S:
        zi, zj = candidates[i][:, None], candidates[j][:, None]
        M += zi @ zi.T + zj @ zj.T - zi @ zj.T - zj @ zi.T
    M /= len(S)
    return P0 @ np.linalg.inv(lam * M + np.eye(len(M)))


def test_orth_cali_matches_published_formula_and_removes_the_spurious_direction():
    gen = np.random.default_rng(3)
    dim, spurious_dir = 8, np.eye(8)[0]
    # Class prompts: a class part plus a known spurious part along e0 ("on the beach").
    classes = gen.normal(size=(3, dim)) * np.r_[0.0, np.ones(dim - 1)] + 2.0 * spurious_dir
    # Spurious prompts: class-free, e0 plus a little of a shared "a photo of" direction e7.
    spurious = np.array([spurious_dir + 0.1 * np.eye(dim)[7], spurious_dir - 0.1 * np.eye(dim)[7]])
    candidates = np.concatenate([classes, classes + gen.normal(size=(3, dim)) * 0.3])
    S = [(c, c + 3) for c in range(3)]  # same class, different spurious attribute
    lam = 1000.0
    est = OrthCaliProjection(lam).fit(candidates[:3], candidates[3:], spurious)
    np.testing.assert_allclose(est.components_, _chuang_transcription(spurious, candidates, S, lam), atol=1e-8)
    calibrated = est.transform(classes / np.linalg.norm(classes, axis=1, keepdims=True))
    np.testing.assert_allclose(calibrated @ spurious.T, 0.0, atol=1e-10)  # span of the spurious prompts: gone
    assert np.abs(calibrated[:, 1:7]).max() > 1e-4  # ... but not everything is gone
    # Only spurious prompts: P = P0 exactly, the orthogonal projector away from them.
    only = OrthCaliProjection(lam).fit(np.zeros((0, dim)), np.zeros((0, dim)), spurious)
    V = spurious.T
    np.testing.assert_allclose(only.components_, np.eye(dim) - V @ np.linalg.inv(V.T @ V) @ V.T, atol=1e-10)
    with pytest.raises(ValueError, match="neither"):
        OrthCaliProjection().fit(np.zeros((0, dim)), np.zeros((0, dim)))
    with pytest.raises(ValueError, match="dims"):
        OrthCaliProjection().fit(candidates[:3], candidates[3:], spurious[:, :4])


def test_negative_lam_only_with_the_released_slice(pairs):
    Z, Z_do, _ = pairs
    with pytest.raises(ValueError, match="negative lam is accepted only with selection='as_released'"):
        InvariantProjection(K_INV, -10.0, "top").fit(Z, Z_do)
    with pytest.warns(NegativeLamWarning, match="rewards the directions that move"):
        est = InvariantProjection(K_INV, -10.0, "as_released").fit(Z, Z_do)
    M = Z.T @ Z / len(Z) + 10.0 * (Z - Z_do).T @ (Z - Z_do) / len(Z)
    _, vectors = np.linalg.eigh(M)
    np.testing.assert_allclose(np.abs(est.components_ @ vectors[:, :K_INV]), np.eye(K_INV), atol=1e-8)


def test_top_k_drops_directions_no_pair_touches():
    gen = np.random.default_rng(1)
    # 6 pairs in a D = 12 space, all inside the first 5 coordinates (rank 5 < D).
    Z = np.c_[gen.normal(size=(6, 5)), np.zeros((6, 7))]
    Z_do = Z + np.c_[gen.normal(size=(6, 2)), np.zeros((6, 10))]
    with pytest.warns(RankDeficientWarning):
        est = InvariantProjection(4, 1e4).fit(Z, Z_do)
    # A plain top-4 of the D x D M would keep untouched zero-eigenvalue directions (coordinates 5..11)
    # above the touched ones that lam pushes negative; the rule keeps only touched directions.
    np.testing.assert_allclose(est.components_[:, 5:], 0.0, atol=1e-10)
    values = np.linalg.eigvalsh(Z.T @ Z / 6 - 1e4 * (Z - Z_do).T @ (Z - Z_do) / 6)
    assert np.sum(values > -1e-9) > 4  # ... which a plain top-4 would have taken: zeros and the 3 positive
    assert est.eigenvalues_.shape == (5,)
    with pytest.warns(RankDeficientWarning) as caught:  # "only 6 pairs", then what the fit keeps
        wide = InvariantProjection(6, 1e4).fit(Z, Z_do)
    assert any("more directions than the 5 that the pairs touch" in str(w.message) for w in caught)
    assert wide.components_.shape == (5, 12)  # the 5 touched directions, not a 6th no pair saw
    np.testing.assert_allclose(wide.components_[:, 5:], 0.0, atol=1e-10)


def test_centred_invariance_ratio():
    gen = np.random.default_rng(0)
    # A large common mean along e0; the interventions move e1 only.
    Z = gen.normal(size=(300, 3)) + np.array([50.0, 0.0, 0.0])
    Z_do = Z + np.c_[np.zeros(300), gen.normal(size=300), np.zeros(300)]
    est = InvariantProjection(2, 0.0).fit(Z, Z_do)  # PCA-like: keeps the mean direction e0 and one more
    plain, centred = est.invariance_ratio(Z, Z_do), est.invariance_ratio(Z, Z_do, centred=True)
    assert plain < 0.05 < 0.3 < centred  # the mean hides the movement; centring shows it
    A = est.components_
    expected = np.linalg.norm((Z - Z_do) @ A.T) / np.linalg.norm((Z - Z.mean(axis=0)) @ A.T)
    assert centred == pytest.approx(expected)
    assert est.invariance_ratios(Z, Z_do) == (plain, centred)  # both at once: the very same numbers
    assert np.isnan(InvariantProjection(2, 0.0).fit(Z, Z_do).invariance_ratios(np.zeros((4, 3)), np.ones((4, 3)))[0])
    with pytest.raises(InvalidInput, match="same shape"):
        est.invariance_ratios(Z, Z_do[:10])


BAD_INPUTS = [
    (lambda Z, Zd: (Z[:, :5], Zd), "same shape"),
    (lambda Z, Zd: (Z[0], Zd[0]), "2-D"),
    (lambda Z, Zd: (Z[:1], Zd[:1]), "at least 2 pairs"),
    (lambda Z, Zd: (np.where(np.eye(len(Z), D, dtype=bool), np.nan, Z), Zd), "NaN"),
    (lambda Z, Zd: (Z, np.where(np.eye(len(Z), D, dtype=bool), np.inf, Zd)), "Z_do contains NaN or inf"),
]


@pytest.mark.parametrize("method", METHODS.available())
@pytest.mark.parametrize("bad, message", BAD_INPUTS)
def test_bad_pairs_raise_named_value_error(method, bad, message, pairs):
    Z, Z_do, _ = pairs
    if METHODS.get(method).text_only and message == "at least 2 pairs":
        # Orth-Cali is a calibration, not an estimate: one prompt pair (or none, with spurious
        # prompts) is a valid input; test_orth_cali_* covers what it rejects.
        assert OrthCaliProjection().fit(*bad(Z, Z_do)).components_.shape == (D, D)
        return
    with pytest.raises(ValueError, match=message):
        make_projection(method, K_INV, 1.0).fit(*bad(Z, Z_do))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": D + 1}, "n_components"),
        ({"n_components": 2.5}, "n_components"),
        ({"lam": -1.0}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"selection": "bottom"}, "selection"),
        ({"lam_mode": "scaled"}, "lam_mode"),
    ],
)
def test_bad_parameters_raise_named_value_error(params, message, pairs):
    with pytest.raises(ValueError, match=message):
        InvariantProjection(**{"n_components": K_INV, **params}).fit(*pairs[:2])


def test_transform_checks_width(pairs):
    est = InvariantProjection(K_INV, 1.0).fit(*pairs[:2])
    with pytest.raises(ValueError, match="features"):
        est.transform(pairs[0][:, :-1])


def test_warns_when_fewer_pairs_than_dims(pairs):
    Z, Z_do, _ = pairs
    with pytest.warns(RankDeficientWarning, match="rank-deficient"):
        InvariantProjection(2, 1.0).fit(Z[: D - 1], Z_do[: D - 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InvariantProjection(2, 1.0).fit(Z, Z_do)


def test_stack_pairs_weights(pairs):
    Z, Z_do, _ = pairs
    a = PairSet("a", "image", Z[:50], Z_do[:50])
    b = PairSet("b", "text", Z[50:80], Z_do[50:80])
    S, S_do = stack_pairs([a, b], {"b": 4.0})
    np.testing.assert_allclose(S[50:], 2.0 * Z[50:80])
    np.testing.assert_allclose(S_do[:50], Z_do[:50])
    assert len(stack_pairs([a, b], {"a": 0.0})[0]) == 30
    for weights, message in (({"c": 1.0}, "unknown"), ({"a": -1.0}, "weight"), ({"a": 0, "b": 0}, "weight 0")):
        with pytest.raises(ValueError, match=message):
            stack_pairs([a, b], weights)
    with pytest.raises(ValueError, match="no pair sets"):
        stack_pairs([])
    with pytest.raises(ValueError, match="dimensions"):
        stack_pairs([a, PairSet("c", "text", Z[:5, :3], Z_do[:5, :3])])
