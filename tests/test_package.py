"""The package's public API: every name resolves, and importing it (or --help) stays light."""
import subprocess
import sys
from pathlib import Path

import clip_icm

ROOT = Path(__file__).resolve().parent.parent


def test_every_public_name_resolves_to_its_module():
    for name in clip_icm.__all__:
        value = getattr(clip_icm, name)
        module = getattr(value, "__module__", None)
        assert module is None or module.startswith("clip_icm"), (name, module)
    assert set(clip_icm.__all__) <= set(dir(clip_icm))


def test_an_unknown_name_is_an_attribute_error():
    try:
        clip_icm.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("an unknown name resolved")


def test_import_and_help_do_not_load_sklearn_pandas_or_torch():
    check = ("import sys, runpy; sys.argv = ['clip_icm', '--help']\n"
             "try:\n    runpy.run_module('clip_icm', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "heavy = [m for m in ('sklearn', 'pandas', 'torch', 'open_clip') if m in sys.modules]\n"
             "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "playground" in result.stdout and "evaluate" in result.stdout
