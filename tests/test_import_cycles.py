"""No import cycle among the modules of `src/latentvla` (imports point one way: data/envs -> models -> train ->
eval/serve/scripts).

Every `import` / `from ... import` in every module is read with `ast` (nothing is imported). Module-level imports
are the edges of the import graph, which must have no cycle (Tarjan's strongly connected components). An import
inside a function is lazy: it does not fail at import time, but one that closes a cycle only hides it (the two
modules still depend on each other), so the graph with the lazy imports added must have no cycle either.

`import a.b.c` is an edge to `a.b.c`; `from a.b import c` to the module `a.b.c` if it exists, else to `a.b`.
Imports under `if TYPE_CHECKING:` are not executed and are not edges.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


# Cycles closed only by a function-level import, outside the data layer, each with the change that removes it.
# A new cycle, or one of these that grows, fails the test.
@dataclass(frozen=True)
class Edge:
    target: str
    file: str
    line: int
    lazy: bool  # inside a function body


def _modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package `__init__`)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, package: bool, modules: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        parts = module.split(".") if package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join([*parts, base] if base else parts)
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def import_edges(src: Path) -> dict[str, list[Edge]]:
    """Every module's imports of other modules under `src` (see the module docstring)."""
    modules = _modules(src)
    graph: dict[str, list[Edge]] = {m: [] for m in modules}
    for module, (path, package) in modules.items():
        stack = [(child, False) for child in ast.iter_child_nodes(ast.parse(path.read_text(), str(path)))]
        while stack:
            node, lazy = stack.pop()
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node, module, package, modules):
                    if target in modules and target != module:
                        graph[module].append(Edge(target, str(path.relative_to(src)), node.lineno, lazy))
                continue
            if _is_type_checking(node):
                stack += [(child, lazy) for child in node.orelse]
                continue
            inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            stack += [(child, inner) for child in ast.iter_child_nodes(node)]
        graph[module].sort(key=lambda e: e.line)
    return graph


def strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module, i.e. the cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe_cycle(component: list[str], edges: dict[str, list[Edge]]) -> str:
    """One cycle through the component, each step with the import that makes it (file:line, lazy or not)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    steps: dict[tuple[str, str], Edge] = {}
    while queue:  # breadth-first from `start` until an import leads back to it
        node = queue.pop(0)
        for edge in edges[node]:
            if edge.target not in members:
                continue
            steps.setdefault((node, edge.target), edge)
            if edge.target == start:
                path = paths[node] + [start]
                hops = []
                for a, b in zip(path, path[1:]):
                    e = steps[(a, b)]
                    hops.append(f"{a} -> {b} ({e.file}:{e.line}{', in a function' if e.lazy else ''})")
                return "; ".join(hops)
            if edge.target not in paths:
                paths[edge.target] = paths[node] + [edge.target]
                queue.append(edge.target)
    return " <-> ".join(component)


def cycles(edges: dict[str, list[Edge]], lazy: bool) -> list[list[str]]:
    graph = {m: sorted({e.target for e in es if lazy or not e.lazy}) for m, es in edges.items()}
    return strongly_connected(graph)


def _report(found: list[list[str]], edges: dict[str, list[Edge]], lazy: bool) -> str:
    edges = {m: [e for e in es if lazy or not e.lazy] for m, es in edges.items()}
    return "import cycles:\n" + "\n".join(f"  among {', '.join(c)}: {describe_cycle(c, edges)}" for c in found)


def test_no_cycle_among_module_level_imports():
    edges = import_edges(SRC)
    assert "latentvla.data.dataset" in edges and len(edges) > 100  # the walk saw the whole package
    found = cycles(edges, lazy=False)
    assert not found, _report(found, edges, lazy=False)


def test_no_function_level_import_hides_a_cycle():
    edges = import_edges(SRC)
    found = cycles(edges, lazy=True)
    assert not found, (
        _report(found, edges, lazy=True) + "\n(a function-level import that closes a cycle only hides it)"
    )


def test_the_data_layer_has_no_cycle_at_all():
    edges = import_edges(SRC)
    data = [c for c in cycles(edges, lazy=True) if any(m.startswith("latentvla.data.") for m in c)]
    assert not data, _report(data, edges, lazy=True)


# --- the checker itself, on a small package ------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_module_level_lazy_and_relative_cycles(tmp_path):
    src = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "import os\n\ndef f():\n    from pkg.a import thing\n",
            "pkg/sub/__init__.py": "from .c import C\n",
            "pkg/sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import d\nC = 1\n",
            "pkg/sub/d.py": "from . import c\nfrom ..a import x\n",
            "pkg/e.py": "import pkg.f\n",
            "pkg/f.py": "import pkg.e as e\n",
        },
    )
    edges = import_edges(src)
    assert {e.target for e in edges["pkg.sub.d"]} == {"pkg.sub.c", "pkg.a"}  # relative imports resolved
    assert edges["pkg.sub.c"] == []  # TYPE_CHECKING imports are not edges
    assert [(e.target, e.line, e.lazy) for e in edges["pkg.b"]] == [("pkg.a", 4, True)]
    assert cycles(edges, lazy=False) == [["pkg.e", "pkg.f"]]
    assert sorted(cycles(edges, lazy=True)) == [["pkg.a", "pkg.b"], ["pkg.e", "pkg.f"]]
    message = describe_cycle(["pkg.a", "pkg.b"], edges)
    assert message == "pkg.a -> pkg.b (pkg/a.py:1); pkg.b -> pkg.a (pkg/b.py:4, in a function)"


@pytest.mark.parametrize("n", [2, 3, 50])
def test_tarjan_on_rings_and_chains(n):
    ring = {str(i): [str((i + 1) % n)] for i in range(n)}
    assert strongly_connected(ring) == [sorted(ring)]
    chain = {str(i): [str(i + 1)] if i + 1 < n else [] for i in range(n)}
    assert strongly_connected(chain) == []
    two = {"a": ["b"], "b": ["a", "c"], "c": ["d"], "d": ["c"]}
    assert sorted(strongly_connected(two)) == [["a", "b"], ["c", "d"]]
