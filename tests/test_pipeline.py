import warnings

from pathlib import Path

import numpy as np
import pytest

import clip_icm.pipeline as pipeline
from clip_icm.backend import ClipBackend
from clip_icm.pipeline import DataConfig, InterventionConfig, build_embedding_set, chunk_indices, embed_dataset
from clip_icm.store import EmbeddingStore
from tests.folders import make_messy_domainbed

FEW = InterventionConfig(text_pairs_per_class=2, templates="single")


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy_domainbed(tmp_path_factory.mktemp("messy"), n_per_class=4, truncated=True)


@pytest.fixture
def count_encoded(monkeypatch):
    """Counts images sent through the model (wraps the real encoder)."""
    seen = []
    real = ClipBackend.iter_encode

    def counting(self, images, *args, **kwargs):
        seen.append(len(images))
        yield from real(self, images, *args, **kwargs)

    monkeypatch.setattr(ClipBackend, "iter_encode", counting)
    return seen


def _run(messy, model, store, cfg=FEW, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the messy folder lacks a class on purpose
        return embed_dataset(DataConfig(str(messy.root)), model, cfg, store, **kw)


def test_messy_folder_end_to_end(tmp_path, messy, model):
    run = _run(messy, model, EmbeddingStore(tmp_path), InterventionConfig(cross_modal=True, text_pairs_per_class=3))
    emb = run.embeddings
    assert emb.domain_names == list(messy.domains)
    assert emb.class_names == ["dog", "giraffe", "guitar case"]
    assert len(emb.features) == messy.n_images - 1  # the truncated JPEG only fails when decoded
    reasons = dict(run.skipped)
    assert str(messy.truncated) in reasons and reasons[str(messy.truncated)].startswith("unreadable image")
    assert {name for name in messy.skipped} <= {p.split("/")[-1] for p in reasons}
    assert str(messy.truncated) not in set(emb.paths)
    assert emb.text_features.shape == (8, 3, 32)  # the "ensemble" templates
    names = [p.name for p in emb.pairs]
    assert names == ["image:random", "text:styles", "text:contexts", "cross-modal"]
    assert pipeline.planned_pair_sets(InterventionConfig(cross_modal=True)) == names  # known before embedding
    image_pairs = emb.pair_set("image:random")
    assert len(image_pairs.z) == emb.is_train.sum()  # pairs from training rows only
    np.testing.assert_array_equal(image_pairs.z, emb.features[emb.is_train])
    np.testing.assert_array_equal(image_pairs.domains, emb.domains[emb.is_train])
    assert not np.allclose(image_pairs.z, image_pairs.z_do)
    assert emb.pair_set("text:styles").domains is None and emb.pair_set("text:styles").z.shape == (9, 32)
    assert emb.pair_set("cross-modal").kind == "cross-modal"
    assert run.model_loaded and run.reused == 0


def test_second_run_is_all_cache_and_never_loads_the_model(tmp_path, messy, model, monkeypatch):
    first = _run(messy, model, EmbeddingStore(tmp_path))

    def no_model(cfg):
        raise AssertionError("model loaded on a cache hit")

    monkeypatch.setattr(pipeline, "load_model", no_model)
    second = _run(messy, model, EmbeddingStore(tmp_path))
    assert not second.model_loaded and second.computed == 0 and second.reused == first.computed
    np.testing.assert_array_equal(second.embeddings.features, first.embeddings.features)
    np.testing.assert_array_equal(second.embeddings.text_features, first.embeddings.text_features)
    for a, b in zip(first.embeddings.pairs, second.embeddings.pairs):
        np.testing.assert_array_equal(a.z_do, b.z_do)
    assert second.embeddings.key == first.embeddings.key
    assert second.skipped == first.skipped


def test_chunks_split_per_domain():
    chunks = chunk_indices(np.array(["b", "a", "b", "b", "a"]), 2)
    assert [c.tolist() for c in chunks] == [[0, 2], [3], [1, 4]]


def test_an_empty_image_job_is_an_empty_array_of_the_models_width(tmp_path, model, count_encoded):
    embedder = pipeline._Embedder(model, EmbeddingStore(tmp_path / "store"), None, 256)
    features, failed = embedder.images("nothing", [], np.array([], str), np.array([], str))
    assert features.shape == (0, 32) and features.dtype == np.float32 and failed == {}
    assert count_encoded == []  # nothing went through the model


def test_killed_run_resumes_with_only_the_missing_chunks(tmp_path, messy, model, count_encoded):
    n_images = messy.n_images
    def killer(stage, done, total):
        if stage == "images" and done >= 8:
            raise KeyboardInterrupt  # the user pressed Ctrl-C after two batches

    store = EmbeddingStore(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        _run(messy, model, store, progress=killer, chunk_size=4)
    assert count_encoded == [n_images]
    count_encoded.clear()
    resumed = _run(messy, model, EmbeddingStore(tmp_path / "cache"), chunk_size=4)
    # chunks of 4 per domain: the kill came after 8 images, i.e. 2 finished chunks
    assert count_encoded[0] == n_images - 8
    clean = _run(messy, model, EmbeddingStore(tmp_path / "fresh"))
    np.testing.assert_array_equal(resumed.embeddings.features, clean.embeddings.features)
    np.testing.assert_array_equal(resumed.embeddings.pairs[0].z_do, clean.embeddings.pairs[0].z_do)


def test_corrupt_chunk_is_recomputed_alone(tmp_path, messy, model, count_encoded):
    store = EmbeddingStore(tmp_path)
    first = _run(messy, model, store, InterventionConfig(image=(), text_banks=(), templates="single"))
    victim = next(p for p in sorted(tmp_path.rglob("*.npy")) if np.load(p).shape[0] > 1)
    rows = np.load(victim).shape[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    count_encoded.clear()
    again = _run(messy, model, EmbeddingStore(tmp_path), InterventionConfig(image=(), text_banks=(), templates="single"))
    assert count_encoded == [rows]
    np.testing.assert_array_equal(again.embeddings.features, first.embeddings.features)


def test_pair_set_per_op_subsampled_and_keyed_by_seed(tmp_path, messy, model, count_encoded):
    cfg = InterventionConfig(image=("grayscale", "invert"), random_choice=False, text_banks=(), n_pairs=5,
                             templates="single")
    emb = _run(messy, model, EmbeddingStore(tmp_path), cfg).embeddings
    assert [p.name for p in emb.pairs] == ["image:grayscale", "image:invert"] == pipeline.planned_pair_sets(cfg)
    assert all(len(p.z) == 5 and p.kind == "image" for p in emb.pairs)
    count_encoded.clear()
    reseeded = _run(messy, model, EmbeddingStore(tmp_path), InterventionConfig(
        image=("colour_jitter",), text_banks=(), n_pairs=5, templates="single", seed=1, intervened_val=()))
    assert count_encoded == [5]  # new intervention + seed: new pairs; the plain images are reused
    assert reseeded.embeddings.pairs[0].name == "image:random"


def test_bad_intervention_inputs(tmp_path, messy, model):
    with pytest.raises(KeyError, match="grayscale"):
        _run(messy, model, EmbeddingStore(tmp_path), InterventionConfig(image=("greyscale",)))
    with pytest.raises(ValueError, match="true swaps need the ToyDomains dataset"):
        _run(messy, model, EmbeddingStore(tmp_path), InterventionConfig(true_swaps=("colour",)))


def test_true_swaps_on_toydomains(tmp_path, model):
    from clip_icm.toydomains import generate_toydomains

    root = generate_toydomains(tmp_path / "toy", n_per_class_per_domain=2, image_size=32)
    cfg = InterventionConfig(image=(), text_banks=(), true_swaps=("colour", "style"), templates="single")
    emb = build_embedding_set(DataConfig(str(root)), model, cfg, EmbeddingStore(tmp_path / "c"))
    assert [p.name for p in emb.pairs] == ["true:colour", "true:style"]
    style = emb.pair_set("true:style")
    assert style.kind == "true" and len(style.z) == emb.is_train.sum()
    assert np.abs(style.z - style.z_do).max() > 1e-3
    np.testing.assert_array_equal(style.labels, emb.labels[emb.is_train])  # the class survives the swap
    # a folder with factors gets counterfactual validation rows by default: every validation row,
    # re-rendered with colour and scene re-drawn, kept apart from the pairs
    (check,) = emb.intervened_val
    val = ~emb.is_train
    assert check.name == "counterfactual:colour+background" and check.name not in [p.name for p in emb.pairs]
    np.testing.assert_array_equal(check.z, emb.features[val])
    np.testing.assert_array_equal(check.labels, emb.labels[val])
    np.testing.assert_array_equal(check.domains, emb.domains[val])
    assert np.abs(check.z - check.z_do).max() > 1e-3


def test_a_failed_re_render_is_an_error_naming_its_image_not_a_dropped_pair(tmp_path, model, monkeypatch):
    import clip_icm.toydomains as td
    from clip_icm.backend import ImageDecodeError

    root = td.generate_toydomains(tmp_path / "toy", n_per_class_per_domain=2, image_size=32)
    real, calls = td.render_counterfactual, []

    def fails_once(row, change, seed):  # the third render is a file that is not there: it fails to decode
        calls.append(row)
        return str(tmp_path / "not-rendered.png") if len(calls) == 3 else real(row, change, seed)

    monkeypatch.setattr(td, "render_counterfactual", fails_once)
    cfg = InterventionConfig(image=(), text_banks=(), true_swaps=("colour",), templates="single", intervened_val=())
    with pytest.raises(ImageDecodeError, match="1 image.*could not be decoded"):  # was: a zero row, kept
        embed_dataset(DataConfig(str(root)), model, cfg, EmbeddingStore(tmp_path / "c"))


def test_intervened_validation_and_usual_look_prompts(tmp_path, messy, model):
    from clip_icm.toydomains import generate_toydomains

    plain = _run(messy, model, EmbeddingStore(tmp_path), InterventionConfig(image=("invert",), text_banks=(),
                                                                              templates="single")).embeddings
    assert [c.name for c in plain.intervened_val] == ["val image:random"]  # no factors: the image ops
    assert len(plain.intervened_val[0].z) == int((~plain.is_train).sum())
    none = _run(messy, model, EmbeddingStore(tmp_path), InterventionConfig(image=(), text_banks=(),
                                                                             templates="single")).embeddings
    assert none.intervened_val == []
    with pytest.raises(ValueError, match="unknown intervened validation set.*available: counterfactual, conflict, image"):
        InterventionConfig(intervened_val=("double",))
    with pytest.raises(ValueError, match="needs at least one image intervention"):
        _run(messy, model, EmbeddingStore(tmp_path), InterventionConfig(image=(), intervened_val=("image",)))
    root = generate_toydomains(tmp_path / "toy", n_per_class_per_domain=2, image_size=32)
    emb = build_embedding_set(DataConfig(str(root)), model, InterventionConfig(
        image=(), text_banks=(), templates="single", look_prompts=True), EmbeddingStore(tmp_path / "c"))
    assert set(emb.look_prompts) == set(emb.domain_names)
    for target, text in emb.look_prompts.items():
        assert text.shape == (len(emb.domain_names) - 1, len(emb.class_names), emb.features.shape[1])
    with pytest.raises(ValueError, match="factors.csv"):
        _run(messy, model, EmbeddingStore(tmp_path), InterventionConfig(look_prompts=True))


def test_conflict_sets_take_another_class_usual_look_per_held_out_target(tmp_path, model, monkeypatch):
    from clip_icm import toydomains
    from clip_icm.toydomains import generate_toydomains, load_factors

    root = generate_toydomains(tmp_path / "toy", n_per_class_per_domain=3, image_size=32)
    rendered = []
    real = toydomains.render
    monkeypatch.setattr(toydomains, "render", lambda f, size=32: rendered.append(f) or real(f, size))
    emb = build_embedding_set(DataConfig(str(root)), model, InterventionConfig(
        image=(), text_banks=(), templates="single", intervened_val=("conflict",)), EmbeddingStore(tmp_path / "c"))
    assert [c.name for c in emb.intervened_val] == [f"conflict@{d}" for d in emb.domain_names]
    assert [c.held_out for c in emb.intervened_val] == emb.domain_names
    factors = load_factors(root)
    val = np.flatnonzero(~emb.is_train)
    n_val = len(val)
    for check, target in zip(emb.intervened_val, emb.domain_names):
        np.testing.assert_array_equal(check.labels, emb.labels[val])
        source_train = [factors.loc[str(Path(p).relative_to(root))] for p in emb.paths[emb.is_train & (emb.domains != target)]]
        looks = toydomains.usual_looks(source_train, list(emb.class_names))
        batch = rendered[:n_val]
        del rendered[:n_val]
        assert len(batch) == n_val
        for f in batch:  # every re-render wears the usual look of a class other than its own
            assert any(look == (f.colour, f.background) for c, look in looks.items() if c != f.cls), f


def test_build_embedding_set_is_the_run_embeddings(tmp_path, messy, model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = build_embedding_set(DataConfig(str(messy.root)), model, FEW, EmbeddingStore(tmp_path))
    assert emb.features.shape[1] == 32 and set(emb.domain_names) == set(messy.domains)


def test_strengths_change_the_pairs_and_their_key(tmp_path, messy, model, count_encoded):
    base = InterventionConfig(image=("posterize",), text_banks=(), templates="single", n_pairs=4)
    first = _run(messy, model, EmbeddingStore(tmp_path), base).embeddings
    count_encoded.clear()
    strong = InterventionConfig(image=("posterize",), strengths=(("posterize", (("bits", (1, 1)),)),),
                                text_banks=(), templates="single", n_pairs=4)
    second = _run(messy, model, EmbeddingStore(tmp_path), strong).embeddings
    n_val = int((~second.is_train).sum())
    assert count_encoded == [4, n_val]  # only the new pairs and the new intervened validation rows
    assert not np.allclose(first.pairs[0].z_do, second.pairs[0].z_do)
    with pytest.raises(ValueError, match="bits"):
        _run(messy, model, EmbeddingStore(tmp_path), InterventionConfig(
            image=("posterize",), strengths=(("posterize", (("bits", (0, 9)),)),)))


def test_content_hashes_are_remembered_until_a_file_changes(tmp_path, model, monkeypatch):
    folder = make_messy_domainbed(tmp_path / "data", n_per_class=2)
    cfg = InterventionConfig(image=(), text_banks=(), templates="single")
    first = _run(folder, model, EmbeddingStore(tmp_path / "c"), cfg)
    hashed = []
    real = pipeline.file_hash
    monkeypatch.setattr(pipeline, "file_hash", lambda p: hashed.append(p) or real(p))
    _run(folder, model, EmbeddingStore(tmp_path / "c"), cfg)
    assert hashed == []  # sizes and mtimes unchanged: no file read again
    victim = next(p for p in first.embeddings.paths if p.endswith(".jpg"))
    from PIL import Image

    Image.new("RGB", (32, 32), (255, 0, 0)).save(victim)
    changed = _run(folder, model, EmbeddingStore(tmp_path / "c"), cfg)
    assert hashed == [victim] and changed.computed == 1
    row = list(changed.embeddings.paths).index(victim)
    assert not np.allclose(changed.embeddings.features[row], first.embeddings.features[row])


def test_pairs_carry_classes_and_variant_words_and_the_banks_give_spurious_prompts(tmp_path, messy, model):
    from clip_icm.interventions import make_text_pairs, spurious_prompts

    emb = _run(messy, model, EmbeddingStore(tmp_path), InterventionConfig(cross_modal=True, text_pairs_per_class=3)
               ).embeddings
    image = emb.pair_set("image:random")
    rows = [int(np.flatnonzero((emb.features == z).all(axis=1))[0]) for z in image.z]
    np.testing.assert_array_equal(image.labels, emb.labels[rows])
    text = emb.pair_set("text:styles")
    _, _, classes = make_text_pairs(emb.class_names, ["styles"], 3, 0)
    np.testing.assert_array_equal(text.labels, classes)
    assert set(text.variant_words) <= set(spurious_prompts(["styles"])[1]) and len(set(text.variant_words)) > 1
    assert emb.pair_set("cross-modal").variant_words is not None
    texts, words = spurious_prompts(["styles", "contexts"])
    assert list(emb.spurious.texts) == texts and list(emb.spurious.variant_words) == words
    assert emb.spurious.z.shape == (len(texts), emb.features.shape[1])
    assert emb.templates is not None and len(emb.templates) == len(emb.text_features) == 8


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_demo_world_drawn_in_another_process_is_the_one_drawn_here(tmp_path):
    from clip_icm import toydomains

    process = toydomains.draw_demo_data_elsewhere(tmp_path / "elsewhere")
    here = toydomains.ensure_demo_data(tmp_path / "here")
    assert process is not None and process.wait(timeout=300) == 0
    assert _tree(tmp_path / "elsewhere") == _tree(here)  # every image, factors.csv and recipe.json
    assert toydomains.draw_demo_data_elsewhere(here) is None  # nothing to draw


def test_callers_during_one_drawing_of_the_demo_world_wait_for_the_same_process(tmp_path, monkeypatch):
    """The dashboard starts the drawing on a new server's first page and its embedding pass asks again:
    one drawing, not two racing to rename their folders; a drawing that failed is started afresh."""
    from clip_icm import background, toydomains

    started, real_start = [], background.start

    def start(code, *args, **kwargs):  # a first drawing that runs for a while, then ones that fail
        started.append(real_start("import time; time.sleep(30)" if not started else "raise SystemExit(3)"))
        return started[-1]

    monkeypatch.setattr(background, "start", start)
    first = toydomains.draw_demo_data_elsewhere(tmp_path / "world")
    try:
        assert toydomains.draw_demo_data_elsewhere(tmp_path / "world") is first and len(started) == 1
        assert toydomains.draw_demo_data_elsewhere(tmp_path / "other") is not first  # another world: its own
    finally:
        first.kill()
        first.wait()
    again = toydomains.draw_demo_data_elsewhere(tmp_path / "world")  # the first ended without a world
    assert again is not first and len(started) == 3
    again.wait()


@pytest.mark.parametrize("drawing", ["works", "fails"])
def test_a_missing_demo_world_is_drawn_while_the_model_loads(tmp_path, monkeypatch, model, drawing):
    """With no demo world on disk, embed_dataset draws it in another process while the model loads;
    should that process fail, the world is drawn here instead, and the run is the same."""
    from clip_icm import background, toydomains

    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path))
    draw = toydomains.draw_demo_data_elsewhere
    if drawing == "fails":
        monkeypatch.setattr(toydomains, "draw_demo_data_elsewhere",
                            lambda root=None: background.start("raise SystemExit(3)"))
    stages = []
    # 8 images a domain hold none out for validation: no intervened validation set, and no crash
    run = embed_dataset(DataConfig(max_per_domain=8), model, InterventionConfig(image=(), text_banks=()),
                        progress=lambda stage, done, total: stages.append((stage, done)))
    assert stages[:1] == [(pipeline.DRAWING_STAGE, 0)] and (pipeline.DRAWING_STAGE, 1) in stages
    assert run.scan.root == str(tmp_path / "toydomains") and len(run.embeddings.labels) == 32
    assert draw() is None  # the world is there now
