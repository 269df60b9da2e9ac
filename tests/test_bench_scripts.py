"""The benchmark scripts run only under `make bench`: here, every ptq_eval name they import must still exist."""

import ast
import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).parent / "bench").glob("*.py"))


def _ptq_eval_imports(script: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every `from ptq_eval... import name`, and (module, None) for every `import ptq_eval...`,
    in the script at any depth."""
    found = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ptq_eval":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "ptq_eval"]
    return found


def _missing(module: str, name: str | None) -> bool:
    try:
        return name is not None and not hasattr(importlib.import_module(module), name)
    except ModuleNotFoundError:
        return True


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_bench_script_imports_resolve(script):
    missing = [f"{module}.{name or ''}" for module, name in _ptq_eval_imports(script) if _missing(module, name)]
    assert missing == []


def test_the_scan_sees_imports_inside_functions():
    found = _ptq_eval_imports(Path(__file__).parent / "bench" / "scale.py")  # scale.py imports inside measure()
    assert {("ptq_eval.quant", "quantize"), ("ptq_eval.checkpoints", "load_checkpoint")} <= set(found)
    assert {"eval_speed.py", "gptq_peers.py", "scale.py", "fit_recovery.py"} <= {s.name for s in SCRIPTS}


def test_the_gpu_check_runs_its_cpu_parts_and_says_what_it_skipped(tmp_path):
    """`make gpu-check` on a machine without CUDA (here: --quick sizes); with ../shared/data, its studies too."""
    import subprocess
    import sys

    import torch

    root, out = Path(__file__).resolve().parents[1], tmp_path / "gpu.md"
    data = root.parent / "shared" / "data"
    command = [sys.executable, "tests/bench/gpu_check.py", "--quick", "--data", str(data), "--out", str(out)]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = out.read_text()
    assert "**Failed**" not in report, report
    assert "| Pythia-tiny shape | float32 |" in report and "| yes |" in report  # GPTQ alone and shared agree
    assert "| tiny fc2 | 20 x 150 | 1 |" in report and "**no**" not in report  # fused loop == eager loop
    if not torch.cuda.is_available():
        assert "Skipped: no CUDA on this machine" in report and "CPU against CPU" in report
    if (data / "models" / "stories260K-hf").is_dir():
        assert "| rtn 8-bit g32 |" in report and "| tiny | float32 |" in report
    else:
        assert "Skipped: no models/stories260K-hf" in report
