"""The import structure: folders stack in layers, no import cycle between files or folders, no script imports a script.

Every import statement of every module (at module level or inside a function) is read with ``ast``; nothing is
listed by hand but the layer order itself:

    utils  <  dataset, models  <  dataset.synthetic  <  cclm  <  tasks  <  scripts (the repository root's *.py)
    tools, bench: leaves above everything but the scripts; neither imports the other.

A module may import its own folder and the layers below it; dataset and models never import each other.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "dataset", "models", "cclm", "tasks", "tools", "bench")
RANK = {"utils": 0, "dataset": 1, "models": 1, "dataset.synthetic": 2, "cclm": 3, "tasks": 4, "tools": 5,
        "bench": 5, "scripts": 6}
NEVER = {("dataset", "models"), ("models", "dataset"), ("tools", "bench"), ("bench", "tools")}


def our_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of ours (packages and the root's scripts)."""
    found = {path.stem: path for path in ROOT.glob("*.py")}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = our_modules()


def unit(module: str) -> str:
    """The layer unit of a module: its top-level folder, dataset.synthetic, or 'scripts'."""
    if module.startswith("dataset.synthetic"):
        return "dataset.synthetic"
    top = module.split(".")[0]
    return top if top in PACKAGES else "scripts"


def _resolve(name: str, imported: str | None) -> str | None:
    """The module of ours that ``from name import imported`` (or ``import name``) reaches, or None."""
    if imported and f"{name}.{imported}" in MODULES:
        return f"{name}.{imported}"
    parts = name.split(".")
    while parts:  # ``import a.b.c`` of a package path: the longest module of ours
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str) -> set[str]:
    """Every module of ours that ``module`` imports anywhere in its file."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(filter(None, (_resolve(alias.name, None) for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.update(filter(None, (_resolve(base, alias.name) for alias in node.names)))
    out.discard(module)
    return out


GRAPH = {module: imports_of(module) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_the_walk_sees_the_project():
    assert {"utils.engine", "models.cclm", "dataset.retrieval", "tasks.runner", "run", "XVNLI"} <= set(MODULES)
    assert "utils.config" in GRAPH["tasks.cli"] and "tasks.registry" in GRAPH["run"]


def test_no_import_cycle_between_files():
    cycles = _cycles(GRAPH)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycle_between_folders():
    folders: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        folders[unit(module)].update(unit(t) for t in targets if unit(t) != unit(module))
    cycles = _cycles(folders)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            a, b = unit(module), unit(target)
            if a == b:
                continue
            if (a, b) in NEVER or RANK[b] >= RANK[a]:
                wrong.append(f"{module} ({a}) imports {target} ({b})")
    assert not wrong, "\n".join(wrong)


def test_no_script_imports_another_script():
    scripts = {m for m in MODULES if unit(m) == "scripts"}
    wrong = [f"{m} imports {t}" for m in scripts for t in GRAPH[m] if t in scripts]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("bad,expected", [
    ("import utils.engine\n", None), ("from tasks.runner import run_task\n", "imports tasks.runner"),
])
def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch, bad, expected):
    """A module of utils/ importing tasks/ is reported (the check is not vacuous)."""
    fake = tmp_path / "utils" / "fake.py"
    fake.parent.mkdir()
    fake.write_text(bad)
    monkeypatch.setitem(MODULES, "utils.fake", fake)
    monkeypatch.setitem(GRAPH, "utils.fake", imports_of("utils.fake"))
    if expected is None:
        test_every_import_goes_down_the_layers()
    else:
        with pytest.raises(AssertionError, match=expected):
            test_every_import_goes_down_the_layers()
