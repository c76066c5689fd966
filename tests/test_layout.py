"""The package's import graph: one direction, no circles, no imports hidden in functions to break one.

Layers, lowest first (a module imports only its own layer and those below):
  0 configuration and building blocks: config, sharding, weights, losses, ops, models, data,
    inference, distributed, benchmarking
  1 objectives, evaluators, data selection, restoration: objectives, eval, selection, restore
  2 tasks (what a run trains)
  3 training (the engine)
  4 what users call: the command line, the Python API (jaxalign/__init__), pictures (viz)
"""

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jaxalign"
LAYERS = {"config": 0, "sharding": 0, "weights": 0, "losses": 0, "ops": 0, "models": 0, "data": 0, "inference": 0,
          "distributed": 0, "benchmarking": 0, "objectives": 1, "eval": 1, "selection": 1, "restore": 1, "tasks": 2, "training": 3, "cli": 4,
          "viz": 4, "": 4}
ENTRY_POINTS = {"jaxalign", "jaxalign.cli"}  # may import inside functions: a fast start-up of `jaxalign --help`


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known) -> tuple[set[str], set[str]]:
    """(module-level, function-level) imports of jaxalign modules in one file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    top, nested = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:  # `from a import b`: module a.b, else a
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found = {n for n in names if n in known}
        (top if id(node) in top_level else nested).update(found)
    return top, nested


def layer(module: str) -> int:
    return LAYERS[module.split(".")[1] if "." in module else ""]


def test_imports_run_one_way_without_circles():
    known = modules()
    graph = collections.defaultdict(set)
    upward, hidden = [], []
    for module, path in known.items():
        top, nested = imports(path, known)
        for target in top - {module}:
            if not target.startswith(module + "."):  # a package's __init__ re-exporting its own modules
                graph[module].add(target)
            if layer(target) > layer(module):
                upward.append(f"{module} -> {target}")
        if nested and module not in ENTRY_POINTS:
            hidden += [f"{module} -> {t} (inside a function)" for t in sorted(nested)]
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))
    assert not hidden, "\n".join(hidden)

    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(known):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(cycles)
