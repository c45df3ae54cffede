#!/usr/bin/env python
"""Print the import cycles of the seqlens package (exit status 1 when there is one).

Reads the package -> folder map from pyproject.toml ([tool.setuptools] package-dir), parses every
module with ``ast`` and draws an edge for every import of another seqlens module, at module level
or inside a function (a deferred import only hides a cycle, it does not remove it). Imports under
``if TYPE_CHECKING:`` are left out (they never run). ``from pkg import name`` points at the
submodule ``pkg.name`` when there is one, else at ``pkg`` itself.

Usage: ``python scripts/import_cycles.py [repo root]``
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT_PACKAGE = "seqlens"


def package_dirs(root: Path) -> dict[str, Path]:
    """``{package: folder}`` for every package listed in pyproject.toml."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = config.get("package-dir", {})
    out = {}
    for pkg in config["packages"]:
        parent = pkg
        while parent not in mapped and "." in parent:  # a subpackage inherits its parent's folder
            parent = parent.rsplit(".", 1)[0]
        rest = pkg[len(parent):].lstrip(".").replace(".", "/")
        out[pkg] = root / mapped.get(parent, parent.replace(".", "/")) / rest
    return out


def modules(root: Path) -> dict[str, Path]:
    """``{module name: file}`` of every module of the listed packages."""
    out = {}
    for pkg, folder in package_dirs(root).items():
        for file in sorted(folder.glob("*.py")):
            out[pkg if file.stem == "__init__" else f"{pkg}.{file.stem}"] = file
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except under ``if TYPE_CHECKING:``."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node):
            children = node.orelse
        stack.extend(children)
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: seqlens modules it imports}``."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, file in mods.items():
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _resolve(name, file.stem == "__init__", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:  # "import seqlens.models.io as x" etc.
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    graph = edges(modules(root))
    found = cycles(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} import edges, {len(found)} cycle(s)")
    for component in found:
        inside = set(component)
        print("cycle: " + ", ".join(component))
        for m in component:
            print(f"  {m} -> {', '.join(sorted(graph[m] & inside))}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
