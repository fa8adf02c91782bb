"""The import graph of the ``kdet`` package, read from the source with ``ast`` (a helper, no tests).

Every ``import`` and ``from ... import`` statement counts, at module level or
inside functions and classes, and so does ``importlib.import_module("literal")``
(the way ``kdet.load`` resolves builders and the package ``__init__`` loads
sub-packages). Imports under ``if TYPE_CHECKING:`` are left out: they never run.

Edges follow the usual convention of import checkers (import-linter, pydeps):
``from a.b import c`` is an edge to the module ``a.b.c`` when ``c`` is a
module, else to ``a.b``; ``import a.b`` is an edge to ``a.b``. The implicit
import of parent packages (running ``a/__init__.py`` before ``a.b``) is not an
edge: every module depends on its package's ``__init__``, and counting it would
call every re-exporting ``__init__`` a cycle.

Example:
    >>> graph = import_graph(REPO / "kdet")          # doctest: +SKIP
    >>> cycles(graph)                                # doctest: +SKIP
    []
"""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def module_names(package_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``package_dir``."""
    root = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _package_of(module: str, path: pathlib.Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _absolute(module: str, path: pathlib.Path, level: int, name: str | None) -> str:
    """Resolves a relative ``from`` import (``level`` dots) against ``module``."""
    if level == 0:
        return name or ""
    base = _package_of(module, path).split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` (the file ``path``) imports anywhere in its body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()

    def add(target: str) -> None:
        # An import of an unknown sub-module still touches its nearest known package.
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path, node.level, node.module)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                add(candidate if candidate in known else base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(package_dir: pathlib.Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for every module of ``package_dir``."""
    modules = module_names(package_dir)
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted.

    A component is a set of modules that import each other in a circle; an
    acyclic graph has none.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        # Iterative Tarjan: kdet's graph is small, but recursion depth should not depend on it.
        work = [(node, iter(sorted(graph.get(node, ()))))]
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        while work:
            current, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[current] = min(low[current], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[current])
            if low[current] == index[current]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == current:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen
