"""`pip install .` (not editable) gives a package that runs the demo from any folder: toy-clip is
found as package data, the demo and the cache go to $CLIP_ICM_CACHE, and nothing resolves to the
checkout. Offline: the venv sees this machine's torch & co. (--system-site-packages), pip
installs the project alone (--no-deps) with the machine's setuptools (--no-build-isolation)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Small and fast: one target, 16 images a domain, ICM at a fixed K on the demo's true pairs.
EVALUATE = ["evaluate", "--max-per-domain", "16", "--target", "cartoon", "--methods", "icm", "--select", "none",
            "--interventions", "none", "--text-banks", "none", "--intervened-val", "none",
            "--templates", "single", "--k", "8", "--quiet"]
DASHBOARD_ONLY = ("streamlit", "plotly", "umap-learn")


def _not_sources(folder, names):
    """What the copy of the checkout leaves out: git's and Python's own files, earlier builds, and
    the caches older versions wrote into data/ (gigabytes on a used checkout)."""
    skip = {".git", "__pycache__", ".pytest_cache", ".venv", "build"} | ({"data"} if Path(folder) == ROOT else set())
    return {name for name in names if name in skip or name.endswith(".egg-info")}


def _run(args, cwd, env=None, timeout=300):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[:4]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_a_non_editable_install_runs_the_demo_from_another_folder(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=_not_sources)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path)
    python = str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(source)],
         tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(CLIP_ICM_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    where = json.loads(_run([python, "-c", (
        "import json, importlib.metadata as m, clip_icm, clip_icm.resources as r\n"
        "print(json.dumps({'module': clip_icm.__file__, 'toy_clip': str(r.TOY_CLIP_DIR),\n"
        "                  'requires': m.requires('clip-icm-explorer'),\n"
        "                  'files': [str(f) for f in m.files('clip-icm-explorer') if f.suffix == '.py']}))")],
        elsewhere, env))
    site = venv.resolve()
    shipped = {f for f in where["files"] if f.startswith("clip_icm/")}
    # every module ships, those of subpackages too
    assert shipped == {str(p.relative_to(ROOT)) for p in (ROOT / "clip_icm").rglob("*.py")}
    assert site in Path(where["module"]).resolve().parents, where["module"]  # not the checkout
    assert site in Path(where["toy_clip"]).resolve().parents
    assert (Path(where["toy_clip"]) / "open_clip_model.safetensors").is_file()
    core = [r for r in where["requires"] if "extra ==" not in r]
    assert "torch" in " ".join(core) and not [r for r in core if r.startswith(DASHBOARD_ONLY)], core
    assert any(r.startswith("streamlit") and 'extra == "dashboard"' in r for r in where["requires"])

    out = _run([python, "-m", "clip_icm", *EVALUATE], elsewhere, env)
    assert re.search(r"^method\s+CLIP\s+ICM\s*$", out, re.M), out
    assert re.search(r"^cartoon\s+16\s+8\s+1\s+(\d\.\d{3}\s+){3}\d\.\d{3}\s*$", out, re.M), out
    assert (tmp_path / "cache" / "toydomains" / "factors.csv").is_file()  # the demo followed $CLIP_ICM_CACHE
    assert not list(elsewhere.iterdir())  # nothing written where it ran
