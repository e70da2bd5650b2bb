"""Progress that tells the truth (issue 21, item 5): a stage's first report counts the items served
from the cache (pipeline.Progress); the CLI and the dashboard say "served from cache" for those and
give rates and times left only for items computed (the dashboard's StageProgress: tests/test_dashboard.py)."""
import re
import warnings

import pytest

from clip_icm import cli
from clip_icm.pipeline import DataConfig, InterventionConfig, embed_dataset
from clip_icm.store import EmbeddingStore
from tests.folders import make_messy_domainbed

FEW = InterventionConfig(image=("grayscale",), text_banks=("styles",), text_pairs_per_class=2, templates="single")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_messy_domainbed(tmp_path_factory.mktemp("messy"), n_per_class=4)


def _reports(folder, model, store, **kw) -> dict[str, list[tuple[int, int]]]:
    """{stage: [(done, total), ...]} of one embedding pass."""
    seen: dict[str, list[tuple[int, int]]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the messy folder lacks a class on purpose
        embed_dataset(DataConfig(str(folder.root)), model, FEW, store,
                      progress=lambda stage, done, total: seen.setdefault(stage, []).append((done, total)), **kw)
    return seen


def test_a_warm_pass_reports_every_stage_once_as_served_from_the_cache(tmp_path, folder, model):
    cold = _reports(folder, model, EmbeddingStore(tmp_path))
    assert cold["images"][0] == (0, folder.n_images) and cold["images"][-1] == (folder.n_images,) * 2
    assert cold["hash images"][0][0] == 0  # nothing remembered on a first pass
    warm = _reports(folder, model, EmbeddingStore(tmp_path))
    assert set(warm) == set(cold)  # text stages served from the store are reported too
    for stage, reports in warm.items():
        done, total = reports[0]
        assert len(reports) == 1 and done == total > 0, (stage, reports)


def test_a_resumed_pass_reports_the_finished_chunks_first(tmp_path, folder, model):
    def killer(stage, done, total):
        if stage == "images" and done >= 8:
            raise KeyboardInterrupt  # after two chunks of 4

    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embed_dataset(DataConfig(str(folder.root)), model, FEW, EmbeddingStore(tmp_path), killer, chunk_size=4)
    resumed = _reports(folder, model, EmbeddingStore(tmp_path), chunk_size=4)
    assert resumed["images"][0] == (8, folder.n_images)
    assert resumed["images"][-1] == (folder.n_images,) * 2


def test_cli_bars_say_served_from_cache_and_give_no_rate_for_it(capsys):
    bars = cli._Bars(enabled=True)
    bars("hash images", 300_000, 300_000)
    bars("images", 4, 10)  # 4 from the store, none computed yet
    first = capsys.readouterr().err
    bars("images", 10, 10)
    bars.close()
    assert "hash images: served from cache (300,000 items)" in first
    cached_line = next(part for part in re.split(r"[\r\n]", first) if "hash images" in part)
    assert "/s" not in cached_line and "<" not in cached_line  # no rate, no time left
    partial = next(part for part in re.split(r"[\r\n]", first) if "images (4 served" in part)
    assert "?item/s" in partial  # the 4 served are not a rate: none is known before an item is computed
    assert "10/10" in capsys.readouterr().err


def test_cli_bars_stay_silent_when_quiet(capsys):
    bars = cli._Bars(enabled=False)
    bars("images", 10, 10)
    assert capsys.readouterr().err == ""
