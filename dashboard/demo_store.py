"""The bundled demo's first views, computed ahead: a read-only seed for the dashboard's store.

A cold start of the demo otherwise embeds 4,608 images (re-rendering 2,304 of them), chooses K and λ,
fits and lays out its maps: 25-30 s of both cores on a 2-core machine (bench/RESULTS.md). The
entries in ``demo-store/`` are exactly what that computes, under the same content keys (model
checkpoint, image contents, settings: :func:`clip_icm.store.make_key`), for every step of the Story
and the Explorer's first page. The dashboard's store reads them where its own folder misses a key
(``EmbeddingStore(seed=...)``) and copies them in; any other data, model or setting misses them and
is computed as before. The demo's images are still drawn on the user's machine: their hashes are
part of every key.

tests/test_demo_store.py computes the views afresh and compares every entry byte for byte; when the
code has moved on (new keys or new numbers) it fails and says to run

    python -m dashboard.demo_store      # rewrites dashboard/demo-store/ (a minute or two)

``CLIP_ICM_DEMO_STORE=off`` turns the seed off, e.g. to measure the cold path it replaces.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDER = Path(__file__).with_name("demo-store")
OFF = ("off", "0", "no", "false")

# Every view a first visit opens: the Story's steps (its first page, "/") and the Explorer. Run in a
# fresh process, so that no Streamlit cache or layout of this one leaks in.
_VIEWS_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from streamlit.testing.v1 import AppTest
from clip_icm import service
from dashboard import texts

service.layout_worker().max_speculative = 0  # what they lay out depends on timing; a slider move asks anyway
service.choice_worker().max_speculative = 0  # the model choices in the page's run: every one of them stored
views = [{{"page": "story", "step": str(step)}} for step in range(1, len(texts.STORY_STEPS) + 1)]
for params in views + [{{"page": "explorer"}}]:
    at = AppTest.from_file({app!r}, default_timeout=900)
    at.query_params.update(params)
    at.run()
    if at.exception or at.error:
        sys.exit(f"{{params}}: {{[e.value for e in [*at.exception, *at.error]]}}")
    assert service.layout_worker().wait_idle(900), "layouts still pending after 900 s"
    at.run()  # what the page's polling draws once the layouts are done (it may start more)
    assert service.layout_worker().wait_idle(900), "layouts still pending after 900 s"
"""


def folder() -> Path | None:
    """The seed the dashboard's store reads; None where ``$CLIP_ICM_DEMO_STORE`` turns it off."""
    return None if os.environ.get("CLIP_ICM_DEMO_STORE", "").strip().lower() in OFF else FOLDER


def compute(cache: Path) -> None:
    """Open every first view of the demo with ``cache`` (empty) as the store and the seed off: the
    entries a fresh clone's first visit computes, written into ``cache``."""
    script = _VIEWS_SCRIPT.format(root=str(ROOT), app=str(ROOT / "dashboard" / "app.py"))
    env = {**os.environ, "CLIP_ICM_CACHE": str(cache), "CLIP_ICM_DEMO_STORE": "off"}
    subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=True)


def entries(store_root: Path) -> dict[str, dict]:
    """Every entry of a store folder: key -> its manifest (which holds the data's and meta's checksums)."""
    found = {}
    for manifest in sorted(store_root.glob("[0-9a-f][0-9a-f]/*.json")):
        content = json.loads(manifest.read_text())
        found[content["key"]] = content
    return found


def write(out: Path = FOLDER) -> int:
    """Compute the demo's first views and put their entries (and nothing else of the cache: no
    hashes memo, numba cache or drawn world) into ``out``, replacing what it held; their number."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        compute(cache)
        staged = out.with_name(out.name + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        for key, manifest in entries(cache).items():
            (staged / key[:2]).mkdir(parents=True, exist_ok=True)
            for name in (f"{key}.json", manifest["data"]):
                shutil.copyfile(cache / key[:2] / name, staged / key[:2] / name)
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
    return len(entries(out))


if __name__ == "__main__":
    n = write()
    size = sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file())
    print(f"{n} entries, {size / 1e6:.1f} MB, in {FOLDER}")
