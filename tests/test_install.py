"""`pip install .` (not editable) gives a package that runs the demo from any folder: toy-clip is
found as package data, the demo and the cache go to $CLIP_ICM_CACHE, and nothing resolves to the
checkout. Offline: the install venv sees the packages of the environment that runs the tests
(torch & co., and its setuptools), and pip installs the project alone (--no-deps) with that
setuptools (--no-build-isolation).

Stdlib only at import: the venv test imports this module in a bare venv."""
import json
import os
import re
import shutil
import site
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


def _python_of(venv: Path) -> str:
    return str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")


def _site_folder(python: str, cwd: Path) -> Path:
    return Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd).strip())


def venv_seeing_this_environment(venv: Path) -> str:
    """A new venv that imports what this interpreter's environment holds (its site folders, through
    a .pth file), whatever that environment is: the system Python, a venv or conda. Returns its python.

    Not ``venv --system-site-packages``: made from inside a venv, that sees the *base* interpreter's
    site-packages (say setuptools 65 without bdist_wheel), not the active venv's, and the install
    then fails in the virtual environment most users test in."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], venv.parent)
    python = _python_of(venv)
    folders = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (_site_folder(python, venv.parent) / "_environment_of_the_tests.pth").write_text("\n".join(folders) + "\n")
    return python


def test_the_install_venv_sees_the_packages_of_a_venv_that_runs_the_tests(tmp_path):
    """Run from inside a venv (as a user runs the suite), the install venv must import that venv's
    packages. A bare venv holding one marker module stands for the user's venv."""
    users = tmp_path / "users-venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(users)], tmp_path)
    users_python = _python_of(users)
    (_site_folder(users_python, tmp_path) / "only_in_the_users_venv.py").write_text("MARK = 'users venv'\n")

    made = _run([users_python, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                 "from tests.test_install import venv_seeing_this_environment as make; "
                 "print(make(__import__('pathlib').Path(sys.argv[2])))", str(ROOT), str(tmp_path / "install")],
                tmp_path).strip()
    assert _run([made, "-c", "import only_in_the_users_venv as m; print(m.MARK)"], tmp_path).strip() == "users venv"


def test_a_non_editable_install_runs_the_demo_from_another_folder(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=_not_sources)
    python = venv_seeing_this_environment(tmp_path / "venv")
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
    site_of_the_install = (tmp_path / "venv").resolve()
    shipped = {f for f in where["files"] if f.startswith("clip_icm/")}
    # every module ships, those of subpackages too
    assert shipped == {str(p.relative_to(ROOT)) for p in (ROOT / "clip_icm").rglob("*.py")}
    assert site_of_the_install in Path(where["module"]).resolve().parents, where["module"]  # not the checkout
    assert site_of_the_install in Path(where["toy_clip"]).resolve().parents
    assert (Path(where["toy_clip"]) / "open_clip_model.safetensors").is_file()
    core = [r for r in where["requires"] if "extra ==" not in r]
    assert "torch" in " ".join(core) and not [r for r in core if r.startswith(DASHBOARD_ONLY)], core
    assert any(r.startswith("streamlit") and 'extra == "dashboard"' in r for r in where["requires"])

    out = _run([python, "-m", "clip_icm", *EVALUATE], elsewhere, env)
    # the model choice weighs the augmentation probe too, so its column joins the asked-for ICM
    assert re.search(r"^method\s+CLIP\s+ICM\s+Augmentation\s*$", out, re.M), out
    assert re.search(r"^cartoon\s+16\s+8\s+1\s+(\d\.\d{3}\s+){5}\d\.\d{3}\s*$", out, re.M), out
    assert re.search(r"^cartoon: deploy ", out, re.M), out
    assert (tmp_path / "cache" / "toydomains" / "factors.csv").is_file()  # the demo followed $CLIP_ICM_CACHE
    assert not list(elsewhere.iterdir())  # nothing written where it ran
