"""The seed the dashboard ships for the bundled demo (dashboard/demo_store.py) is exactly what a fresh
clone's first visit computes: the same keys, the same bytes. A change that moves the demo's keys or
numbers fails here until the seed is written again."""
from dashboard import demo_store

AGAIN = "the demo's first views compute other entries than dashboard/demo-store/ holds: run python -m dashboard.demo_store"


def test_the_seed_equals_a_fresh_computation_of_the_demos_first_views(tmp_path):
    demo_store.compute(tmp_path)
    fresh, seed = demo_store.entries(tmp_path), demo_store.entries(demo_store.FOLDER)
    kinds = {manifest["meta"]["kind"] for manifest in seed.values()}
    assert kinds == {"embeddings", "pairs", "layouts", "kept results"}  # of every first view
    assert sorted(fresh) == sorted(seed), AGAIN
    for key, manifest in seed.items():
        assert (fresh[key]["sha256"], fresh[key]["meta_sha256"]) == (manifest["sha256"], manifest["meta_sha256"]), \
            f"{key} ({manifest['meta'].get('kind')}): {AGAIN}"


def test_the_seed_is_off_when_the_environment_says_so(monkeypatch):
    monkeypatch.setenv("CLIP_ICM_DEMO_STORE", "off")
    assert demo_store.folder() is None
    monkeypatch.setenv("CLIP_ICM_DEMO_STORE", "")
    assert demo_store.folder() == demo_store.FOLDER
