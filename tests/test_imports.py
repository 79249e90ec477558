"""The package's import graph has no cycles and no upward imports between layers.

Every module under lightning_vlm/ is parsed (not imported): its module-level and
function-level `import lightning_vlm.x` / `from .x import y` statements, resolved to module
names, are the graph's edges (imports under `if TYPE_CHECKING:` are left out: they never
run). A function-level import still closes a cycle: it only hides it until the function runs.

The known exceptions are listed as edges below, each with why it is there. They may only
shrink: an exception that no longer exists, or no longer closes a cycle / goes upward, fails
the test until it is deleted from the list.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import lightning_vlm

PACKAGE = "lightning_vlm"
ROOT = Path(lightning_vlm.__file__).parent

# Edges that close a cycle today, each with its way out; empty now, and it should stay so (the fix
# is to move what both sides need into a module of its own).
ALLOWED_CYCLE_EDGES: set[tuple[str, str]] = set()

# Layers, lowest first: a module may import its own layer and those below, never one above.
# registry/errors/precision/compat know no other module (compat names its successors as strings);
# data knows only itself; encoders, models and the image
# heads build on data; eval generates with a model and scores it (the evaluator, FD, encoder
# checks); training assembles models, heads, encoders and eval into the LightningModule;
# export/callbacks/study drive training; the CLI sits on top. A module's layer is that of its
# longest listed prefix.
LAYERS = {
    "lightning_vlm.errors": 0, "lightning_vlm.registry": 0, "lightning_vlm.precision": 0, "lightning_vlm.compat": 0,
    "lightning_vlm.data": 1,
    "lightning_vlm.encoders": 2, "lightning_vlm.models": 2, "lightning_vlm.heads": 2,
    "lightning_vlm.eval": 3, "lightning_vlm.smartwatch": 3,
    "lightning_vlm.training": 4,
    "lightning_vlm.export": 5, "lightning_vlm.callbacks": 5, "lightning_vlm.study": 5,
    "lightning_vlm.cli": 6, "lightning_vlm.__main__": 6, "lightning_vlm": 6,
}
# Upward imports allowed as known exceptions (none left: ExportEncoder moved to callbacks.py).
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    found = {PACKAGE: ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix=f"{PACKAGE}."):
        path = ROOT.joinpath(*info.name.split(".")[1:])
        found[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports anywhere in its file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_nodes(tree)
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:  # `import lightning_vlm.x.Y`-style leftovers
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per strongly connected component with more than one module."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):  # Tarjan; the graph is small, recursion is fine
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, comp) for comp in components]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(comp)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & comp):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError(f"no cycle through {start}")


def without(graph: dict[str, set[str]], edges: set[tuple[str, str]]) -> dict[str, set[str]]:
    return {a: {b for b in targets if (a, b) not in edges} for a, targets in graph.items()}


def layer_of(name: str) -> int:
    while name not in LAYERS:
        name = name.rsplit(".", 1)[0]
    return LAYERS[name]


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "lightning_vlm.models.generation" in graph["lightning_vlm.models.vlm"]  # `from . import generation`
    assert "lightning_vlm.registry" in graph["lightning_vlm.encoders.cache"]  # `from lightning_vlm import registry` in a function
    assert "lightning_vlm.data.tasks" in graph["lightning_vlm.smartwatch.config"]  # `from ..data.tasks import`
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(without(graph, ALLOWED_CYCLE_EDGES))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
    for a, b in sorted(ALLOWED_CYCLE_EDGES):  # the exceptions must still be needed
        assert b in graph[a], f"{a} no longer imports {b}: delete it from ALLOWED_CYCLE_EDGES"
        assert find_cycles(without(graph, ALLOWED_CYCLE_EDGES - {(a, b)})), f"{a} -> {b} closes no cycle: delete it"


def test_no_upward_imports():
    graph = import_graph()
    upward = sorted((a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))
    new = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})" for a, b in upward if (a, b) not in ALLOWED_UPWARD]
    assert not new, "upward imports:\n" + "\n".join(new)
    gone = ALLOWED_UPWARD - set(upward)
    assert not gone, f"no longer upward, delete from ALLOWED_UPWARD: {sorted(gone)}"
