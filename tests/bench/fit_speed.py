"""How long a user waits for fits, as whole processes: `ptq-eval fit` on the demo study (cold: no stored
estimates; warm: all stored), a cold `ptq-eval report`, `make gate` (warm, as CI runs it twice) and the gate's
commands cold; and, with --fresh-clone, `make demo` from a fresh clone, install included.

    python tests/bench/fit_speed.py [--store runs/demo.sqlite] [--runs 3] [--fresh-clone] [--out FILE]

Needs the demo study's results (`make demo`). A cold run works on a copy of the store with its estimates
table emptied, so the store itself is never touched; each run takes a fresh copy.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "ptq_eval.cli"]
TARGETS = {"fit, cold": 15.0, "report, cold": 60.0, "make gate": 30.0, "make demo, fresh clone": 600.0}


def _cold_copy(store: Path, folder: Path) -> Path:
    """A copy of the store without estimates (so every fit is computed again)."""
    copy = folder / f"cold-{time.monotonic_ns()}.sqlite"
    shutil.copy(store, copy)
    with sqlite3.connect(copy) as db:
        db.execute("DELETE FROM estimates")
    return copy


def _timed(command: list[str], cwd: Path = ROOT) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _gate_cold(store: Path, folder: Path) -> list[list[str]]:
    """`make gate`'s commands against a cold copy of the store (a policy copy that points at it)."""
    policy = yaml.safe_load((ROOT / "tasks/release-policy.yaml").read_text())
    policy["store"] = str(store)
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    ladder = "tasks/ladders/demo"
    return [[*CLI, "run", "tasks/demo.yaml", "--store", str(store)],
            [*CLI, "gate", f"{ladder}/n100k/tpp10", "--policy", str(path)],
            [*CLI, "gate", f"{ladder}/n100k/tpp320", "--policy", str(path)]]  # fmt: skip


def _gate(commands: list[list[str]]) -> float:
    """The gate's commands in sequence (the gates exit 0 and 1 by design: only other codes are errors)."""
    start = time.perf_counter()
    for command in commands:
        code = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        if code not in (0, 1):
            raise SystemExit(f"{' '.join(command)} exited {code}")
    return time.perf_counter() - start


def measure(store: Path, runs: int, fresh_clone: bool) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for _ in range(runs):
            cold = _cold_copy(store, folder)
            times.setdefault("fit, cold", []).append(_timed([*CLI, "fit", "tasks/demo.yaml", "--store", str(cold)]))
            times.setdefault("fit, warm", []).append(_timed([*CLI, "fit", "tasks/demo.yaml", "--store", str(cold)]))
            cold = _cold_copy(store, folder)
            report = [*CLI, "report", "tasks/demo.yaml", "--store", str(cold), "--out", str(cold.with_suffix(""))]
            times.setdefault("report, cold", []).append(_timed(report))
            times.setdefault("gate commands, cold", []).append(_gate(_gate_cold(_cold_copy(store, folder), folder)))
            times.setdefault("make gate", []).append(_timed(["make", "gate"]))
        if fresh_clone:
            clone = folder / "fresh"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            times["make demo, fresh clone"] = [_timed(["make", "demo"], cwd=clone)]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "runs/demo.sqlite")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fresh-clone", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "reports/bench/fit_speed.md")
    args = parser.parse_args()
    if not args.store.is_file():
        raise SystemExit(f"no store at {args.store}: run `make demo` first")
    times = measure(args.store, args.runs, args.fresh_clone)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    lines = [f"# Fit speed, whole processes ({time.strftime('%Y-%m-%d')}, {machine})", "",
             f"Seconds over {args.runs} runs (`python tests/bench/fit_speed.py`); cold: a copy of the demo store "
             "with no stored estimates.", "",
             "| stage | min | median | max | target |", "|---|---|---|---|---|"]  # fmt: skip
    for stage, found in times.items():
        target = f"≤ {TARGETS[stage]:g}" if stage in TARGETS else ""
        lines.append(f"| {stage} | {min(found):.1f} | {statistics.median(found):.1f} | {max(found):.1f} | {target} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
