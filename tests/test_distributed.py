"""The embedding pass on a local Ray (issue 21, items 1-2): the same keys and vectors as the local
path, entries the local store serves unchanged, and a killed run resumed with only the missing
chunks. Needs the [distributed] extra (ray)."""
import builtins
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import clip_icm.pipeline as pipeline
from clip_icm import cli
from clip_icm.distributed import RayEncoder
from clip_icm.pipeline import DataConfig, InterventionConfig, embed_dataset
from clip_icm.store import EmbeddingStore
from tests.folders import make_messy_domainbed

try:
    import ray
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="the [distributed] extra (ray) is not installed: "
                               "pip install '.[distributed]'")

PAIRS = InterventionConfig(image=("grayscale", "gaussian_blur"), text_banks=("styles",), text_pairs_per_class=2,
                           templates="single")
IMAGES_ONLY = InterventionConfig(image=(), text_banks=(), templates="single", intervened_val=())


@pytest.fixture(scope="module")
def local_ray():
    if ray is None:
        pytest.skip("the [distributed] extra (ray) is not installed: pip install '.[distributed]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_messy_domainbed(tmp_path_factory.mktemp("messy"), n_per_class=4, truncated=True)


def _run(folder, model, store, pairs=PAIRS, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the messy folder lacks a class on purpose
        return embed_dataset(DataConfig(str(folder.root)), model, pairs, store, chunk_size=4, **kw)


def _keys(root: Path) -> set[str]:
    return {p.name for p in root.glob("??/*.json")}


@needs_ray
def test_ray_gives_the_local_keys_and_vectors_which_the_local_store_serves(tmp_path, folder, model, local_ray,
                                                                          monkeypatch):
    local = _run(folder, model, EmbeddingStore(tmp_path / "local"))
    on_ray = _run(folder, model, EmbeddingStore(tmp_path / "ray"), engine=RayEncoder)
    assert _keys(tmp_path / "ray") == _keys(tmp_path / "local") and on_ray.computed == local.computed
    a, b = local.embeddings, on_ray.embeddings
    assert [p.name for p in a.pairs] == [p.name for p in b.pairs] and len(a.pairs) > 0
    differences = [np.abs(a.features - b.features).max()]
    differences += [np.abs(p.z_do - q.z_do).max() for p, q in zip(a.pairs, b.pairs)]
    print(f"max abs difference, local vs Ray: {max(differences):.2e}")
    assert max(differences) <= 2e-3  # float16 storage: a rounding step of vectors near 1
    assert on_ray.skipped == local.skipped  # the truncated JPEG fails on a Ray task as it does here

    def no_model(cfg):
        raise AssertionError("model loaded on a cache hit")

    monkeypatch.setattr(pipeline, "load_model", no_model)
    served = _run(folder, model, EmbeddingStore(tmp_path / "ray"))  # the local path, on what Ray wrote
    assert not served.model_loaded and served.computed == 0 and served.reused == on_ray.computed
    np.testing.assert_array_equal(served.embeddings.features, on_ray.embeddings.features)


@needs_ray
def test_a_killed_ray_run_resumes_with_only_the_missing_chunks(tmp_path, folder, model, local_ray, monkeypatch):
    sent = []
    real = RayEncoder.iter_encode

    def counting(self, images, *args, **kwargs):
        sent.append(len(images))
        yield from real(self, images, *args, **kwargs)

    monkeypatch.setattr(RayEncoder, "iter_encode", counting)

    def killer(stage, done, total):
        if stage == "images" and done >= 8:
            raise KeyboardInterrupt  # after two chunks of 4

    with pytest.raises(KeyboardInterrupt):
        _run(folder, model, EmbeddingStore(tmp_path), IMAGES_ONLY, progress=killer, engine=RayEncoder)
    assert sent == [folder.n_images]
    sent.clear()
    resumed = _run(folder, model, EmbeddingStore(tmp_path), IMAGES_ONLY, engine=RayEncoder)
    assert sent[0] == folder.n_images - 8  # the two chunks written before the kill are not sent again
    clean = _run(folder, model, EmbeddingStore(tmp_path / "clean"), IMAGES_ONLY)
    np.testing.assert_allclose(resumed.embeddings.features, clean.embeddings.features, atol=2e-3)


def test_engine_ray_without_the_extra_is_one_line_before_the_scan(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError, as without the extra
    assert cli.main(["embed", "--engine", "ray", "--root", str(tmp_path / "nowhere"), "--cache", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --root {!r} is not a folder".format(str(tmp_path / "nowhere")))  # names first
    assert cli.main(["embed", "--engine", "ray", "--cache", str(tmp_path / "c"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == ("error: --engine ray: the [distributed] extra is not installed (ray); "
                                               "pip install '.[distributed]'")
    assert not (tmp_path / "c" / "toydomains").exists()  # before the demo world was drawn
    assert cli.main(["embed", "--address", "auto", "--cache", str(tmp_path / "c"), "--quiet"]) == 1
    assert "--address is for --engine ray" in capsys.readouterr().err


@needs_ray
def test_ray_datas_progress_bars_leave_print_alone(monkeypatch):
    """Ray Data's progress bars (ray.experimental.tqdm_ray) replace builtins.print for good unless told not
    to; numba then cannot compile any function that prints: a UMAP map large enough for pynndescent failed
    after a Ray run in the same process ("Untyped global name 'print'")."""
    from clip_icm import distributed

    monkeypatch.delenv("RAY_TQDM_PATCH_PRINT", raising=False)
    original = builtins.print
    distributed.ray_available()  # what every Ray path calls first
    from ray.experimental import tqdm_ray

    monkeypatch.setattr(tqdm_ray, "_manager", None)  # as in a process that has shown no bar yet
    try:
        tqdm_ray.instance()
        assert builtins.print is original and isinstance(builtins.print, types.BuiltinFunctionType)
    finally:
        builtins.print = original
