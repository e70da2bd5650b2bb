"""Where the package reads its shipped files and writes its cache (never inside itself)."""
from pathlib import Path

import pytest

from clip_icm import resources


def test_toy_clip_ships_inside_the_package():
    assert resources.TOY_CLIP_DIR.parent == Path(resources.__file__).resolve().parent
    assert (resources.TOY_CLIP_DIR / "open_clip_config.json").is_file()
    assert (resources.TOY_CLIP_DIR / "open_clip_model.safetensors").is_file()


def test_cache_variable_moves_the_store_and_the_demo_together(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path / "c"))
    assert resources.cache_dir() == tmp_path / "c"
    assert resources.demo_dir() == tmp_path / "c" / "toydomains"


def test_an_empty_cache_variable_counts_as_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIP_ICM_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(resources.sys, "platform", "linux")
    assert resources.cache_dir() == tmp_path / "xdg" / "clip-icm"


@pytest.mark.parametrize("platform, expected", [
    ("linux", Path("home", ".cache")),
    ("darwin", Path("home", "Library", "Caches")),
    ("win32", Path("local")),
])
def test_user_cache_home_follows_the_platform(monkeypatch, tmp_path, platform, expected):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    monkeypatch.setattr(resources.Path, "home", staticmethod(lambda: tmp_path / "home"))
    monkeypatch.setattr(resources.sys, "platform", platform)
    assert resources.user_cache_home() == tmp_path / expected
