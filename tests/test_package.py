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


def _imported_modules(path: Path) -> set[str]:
    """The clip_icm modules a source file imports, at the top or inside a function."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "clip_icm":
            names.update(f"clip_icm.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clip_icm."):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("clip_icm."))
    return names


def test_no_module_imports_one_that_imports_it_back():
    package = ROOT / "clip_icm"
    modules = {f"clip_icm.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    graph = {m: _imported_modules(package / f"{m.split('.')[1]}.py") & modules - {m} for m in modules}
    for start in modules:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            assert module != start, f"{start} imports itself back through its imports"
            if module not in seen:
                seen.add(module)
                todo += graph[module]


def test_the_cycle_check_sees_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from clip_icm import store\n\ndef f():\n    from clip_icm.backend import x\n")
    assert _imported_modules(source) == {"clip_icm.store", "clip_icm.backend"}
