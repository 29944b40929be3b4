"""No import cycle inside amoc: the graph of module-level `import amoc...` is acyclic.

Edges come from each module's source (its ast), not from importing it: an import at module
level (also inside try/except, a class body or a plain `if`) is an edge; one under
`if TYPE_CHECKING:` or inside a function is not (it runs later, when both ends are loaded).
`import amoc.a.b` also runs `amoc.a`'s __init__, so it is an edge to `amoc.a` too, except
from inside `amoc.a` itself (a package's own modules load while it loads).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "amoc"

# Cycles that are known and accepted for now, each as the sorted list of its modules, with
# why it is there and who removes it. Empty: amoc has none; keep it so.
ALLOWED: list[list[str]] = []

Graph = dict[str, set[str]]


def module_names(root: Path) -> dict[str, Path]:
    """Every module under `root` (a package directory) by its dotted name."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _type_checking(node.test):
                yield from module_level_imports(node.body)
            yield from module_level_imports(node.orelse)
        elif isinstance(node, ast.Try | ast.TryStar):
            for block in (node.body, node.orelse, node.finalbody):
                yield from module_level_imports(block)
            for handler in node.handlers:
                yield from module_level_imports(handler.body)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from module_level_imports(node.body)


def _imported(node: ast.Import | ast.ImportFrom, package: str, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importing module's package upwards
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    # `from amoc.a import b` imports the module amoc.a.b when there is one.
    return [base, *(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)]


def import_graph(root: Path) -> Graph:
    """Module -> the package's modules it imports at module level (see the docstring)."""
    modules = module_names(root)
    known = set(modules)
    graph: Graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in module_level_imports(ast.parse(path.read_text(), str(path)).body):
            for target in _imported(node, package, known):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # the module and the packages above it
                    step = ".".join(parts[:i])
                    if step in known and step != name and not name.startswith(step + "."):
                        edges.add(step)
        graph[name] = edges
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def describe(component: list[str], graph: Graph) -> str:
    """A cycle as its edges, for the failure message."""
    inside = set(component)
    lines = [f"  {v} -> {', '.join(sorted(graph[v] & inside))}" for v in component]
    return "\n".join([f"cycle of {len(component)} modules:", *lines])


def test_amoc_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert "amoc.api.routes" in graph and "amoc.api.provider" in graph["amoc.api.routes"]
    found = [c for c in cycles(graph) if c not in ALLOWED]
    assert not found, "\n".join(describe(c, graph) for c in found)


def test_the_allowlist_names_only_cycles_that_still_exist() -> None:
    present = cycles(import_graph(PACKAGE))
    stale = [c for c in ALLOWED if c not in present]
    assert not stale, f"no longer cycles, remove them from ALLOWED: {stale}"


def test_the_check_finds_a_cycle_and_ignores_type_checking_and_function_imports(
    tmp_path: Path,
) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.c import C\n")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("try:\n    import pkg.sub.c\nexcept ImportError:\n    pass\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import a\n"
        "def later():\n    from pkg import a\n"
        "class C:\n    from . import d\n"
    )
    (pkg / "sub" / "d.py").write_text("from ..a import x\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub"] == {"pkg.sub.c"}  # its own modules: no edge back to itself
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.sub.d"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d"]]
    message = describe(cycles(graph)[0], graph)
    assert "pkg.sub.d -> pkg.a" in message
