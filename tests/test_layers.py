"""Imports point down the layers ARCHITECTURE.md lists, or sideways within one: never up, never in a circle
(within a layer, between modules), and never relative (`from . import x` hides where a name comes from)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ptq_eval"
LAYERS = {
    "errors": 0, "version": 0, "yaml_files": 0, "schema": 0,
    "hub_text": 1, "corpus": 1, "tokenizer": 1, "families": 1, "in_memory": 1,
    "quant": 2, "evals": 2, "fit": 2,
    "spec": 3, "documents": 3, "jobs": 3, "identity": 3, "checkpoints": 3, "store": 3, "results": 3, "claims": 3,
    "artifacts": 3,
    "worker": 4, "executors": 4, "runner": 4,
    "gate": 5, "ladder": 5, "export": 5,
    "report": 6,
    "api": 7, "cli": 7, "": 7,  # "": the package's own __init__
}  # fmt: skip


def module_name(path: Path) -> str:
    """The dotted module a file under the package is (a package's `__init__` is the package)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer unit of a dotted module name: its first part under ptq_eval ("" for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> list[tuple[str, int]]:
    """(module imported, line) for every ptq_eval import in the file, at any depth (functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ptq_eval":
            names = [f"ptq_eval.{a.name}" for a in node.names] if node.module == "ptq_eval" else [node.module]
            found += [(name, node.lineno) for name in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "ptq_eval"]
    return found


def test_every_module_has_a_layer():
    units = {unit(".".join(("ptq_eval", *p.relative_to(PACKAGE).with_suffix("").parts))) for p in PACKAGE.rglob("*.py")}
    units = {u if u != "__init__" else "" for u in units}
    assert units - set(LAYERS) == set(), "give these modules a layer here and in ARCHITECTURE.md"


def test_no_import_points_up_a_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = unit(".".join(("ptq_eval", *path.relative_to(PACKAGE).with_suffix("").parts)))
        source = "" if source == "__init__" else source
        for module, line in imports(path):
            target = unit(module) if unit(module) in LAYERS else ""  # an attribute of the package (__version__)
            if LAYERS[target] > LAYERS[source]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} (layer {LAYERS[target]})")
    assert upward == []


def _resolve(module: str, modules: set[str]) -> str:
    """An imported dotted name as a module of the package: itself, or the module it is an attribute of."""
    while module not in modules and "." in module:
        module = module.rsplit(".", 1)[0]
    return module


def test_no_relative_imports():
    relative = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                relative.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert relative == []


def test_no_import_circles():
    """Module-level imports between the package's modules form no cycle (imports inside functions are left out:
    they run late, and break no import order). A package imports its own modules, so it is left out as a target
    of them."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text())
        targets = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ptq_eval":
                names = [f"{node.module}.{a.name}" for a in node.names]
                targets |= {_resolve(name, set(paths)) for name in names}
            elif isinstance(node, ast.Import):
                targets |= {_resolve(a.name, set(paths)) for a in node.names if a.name.startswith("ptq_eval")}
        graph[module] = {t for t in targets if t != module and not module.startswith(t + ".") and t in paths}
    cycles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
