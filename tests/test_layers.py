"""The package layers of ARCHITECTURE.md section 3, checked on the source.

Nodes are the subpackages and top-level modules of ``expunge`` (``expunge.store``,
``expunge.training``, ...); an edge is any import from one node into another, including
imports inside functions (a lazy import is still a dependency). The façade
``expunge/__init__.py`` re-exports everything and is left out.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import expunge

ROOT = Path(expunge.__file__).parent

#: bottom to top; a node may import from its own layer (without a cycle) or below
LAYERS: list[set[str]] = [
    {"exceptions", "_hashing", "_imports", "_progress", "_validation", "_version",
     "_warnings"},
    {"data", "models", "training", "recipe", "store", "export", "parallel"},
    {"strategies"},
    {"_open", "evaluation", "operations"},
    {"bench", "service"},
    {"cli"},
]


def _module_name(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def import_edges() -> dict[str, set[tuple[str, str]]]:
    """``{node: {(imported node, "file:line"), ...}}`` for every import between nodes."""
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in sorted(ROOT.rglob("*.py")):
        parts = _module_name(path)
        if parts == ["expunge"]:
            continue  # the façade
        source = parts[1]
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [module]
                if module == "expunge":  # from expunge import store
                    targets = [f"expunge.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                names = target.split(".")
                if len(names) >= 2 and names[0] == "expunge" and names[1] != source:
                    where = f"{path.relative_to(ROOT.parent)}:{node.lineno}"
                    edges[source].add((names[1], where))
    return edges


def _graph() -> dict[str, set[str]]:
    return {k: {target for target, _ in v} for k, v in import_edges().items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_package_level_import_cycle():
    graph = _graph()
    assert graph, "no imports found: the scan is broken"
    cycle = find_cycle(graph)
    if cycle:
        edges = import_edges()
        proof = [next(where for target, where in sorted(edges[a]) if target == b)
                 for a, b in zip(cycle, cycle[1:])]
        raise AssertionError(f"import cycle {' -> '.join(cycle)} ({'; '.join(proof)})")


def test_every_node_is_in_a_layer_and_imports_only_its_layer_or_below():
    layer_of = {node: i for i, layer in enumerate(LAYERS) for node in layer}
    nodes = {_module_name(p)[1] for p in ROOT.rglob("*.py") if _module_name(p) != ["expunge"]}
    assert nodes - set(layer_of) == set(), "place new packages in LAYERS (ARCHITECTURE.md)"
    upward = sorted(f"{source} -> {target} ({where})"
                    for source, targets in import_edges().items()
                    for target, where in targets if layer_of[target] > layer_of[source])
    assert upward == []


def private_imports() -> list[str]:
    """Imports of another node's private module (``expunge.<node>._<module>``), or of a
    private name from another node (``from expunge.store import _layout``). The top-level
    helper modules (``expunge._hashing``...) are nodes of their own: importing them is fine."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = _module_name(path)
        if parts == ["expunge"]:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported = [(alias.name, "") for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported = [(node.module, alias.name) for alias in node.names]
            else:
                continue
            for module, name in imported:
                names = module.split(".")
                if len(names) < 2 or names[0] != "expunge" or names[1] == parts[1]:
                    continue
                private_name = name.startswith("_") and not name.startswith("__")
                if any(n.startswith("_") for n in names[2:]) or private_name:
                    found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {module} {name}")
    return found


def test_packages_import_each_other_through_public_names_only():
    assert private_imports() == []
