"""The released-protocol preset: each difference from ours pinned, and the same predictions as a
direct transcription of the released evaluation (ML-TASA/CLIP-ICM engine.py, clip_icm.py,
converter_domainbed.py) on the same embeddings of a small random-weights model."""
import os
import warnings
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from clip_icm import protocols
from clip_icm.evaluation import (EvalConfig, apply_protocol, evaluate_split, fit_projection, predict_all,
                                 scored_rows)
from clip_icm.projection import InvariantProjection, ReleasedMoments
from clip_icm.scm import SCMConfig, make_embedding_set
from tests.tiny_clip import write_local_dir

DOMAINS, CLASSES, PER_CLASS = ("art", "photo", "sketch"), ("cat", "dog", "guitar_case"), 10
RELEASED = EvalConfig(n_components=8, lam=1000.0, methods=("icm_as_released",), protocol="released")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A clean DomainBed folder, embedded (image pairs, ensemble prompts) with a random tiny CLIP in fp32."""
    from clip_icm.backend import ModelConfig
    from clip_icm.pipeline import DataConfig, InterventionConfig, embed_dataset
    from clip_icm.store import EmbeddingStore

    base = tmp_path_factory.mktemp("released")
    gen = np.random.default_rng(0)
    for d, domain in enumerate(DOMAINS):
        for c, name in enumerate(CLASSES):
            folder = base / "data" / domain / name
            folder.mkdir(parents=True)
            for i in range(PER_CLASS):
                pixels = gen.integers(0, 255, size=(32, 32, 3)) // (c + 1) + 40 * d
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")
    model = ModelConfig(f"local-dir:{write_local_dir(base / 'tiny')}", "none", "cpu", "fp32", 16, 0)
    pairs = InterventionConfig(text_banks=(), templates="ensemble")
    run = embed_dataset(DataConfig(str(base / "data")), model, pairs, EmbeddingStore(base / "cache"))
    return run.embeddings, base / "data"


def _released_transcription(emb, root, target, K, lam):
    """engine.py / clip_icm.py / converter_domainbed.py, as written, on our arrays."""
    import hashlib

    import torch
    from torchvision.datasets import ImageFolder

    def seed_hash(*args):  # DomainBed misc.seed_hash
        return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)

    # converter_domainbed.get_domainbed_datasets(holdout=0.2): the target's "out" split
    environments = sorted(f.name for f in os.scandir(root) if f.is_dir())
    env = ImageFolder(os.path.join(root, target))
    keys = list(range(len(env)))
    np.random.RandomState(seed_hash(0, environments.index(target))).shuffle(keys)
    test = [env.samples[k] for k in keys[:int(len(env) * 0.2)]]
    row = {str(p): i for i, p in enumerate(emb.paths)}
    test_rows = np.array([row[path] for path, _ in test])
    test_labels = np.array([label for _, label in test])
    # clip_icm.estimate_content / get_A_inv: image pairs of the source training rows, eigh, the first K
    pairs = emb.pair_set("image:random").excluding(target)
    z, z_do = torch.tensor(pairs.z).float(), torch.tensor(pairs.z_do).float()  # clip_model.float()
    delta = z - z_do
    M = z.T @ z / z.shape[0] - lam * delta.T @ delta / delta.shape[0]
    A_inv = torch.linalg.eigh(M)[1][:, :K]
    # engine.zero_shot: "a photo of a {}.", text normalised then projected; images projected
    text = torch.tensor(emb.text_features[emb.templates.index("a photo of a {}.")]).float()
    text = (text / text.norm(dim=-1, keepdim=True)) @ A_inv
    images = torch.tensor(emb.features).float() @ A_inv  # every row: a stronger check than the 6 scored
    zero_shot = (100.0 * images @ text.T).softmax(dim=-1).argmax(dim=-1).numpy()
    # engine.logistic: the sources' "in" splits (ConcatDataset order, unshuffled) @ A_inv, fp32 features
    train = []
    for env_i, name in enumerate(environments):
        if name != target:
            source = ImageFolder(os.path.join(root, name))
            keys = list(range(len(source)))
            np.random.RandomState(seed_hash(0, env_i)).shuffle(keys)
            train += [row[source.samples[k][0]] for k in keys[int(len(source) * 0.2):]]
    classifier = LogisticRegression(random_state=0, C=0.316, max_iter=1000)
    classifier.fit((torch.tensor(emb.features[train]).float() @ A_inv).numpy(), emb.labels[train])
    probe = classifier.predict((torch.tensor(emb.features).float() @ A_inv).numpy())
    return test_rows, test_labels, zero_shot, probe


@pytest.mark.parametrize("target", DOMAINS)
def test_released_protocol_matches_a_transcription_of_the_released_code(tiny, target):
    emb, root = tiny
    rows, labels, zero_shot, probe = _released_transcription(emb, root, target, RELEASED.n_components, RELEASED.lam)
    assert len(rows) == int(0.2 * len(CLASSES) * PER_CLASS) == 6
    np.testing.assert_array_equal(emb.labels[rows], labels)  # same images, same class indices
    view, config = apply_protocol(emb, RELEASED)
    mask = scored_rows(view, target, config)[target]
    assert set(np.flatnonzero(mask)) == set(rows)  # the released 20 % holdout, not the whole target
    ours = predict_all(emb, target, "icm_as_released", RELEASED)
    np.testing.assert_array_equal(ours["zero-shot"], zero_shot)
    np.testing.assert_array_equal(ours["linear probe"], probe)
    frame = evaluate_split(emb, target, RELEASED)
    acc = frame[frame.role == "target"].set_index("method")
    assert (acc.n == 6).all() and (frame.preset == "released").all()
    got = acc[(acc.index == "icm_as_released") & (acc.protocol == "linear probe")].accuracy.item()
    assert got == pytest.approx(np.mean(probe[rows] == labels))


# ---------------------------------------------------------------- each difference, pinned

@pytest.fixture(scope="module")
def synthetic():
    """A synthetic set dressed as an embedded one: true pairs as the image pairs, named templates."""
    emb = make_embedding_set(SCMConfig(n_invariant=6, n_variant=10, n_classes=3, seed=2), 120,
                             ("photo", "cartoon", "sketch"))
    image = replace(emb.pair_set("true"), name="image:random", kind="image")
    templates = ("a photo of a {}.", "itap of a {}.", "art of the {}.", "a {} in a video game.")
    return replace(emb, pairs=[image, emb.pair_set("text")], templates=templates)


def test_released_protocol_fits_on_image_pairs_only_at_absolute_lam(synthetic):
    config = replace(RELEASED, lam=50.0, lam_mode="relative", methods=("icm",))
    fitted = fit_projection(synthetic, "sketch", "icm", config)
    image = synthetic.pair_set("image:random").excluding("sketch")
    direct = InvariantProjection(8, 50.0, "top", "absolute").fit_moments(ReleasedMoments(image.z, image.z_do))
    np.testing.assert_allclose(fitted.components_, direct.components_, atol=1e-10)
    float64 = InvariantProjection(8, 50.0, "top", "absolute").fit(image.z, image.z_do)  # fp32 arithmetic: close
    np.testing.assert_allclose(fitted.components_, float64.components_, atol=1e-3)
    assert fitted.lam_effective_ == 50.0  # absolute, whatever lam_mode the config asked for
    ours = fit_projection(synthetic, "sketch", "icm", replace(config, protocol="ours"))
    assert np.abs(ours.components_ - direct.components_).max() > 1e-3  # ours stacks text pairs, relative lam
    assert evaluate_split(synthetic, "sketch", config).lam_mode.eq("absolute").all()


def test_released_protocol_uses_the_one_prompt_and_no_renormalisation(synthetic):
    view, _ = apply_protocol(synthetic, RELEASED)
    assert view.templates == ("a photo of a {}.",)
    np.testing.assert_array_equal(view.text_features[0], synthetic.text_features[0])
    garbled = synthetic.text_features.copy()
    garbled[1:] = np.random.default_rng(0).normal(size=garbled[1:].shape) * 100  # the other templates
    other = replace(synthetic, text_features=garbled)
    frames = [evaluate_split(e, "sketch", replace(RELEASED, methods=("icm",))) for e in (synthetic, other)]
    np.testing.assert_array_equal(frames[0].accuracy, frames[1].accuracy)  # released: other prompts unused
    ours = [evaluate_split(e, "sketch", EvalConfig(8, 1000.0, "absolute", methods=("icm",))) for e in (synthetic, other)]
    zs = [f[f.protocol == "zero-shot"].accuracy.to_numpy() for f in ours]
    assert not np.array_equal(*zs)  # ours averages the ensemble
    projection = fit_projection(synthetic, "sketch", "icm", RELEASED)
    raw = projection.transform(view.text_features[0] / np.linalg.norm(view.text_features[0], axis=1)[:, None])
    expected = np.argmax(projection.transform(synthetic.features) @ raw.T, axis=1)  # dot product, no renorm
    np.testing.assert_array_equal(predict_all(synthetic, "sketch", "icm", RELEASED)["zero-shot"], expected)


def test_released_probe_is_plain_logistic_regression_on_raw_projected_features(synthetic):
    view, config = apply_protocol(synthetic, RELEASED)
    projection = fit_projection(synthetic, "sketch", "icm_as_released", RELEASED)
    X = protocols.released_project(synthetic.features, projection.components_)  # fp32 features @ A_inv
    assert X.dtype == np.float32
    np.testing.assert_allclose(X, projection.transform(synthetic.features), atol=1e-4)
    train = protocols.released_train_rows(synthetic.domains, None, "sketch")  # the sources' released 80 %
    assert len(train) == 2 * int(0.8 * 120) and set(train) != set(np.flatnonzero(
        (synthetic.domains != "sketch") & synthetic.is_train))  # not our stratified training rows
    direct = LogisticRegression(random_state=0, C=0.316, max_iter=1000, solver="lbfgs").fit(X[train],
                                                                                             synthetic.labels[train])
    got = predict_all(synthetic, "sketch", "icm_as_released", RELEASED)["linear probe"]
    np.testing.assert_array_equal(got, direct.predict(X))
    probe = protocols.released_probe(X[train], synthetic.labels[train])
    assert (probe.C, probe.solver, probe.max_iter) == (0.316, "lbfgs", 1000)


def test_released_protocol_scores_the_20_percent_target_holdout(synthetic):
    frame = evaluate_split(synthetic, "sketch", RELEASED)
    target = frame[frame.role == "target"]
    assert (target.n == 24).all()  # int(0.2 * 120); ours scores all 120
    assert (evaluate_split(synthetic, "sketch", replace(RELEASED, protocol="ours")).query("role == 'target'").n
            == 120).all()
    # DomainBed's split of range(120) with seed_hash(0, index of "sketch" among the sorted domains)
    keys = list(range(120))
    np.random.RandomState(protocols.domainbed_seed_hash(0, 2)).shuffle(keys)
    expected = np.flatnonzero(synthetic.domains == "sketch")[keys[:24]]
    assert set(np.flatnonzero(protocols.released_holdout(synthetic.domains, None, "sketch"))) == set(expected)


def test_released_protocol_runs_in_fp32_and_ours_leaves_precision_to_the_device():
    assert protocols.PROTOCOLS.get("released").precision == "fp32"
    assert protocols.PROTOCOLS.get("ours").precision is None


def test_protocol_bad_input(synthetic):
    with pytest.raises(KeyError, match="available: ours, released"):
        evaluate_split(synthetic, "sketch", replace(RELEASED, protocol="paper"))
    no_images = replace(synthetic, pairs=[synthetic.pair_set("text")])
    with pytest.raises(ValueError, match="image pairs"):
        evaluate_split(no_images, "sketch", RELEASED)
    with pytest.raises(ValueError, match="a photo of a"):
        evaluate_split(replace(synthetic, templates=None), "sketch", RELEASED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_split(synthetic, "sketch", replace(RELEASED, methods=()))
