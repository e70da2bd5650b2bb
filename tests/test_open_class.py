"""The open-class task: a seeded 50/50 class split, fits on base classes of the sources only."""
from dataclasses import replace

import numpy as np
import pytest

from clip_icm.evaluation import (EvalConfig, class_split, evaluate_open_class, harmonic_mean,
                                 open_class_leave_one_domain_out)
from clip_icm.methods import METHODS
from clip_icm.projection import OrthCaliProjection
from clip_icm.scm import SCMConfig, make_embedding_set

CONFIG = EvalConfig(n_components=6, lam=1e4, lam_mode="absolute")


@pytest.fixture(scope="module")
def emb():
    return make_embedding_set(SCMConfig(n_invariant=6, n_variant=10, n_classes=6, seed=2), 120,
                              ("photo", "cartoon", "sketch"))


def test_class_split_is_seeded_half_and_half():
    base, new = class_split(7, seed=0)
    assert len(base) == 3 and len(new) == 4 and set(base) | set(new) == set(range(7)) and not set(base) & set(new)
    np.testing.assert_array_equal(class_split(7, seed=0)[0], base)
    assert any(not np.array_equal(class_split(7, seed=s)[0], base) for s in range(1, 6))


@pytest.mark.parametrize("n_classes", [1, 2, 3])
def test_class_split_needs_two_classes_on_each_side(n_classes):
    with pytest.raises(ValueError, match="at least 2 base and 2 new classes"):
        class_split(n_classes)


def test_rows_base_new_and_harmonic_mean(emb):
    frame = evaluate_open_class(emb, "sketch", CONFIG)
    assert set(frame.classes) == {"base", "new", "harmonic mean"} and set(frame.protocol) == {"zero-shot"}
    assert set(frame.method) == {"CLIP", *CONFIG.methods} and (frame.preset == "ours").all()
    base, new = class_split(6)
    target = frame[frame.role == "target"].set_index(["method", "classes"])
    sketch = emb.domains == "sketch"
    assert target.loc[("CLIP", "base"), "n"] == np.isin(emb.labels[sketch], base).sum()
    assert target.loc[("CLIP", "new"), "n"] == np.isin(emb.labels[sketch], new).sum()
    for method in frame.method.unique():
        b, n = target.loc[(method, "base"), "accuracy"], target.loc[(method, "new"), "accuracy"]
        assert target.loc[(method, "harmonic mean"), "accuracy"] == pytest.approx(harmonic_mean(b, n))
    assert harmonic_mean(0.5, 1.0) == pytest.approx(2 / 3) and harmonic_mean(0.0, 0.0) == 0.0
    assert np.isnan(harmonic_mean(float("nan"), 1.0))
    assert len(open_class_leave_one_domain_out(emb, config=CONFIG)) == 3 * len(frame)


def _garble_new_classes(emb, new):
    """The same set with every pair of a new class replaced by noise (features untouched)."""
    gen = np.random.default_rng(7)
    pairs = []
    for p in emb.pairs:
        z, z_do = p.z.copy(), p.z_do.copy()
        rows = np.isin(p.labels, new)
        z[rows], z_do[rows] = gen.normal(size=z[rows].shape) * 50, gen.normal(size=z[rows].shape) * 50
        pairs.append(replace(p, z=z, z_do=z_do))
    prompts = emb.attribute_prompts  # Orth-Cali's prompts of each class under each template
    z = prompts.z.copy()
    rows = np.isin(prompts.labels, new)
    z[rows] = gen.normal(size=z[rows].shape) * 50
    return replace(emb, pairs=pairs, attribute_prompts=replace(prompts, z=z))


def test_new_classes_never_enter_any_fit(emb, monkeypatch):
    from clip_icm import evaluation, protocols
    from clip_icm.projection import PairMoments

    base, new = class_split(6)
    seen, probes = [], []
    real_of, real_fit = PairMoments.of.__func__, OrthCaliProjection.fit

    def moments_spy(cls, Z, Z_do):  # every estimator but Orth-Cali fits from these moments
        seen.append(np.asarray(Z))
        return real_of(cls, Z, Z_do)

    def orth_cali_spy(self, Z, Z_do, *args, **kwargs):
        seen.append(np.asarray(Z))
        return real_fit(self, Z, Z_do, *args, **kwargs)

    monkeypatch.setattr(PairMoments, "of", classmethod(moments_spy))
    monkeypatch.setattr(OrthCaliProjection, "fit", orth_cali_spy)
    monkeypatch.setattr(evaluation, "fit_linear_probe", lambda *a, **k: probes.append(a))
    monkeypatch.setattr(protocols, "released_probe", lambda *a, **k: probes.append(a))
    first = evaluate_open_class(emb, "sketch", CONFIG)
    orth_cali = [m for m in CONFIG.methods if METHODS.get(m).text_only]
    assert len(orth_cali) == 2  # Orth-Cali and its class-free variant
    assert len(seen) == 1 + len(orth_cali) and not probes  # one pair stack (kept for every method), each
    # Orth-Cali's prompt pairs; no probe
    prompts = emb.attribute_prompts
    new_rows = np.concatenate([p.z[np.isin(p.labels, new)] for p in emb.pairs]
                              + [prompts.z[np.isin(prompts.labels, new)]])
    for Z in seen:  # no row of any fit is a new-class pair row
        assert not (np.abs(Z[:, None, :] - new_rows[None, :, :]).max(axis=2) < 1e-12).any()
    monkeypatch.undo()
    # ... and changing every new-class pair changes nothing: the fits never read them.
    again = evaluate_open_class(_garble_new_classes(emb, new), "sketch", CONFIG)
    np.testing.assert_array_equal(first.accuracy.to_numpy(), again.accuracy.to_numpy())
    # The garbling is not idle: the same change in the domain-shift task moves the accuracy.
    from clip_icm.evaluation import evaluate_split
    shift = [evaluate_split(e, "sketch", CONFIG).accuracy.to_numpy() for e in (emb, _garble_new_classes(emb, new))]
    assert not np.allclose(*shift, equal_nan=True)


def test_pairs_without_labels_are_refused(emb):
    unlabeled = replace(emb, pairs=[replace(p, labels=None) for p in emb.pairs])
    with pytest.raises(ValueError, match="no class labels"):
        evaluate_open_class(unlabeled, "sketch", CONFIG)
    with pytest.raises(ValueError, match="at least 2 base and 2 new"):
        evaluate_open_class(make_embedding_set(SCMConfig(n_classes=3), 60, ("a", "b")), "b", CONFIG)
