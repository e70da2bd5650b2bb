"""The causal playground as ground truth: ICM top-K recovers the invariant subspace, the
released slice keeps variant directions, and the invariant predictor survives the shift."""
from dataclasses import replace

import numpy as np
import pytest

from clip_icm.embeddings import EmbeddingSet
from clip_icm.projection import InvariantProjection
from clip_icm.scm import (
    LinearSCM,
    SCMConfig,
    make_embedding_set,
    principal_angles,
    r2_recovery,
    run_playground,
    subspace_distance,
)
from clip_icm.seeding import rng

N_INV, N_VAR = 64, 192  # D = 256, as in the check


def _recovery(noise: float, selection: str = "top", lam: float = 1e6) -> dict[str, float]:
    scm = LinearSCM(SCMConfig(n_invariant=N_INV, n_variant=N_VAR, noise=noise, seed=3))
    gen = rng("test-recovery", noise)
    envs = scm.train_environments()
    train = scm.sample(3000, envs, gen)
    proj = InvariantProjection(N_INV, lam, selection).fit(train.x, scm.intervene(train, envs, gen))
    # z_var drawn independently of the class, so R2(z_var) = 0 is chance.
    probe = scm.sample(4000, [scm.environment("train-a", 0.0)], gen)
    features = proj.transform(probe.x)
    return {
        "angle": subspace_distance(proj.components_, scm.invariant_basis()),
        "r2_inv": r2_recovery(features, probe.z_inv),
        "r2_var": r2_recovery(features, probe.z_var),
        # largest angle between the kept directions and the span of the variant mixing columns
        "to_variant_span": subspace_distance(proj.components_, scm.mixing[:, N_INV:].T),
    }


@pytest.fixture(scope="module")
def noise_free():
    return _recovery(0.0)


def test_top_k_recovers_invariant_subspace_noise_free(noise_free):
    assert noise_free["angle"] < 1e-3
    assert noise_free["r2_inv"] > 0.99
    assert abs(noise_free["r2_var"]) < 0.05


def test_leakage_shrinks_with_lam():
    angles = [_recovery(0.0, lam=lam)["angle"] for lam in (1e2, 1e4)]
    assert angles[1] < angles[0] / 10


def test_noise_degrades_gracefully(noise_free):
    noisy = [_recovery(noise) for noise in (0.1, 0.3)]
    assert noise_free["angle"] < noisy[0]["angle"] < noisy[1]["angle"] < 0.6
    assert noisy[0]["r2_inv"] > 0.95 and noisy[1]["r2_inv"] > 0.8
    assert all(abs(r["r2_var"]) < 0.05 for r in noisy)


def test_as_released_keeps_variant_directions():
    released = _recovery(0.0, selection="as_released")
    assert released["angle"] > 1.5  # some true invariant direction is missed entirely
    assert released["to_variant_span"] < 1e-3  # every kept direction is a variant one
    assert released["r2_var"] > 0.2  # K = 64 of the 192 variant factors, linearly mixed
    assert released["r2_inv"] < 0.5


def test_true_basis_annihilates_variant_mixing():
    scm = LinearSCM(SCMConfig(n_invariant=3, n_variant=5, dim=12, seed=1))
    basis = scm.invariant_basis()
    assert basis.shape == (3, 12)
    np.testing.assert_allclose(basis @ scm.mixing[:, 3:], 0.0, atol=1e-10)
    np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-10)


def test_principal_angles_known_cases():
    e = np.eye(4)
    assert principal_angles(e[:2], e[:2] * 3).max() <= 1e-12
    basis = np.random.default_rng(0).normal(size=(5, 64))  # the same subspace, another basis of it
    mixed = np.random.default_rng(1).normal(size=(5, 5)) @ basis
    assert principal_angles(basis, mixed).max() <= 1e-12
    tiny = np.array([[np.cos(1e-10), np.sin(1e-10), 0, 0]])  # arccos of the cosine would read ~2e-8
    assert subspace_distance(e[:1], tiny) == pytest.approx(1e-10, rel=1e-6)
    np.testing.assert_allclose(principal_angles(e[:2], e[2:]), [np.pi / 2] * 2)
    tilted = np.array([[np.cos(0.3), np.sin(0.3), 0, 0]])
    assert subspace_distance(e[:1], tilted) == pytest.approx(0.3)


def test_r2_recovery_chance_and_perfect():
    gen = np.random.default_rng(0)
    factors = gen.normal(size=(2000, 3))
    assert r2_recovery(factors @ gen.normal(size=(3, 5)), factors) == pytest.approx(1.0)
    assert abs(r2_recovery(gen.normal(size=(2000, 5)), factors)) < 0.02


def test_playground_ood_gap_closes():
    table = run_playground(SCMConfig(), shifts=(0.0, 1.0), n_train=2000, n_test=1000)
    at = table.set_index(["shift", "method"])
    full_drop = at.loc[(0.0, "CLIP"), "ood_accuracy"] - at.loc[(1.0, "CLIP"), "ood_accuracy"]
    icm_drop = at.loc[(0.0, "icm"), "ood_accuracy"] - at.loc[(1.0, "icm"), "ood_accuracy"]
    assert full_drop > 0.25 and abs(icm_drop) < 0.05
    assert at.loc[(1.0, "icm"), "ood_accuracy"] > at.loc[(1.0, "CLIP"), "ood_accuracy"] + 0.15
    assert at.loc[(1.0, "icm_as_released"), "ood_gap"] > at.loc[(1.0, "CLIP"), "ood_gap"]
    assert at.loc[(1.0, "icm"), "max_angle"] < 1e-2 < 1.5 < at.loc[(1.0, "icm_as_released"), "max_angle"]


def test_playground_is_seeded():
    a = run_playground(SCMConfig(seed=5), shifts=(0.5,), n_train=500, n_test=200)
    b = run_playground(SCMConfig(seed=5), shifts=(0.5,), n_train=500, n_test=200)
    c = run_playground(SCMConfig(seed=6), shifts=(0.5,), n_train=500, n_test=200)
    assert a.equals(b) and not a.equals(c)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_invariant": 0}, "n_invariant"),
        ({"n_classes": 1}, "n_classes"),
        ({"dim": 4}, "dim"),
        ({"spurious_correlation": 1.5}, "spurious_correlation"),
        ({"shift": -0.1}, "shift"),
        ({"noise": -1.0}, "noise"),
        ({"mixing_condition": 0.5}, "mixing_condition"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LinearSCM(SCMConfig(**kwargs))


def test_bad_shifts_and_sizes():
    with pytest.raises(ValueError, match="shifts"):
        run_playground(SCMConfig(), shifts=(1.5,))
    with pytest.raises(ValueError, match="n_test >= 4, got n_train=100, n_test=3"):
        run_playground(SCMConfig(), n_train=100, n_test=3)


def test_make_embedding_set_contract():
    config = SCMConfig(n_invariant=4, n_variant=6, dim=12, n_classes=3, n_templates=3)
    emb = make_embedding_set(config, n_per_domain=50, domains=("a", "b", "c"))
    assert isinstance(emb, EmbeddingSet)
    assert emb.features.shape == (150, 12) and emb.text_features.shape == (3, 3, 12)
    assert emb.domain_names == ["a", "b", "c"]
    assert 0.6 < emb.is_train.mean() < 0.8
    true_pairs, text_pairs = emb.pair_set("true"), emb.pair_set("text")
    # Pairs come from training rows only (as the pipeline builds them), and carry their class.
    assert true_pairs.kind == "true" and len(true_pairs.z) == emb.is_train.sum()
    assert len(true_pairs.excluding("a").z) == (emb.is_train & (emb.domains != "a")).sum()
    train = np.flatnonzero(emb.is_train)
    np.testing.assert_array_equal(true_pairs.z, emb.features[train])
    np.testing.assert_array_equal(true_pairs.labels, emb.labels[train])
    (check,) = emb.intervened_val  # the validation rows' do-interventions: scored, never fitted
    np.testing.assert_array_equal(check.z, emb.features[~emb.is_train])
    np.testing.assert_array_equal(check.labels, emb.labels[~emb.is_train])
    assert text_pairs.domains is None and len(text_pairs.z) == 3 * 3 * 2
    # Every delta, image or text, lies in the variant block of the mixing.
    basis = LinearSCM(config).invariant_basis()
    for pairs in (true_pairs, text_pairs):
        np.testing.assert_allclose((pairs.z - pairs.z_do) @ basis.T, 0.0, atol=1e-9)
    # The new z_var comes from the source environments only: never the shifted last domain's offset.
    # Without variant noise each z_var_do is exactly a class mean plus the offset of the environment drawn.
    exact = replace(config, variant_noise=0.0)
    scm, pairs = LinearSCM(exact), make_embedding_set(exact, n_per_domain=50, domains=("a", "b", "c")).pair_set("true")
    z_var_do = (pairs.z_do @ np.linalg.pinv(scm.mixing).T)[:, exact.n_invariant:]
    offsets = {d: scm.environment(d, exact.spurious_correlation, exact.shift if d == "c" else 0.0).offset
               for d in "abc"}
    drawn = [{d for d, off in offsets.items() for mu in scm.mu_var if np.allclose(row, mu + off, atol=1e-8)}
             for row in z_var_do]
    assert all(len(d) == 1 for d in drawn) and set.union(*drawn) == {"a", "b"}
    np.testing.assert_allclose(emb.spurious.z @ basis.T, 0.0, atol=1e-9)  # class-free: no invariant part
    again = make_embedding_set(config, n_per_domain=50, domains=("a", "b", "c"))
    np.testing.assert_array_equal(again.features, emb.features)
    assert again.key == emb.key != make_embedding_set(config, n_per_domain=51, domains=("a", "b", "c")).key


def test_make_embedding_set_bad_input():
    with pytest.raises(ValueError, match="domain"):
        make_embedding_set(SCMConfig(), domains=("a",))
    with pytest.raises(ValueError, match="n_per_domain"):
        make_embedding_set(SCMConfig(), n_per_domain=1)
