"""The package's architecture, checked: every import points down the layers, and no modules import each other in a
circle (imports inside functions included: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import influence_distillation.method

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "influence_distillation"
ROOT = "influence_distillation"
# Bottom to top. A module may import its own layer (without a circle) and the layers below it, never above.
LAYERS = [("errors", "version", "stats", "lazy"), ("options",), ("config", "artifacts"), ("data",), ("model",), ("method",),
          ("run",), ("report",), ("evaluation",), ("cli", "__init__", "__main__")]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def package_sources() -> dict[str, str]:
    """Module name → source, for every module of the package."""
    sources = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        sources[".".join((ROOT, *parts)).removesuffix(".__init__")] = path.read_text()
    return sources


def graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module → the package's modules it imports, anywhere in its file: `from X import y` counts as X.y when that
    is a module, else as X."""
    edges = {}
    for module, source in sources.items():
        found = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith(ROOT)}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(ROOT):
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in sources else node.module)
        edges[module] = found - {module}
    return edges


def layer(module: str) -> int:
    if module == ROOT:
        return RANK["__init__"]
    part = module.split(".")[1]
    assert part in RANK, f"{module}: its top-level name {part!r} is in no layer of tests/test_imports.py"
    return RANK[part]


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return [f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
            for module, targets in sorted(edges.items()) for target in sorted(targets) if layer(target) > layer(module)]


def circles(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                found.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return found


def face_bypasses(sources: dict[str, str], exported: set[str]) -> list[str]:
    """Imports of `method/` from the layers above it that do not go through its face (`method/__init__.py`): from one
    of its modules, or of a name the face does not export."""
    face = f"{ROOT}.method"
    found = []
    for module, source in sorted(sources.items()):
        if module != ROOT and layer(module) <= RANK["method"]:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                found += [f"{module} imports {alias.name}" for alias in node.names
                          if alias.name.startswith(f"{face}.")]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"{face}."):
                found.append(f"{module} imports from {node.module}, not from {face}")
            elif isinstance(node, ast.ImportFrom) and node.module == face:
                found += [f"{module} imports {alias.name}, which {face} does not export" for alias in node.names
                          if alias.name not in exported]
    return found


def context_writes(sources: dict[str, str]) -> list[str]:
    """Assignments to a field of a run's context (`run.x = ...`, `run.x[...] = ...`) outside run/context.py: the
    stages hand back what they found in their results instead."""
    found = []
    for module, source in sorted(sources.items()):
        if module == f"{ROOT}.run.context":
            continue
        for node in ast.walk(ast.parse(source)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                while isinstance(target, ast.Subscript):
                    target = target.value
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id == "run":
                    found.append(f"{module}:{node.lineno} writes run.{target.attr}")
    return found


def test_every_import_points_down_the_layers():
    assert not (problems := upward_imports(graph(package_sources()))), "\n".join(problems)


def test_no_circle_of_imports():
    assert not (problems := circles(graph(package_sources()))), "\n".join(problems)


def test_the_layers_above_method_use_its_face():
    exported = set(influence_distillation.method.__all__)
    assert not (problems := face_bypasses(package_sources(), exported)), "\n".join(problems)


def test_every_name_the_face_exports_exists():
    for name in influence_distillation.method.__all__:
        assert getattr(influence_distillation.method, name) is not None, name


def test_the_face_check_finds_a_planted_bypass():
    planted = {f"{ROOT}.run.a": "from influence_distillation.method.stages import x\n",
               f"{ROOT}.run.b": "from influence_distillation.method import select, hidden\n",
               f"{ROOT}.report.c": "def f():\n    import influence_distillation.method.selection\n",
               f"{ROOT}.method.d": "from influence_distillation.method.selection import select\n"}
    assert face_bypasses(planted, {"select"}) == [
        f"{ROOT}.report.c imports {ROOT}.method.selection",
        f"{ROOT}.run.a imports from {ROOT}.method.stages, not from {ROOT}.method",
        f"{ROOT}.run.b imports hidden, which {ROOT}.method does not export"]


def test_only_the_run_context_writes_its_fields():
    assert not (problems := context_writes(package_sources())), "\n".join(problems)
    planted = {f"{ROOT}.run.a": "def f(run):\n    run.details = {}\n    run.details['x'] += 1\n    run.y.z = 2\n"}
    assert context_writes(planted) == [f"{ROOT}.run.a:2 writes run.details", f"{ROOT}.run.a:3 writes run.details"]


def test_no_module_imports_the_package_root():
    """The root re-exports the API for users; inside the package it would be an import from the top."""
    edges = graph(package_sources())
    assert not [module for module, targets in edges.items() if ROOT in targets and module != f"{ROOT}.__main__"]


def test_the_checks_find_a_planted_upward_import_and_circle():
    planted = {f"{ROOT}.data.a": "def f():\n    from influence_distillation.run import b\n",
               f"{ROOT}.run.b": "from influence_distillation.run.c import x\n",
               f"{ROOT}.run.c": "import influence_distillation.run.b\nx = 1\n"}
    edges = graph(planted)
    assert edges[f"{ROOT}.data.a"] == {f"{ROOT}.run.b"}
    assert upward_imports(edges) == [f"{ROOT}.data.a (layer 3) imports {ROOT}.run.b (layer 6)"]
    assert circles(edges) == [f"{ROOT}.run.b -> {ROOT}.run.c -> {ROOT}.run.b"]


def test_no_module_over_400_lines_and_no_function_over_80():
    too_long = []
    for module, source in package_sources().items():
        if (lines := len(source.splitlines())) > 400:
            too_long.append(f"{module}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                too_long.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "\n".join(too_long)
