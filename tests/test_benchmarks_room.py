"""The benchmarks room (`benchmarks/`): every script reaches the library through its public API only (the faces'
`__all__`, the config dataclasses, the rank statistics, the CLI), the index in benchmarks/README.md names every script
there, and what gpu_check.sh runs exists."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENV

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PACKAGE = "influence_distillation"
# The public modules: the faces, whose `__all__` lists what may be imported from them, and modules whose every name
# that does not start with an underscore is public.
FACES = (PACKAGE, f"{PACKAGE}.method", f"{PACKAGE}.run", f"{PACKAGE}.evaluation")
OPEN_MODULES = (f"{PACKAGE}.config", f"{PACKAGE}.stats")


def public_api() -> dict[str, set[str] | None]:
    """Public module → the names it exports (None: every name without a leading underscore)."""
    return {**{face: set(importlib.import_module(face).__all__) for face in FACES},
            **dict.fromkeys(OPEN_MODULES)}


def scripts() -> dict[str, str]:
    """File name → source, for every Python file of benchmarks/."""
    return {path.name: path.read_text() for path in sorted(BENCHMARKS.glob("*.py"))}


def non_public_imports(sources: dict[str, str], public: dict[str, set[str] | None]) -> list[str]:
    """Imports of the package, anywhere in a file (inside functions too), that do not go through a public module."""
    found = []
    for name, source in sorted(sources.items()):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                found += [f"{name}:{node.lineno} imports {alias.name}, not a public module" for alias in node.names
                          if alias.name.split(".")[0] == PACKAGE and alias.name not in public]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
                if node.module not in public:
                    found.append(f"{name}:{node.lineno} imports from {node.module}, not a public module")
                    continue
                exported = public[node.module]
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in public:  # a face imported as a name of its package
                        continue
                    if alias.name.startswith("_") or (exported is not None and alias.name not in exported):
                        found.append(f"{name}:{node.lineno} imports {alias.name}, which {node.module} does not "
                                     "export")
    return found


def test_every_benchmark_script_uses_the_public_api():
    assert not (problems := non_public_imports(scripts(), public_api())), "\n".join(problems)


def test_the_check_finds_planted_non_public_imports():
    public = {PACKAGE: {"run_selection"}, f"{PACKAGE}.method": {"select"}, f"{PACKAGE}.config": None}
    planted = {"a.py": "from influence_distillation.method.embeddings import jvp_outputs\n",
               "b.py": "def f():\n    from influence_distillation.method import hidden, select\n",
               "c.py": "import influence_distillation.run.estimates\n",
               "d.py": "from influence_distillation.config import _private, SelectConfig\n",
               "e.py": "import influence_distillation\nfrom influence_distillation import method, run_selection\n"
                       "import influence_distillation.method as face\nimport json\n"}
    assert non_public_imports(planted, public) == [
        "a.py:1 imports from influence_distillation.method.embeddings, not a public module",
        "b.py:2 imports hidden, which influence_distillation.method does not export",
        "c.py:1 imports influence_distillation.run.estimates, not a public module",
        "d.py:1 imports _private, which influence_distillation.config does not export"]


def test_every_name_the_faces_export_exists():
    for face, names in public_api().items():
        module = importlib.import_module(face)
        for name in names or ():
            assert getattr(module, name) is not None, f"{face}.{name}"


def test_the_index_names_every_script_and_only_those():
    """benchmarks/README.md has one row a script (its first cell the file name), for every script there is."""
    rows = re.findall(r"^\| `([^`]+)` \|", (BENCHMARKS / "README.md").read_text(), re.MULTILINE)
    present = sorted(path.name for path in BENCHMARKS.iterdir() if path.suffix in (".py", ".sh"))
    assert sorted(rows) == present


def test_what_gpu_check_runs_exists():
    """gpu_check.sh stays ready for a GPU session: the scripts it runs are here, and the tests it deselects by name
    (those needing packages a GPU machine lacks) still exist, or it would run them and fail there."""
    text = (BENCHMARKS / "gpu_check.sh").read_text()
    for script in set(re.findall(r"benchmarks/([a-z_]+\.py)", text)):
        assert (BENCHMARKS / script).is_file(), script
    deselected = re.findall(r"--deselect \"?(tests/[^\s\")]+)", text)
    assert len(deselected) >= 4
    for node in deselected:
        path, _, test = node.partition("::")
        assert (ROOT / path).is_file(), node
        if test:
            assert f"def {test.split('[')[0]}(" in (ROOT / path).read_text(), node


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(set(scripts()) - {"common.py"}))
def test_every_script_answers_help(script):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                            env=ENV, timeout=300, cwd=ROOT)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
