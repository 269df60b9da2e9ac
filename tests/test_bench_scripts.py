"""The benchmark scripts run only under `make bench`: here, every ptq_eval name they import must still exist."""

import ast
import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).parent / "bench").glob("*.py"))


def _ptq_eval_imports(script: Path) -> list[tuple[str, str]]:
    """(module, name) for every `from ptq_eval... import name` in the script, at any depth."""
    tree = ast.parse(script.read_text())
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ptq_eval"
        for alias in node.names
    ]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_bench_script_imports_resolve(script):
    imports = _ptq_eval_imports(script)
    missing = [f"{module}.{name}" for module, name in imports if not hasattr(importlib.import_module(module), name)]
    assert missing == []


def test_every_bench_script_is_checked():
    assert {s.name for s in SCRIPTS} >= {"eval_speed.py", "gptq_peers.py", "scale.py", "fit_recovery.py"}
    found = _ptq_eval_imports(Path(__file__).parent / "bench" / "scale.py")  # imported inside a function
    assert ("ptq_eval.quant", "quantize") in found and len(found) == 9
