"""The package's import graph has no circle: every import statement of triangle_nb/ counts — top-level, inside a
function (lazy) and under TYPE_CHECKING — and a package's __init__ is a module like the others. A circle is printed
file by file with the names each file takes from the next, so the failure says where to cut."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "triangle_nb"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _targets(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> dict[str, list[str]]:
    """The package modules an import statement loads, each with the names it takes."""
    if isinstance(node, ast.Import):
        return {a.name: [a.name] for a in node.names if a.name in modules}
    package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
    source = ".".join([*base, *([node.module] if node.module else [])])
    out: dict[str, list[str]] = {}
    for alias in node.names:
        target = f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
        if target in modules:
            out.setdefault(target, []).append(alias.name)
    return out


def import_graph() -> dict[str, dict[str, list[str]]]:
    """module -> {imported module: names}, over every import statement in the package."""
    modules = _modules()
    graph: dict[str, dict[str, list[str]]] = {m: {} for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target, names in _targets(module, node, modules).items():
                    if target != module:
                        graph[module].setdefault(target, []).extend(names)
    return graph


def circles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected parts of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while (w := stack.pop()) != v:
                part.append(w)
            if part:
                found.append(sorted([*part, v]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _describe(graph: dict[str, dict[str, list[str]]], part: list[str]) -> str:
    return "\n".join(f"  {a} -> {b}: {sorted(set(graph[a][b]))}" for a in part for b in graph[a] if b in part)


def test_the_graph_sees_lazy_and_type_checking_imports():
    graph = import_graph()
    assert "triangle_nb.policy" in graph["triangle_nb.algebra"]  # a top-level import
    assert "triangle_nb._bakery" in graph["triangle_nb.hypernetwork"]  # one inside a function
    assert "triangle_nb._types" in graph["triangle_nb.scoring"]  # one under TYPE_CHECKING
    assert circles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_circle():
    graph = import_graph()
    found = circles(graph)
    assert not found, "import circles:\n" + "\n\n".join(_describe(graph, part) for part in found)
