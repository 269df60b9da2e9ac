"""Fault injection: a study run in a subprocess that is killed (SIGKILL) at random moments, again and again,
then allowed to finish. The CI test uses a few kills; `make stress` many (tests/bench/stress.py)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from ptq_eval.results import study_results
from ptq_eval.spec import Study, load_study
from ptq_eval.store import Store


def stored_jobs(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(store) as db:
            return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def comparable_rows(study: Path | Study, store: Path) -> str:
    """A study's stored results as CSV, without each job's own time (which differs from run to run)."""
    with Store(store) as opened:
        frame = study_results(study if isinstance(study, Study) else load_study(study), opened)
    return frame.drop(columns="seconds").to_csv(index=False)


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "ptq_eval.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, check=check, env=env)


def interrupted_run(study: Path, store: Path, kills: int, seed: int, longest: float = 2.5) -> list[tuple[float, int]]:
    """Kill `kills` runs of the study, then run it to the end; returns (delay, jobs stored when killed) per kill.

    Each run is killed a random 0..`longest` seconds after it stored its first new job, so the kills land in
    every phase of a job (loading the next checkpoint, its baseline, quantizing, evaluating, committing) and the
    study makes progress between them. A run that finishes before its kill ends the series early."""
    rng, record = random.Random(seed), []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for _ in range(kills):
        before = stored_jobs(store)
        process = subprocess.Popen(
            [sys.executable, "-m", "ptq_eval.cli", "run", str(study), "--store", str(store)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 300
        while process.poll() is None and stored_jobs(store) <= before and time.time() < deadline:
            time.sleep(0.05)
        delay = rng.uniform(0, longest)
        time.sleep(delay)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        record.append((delay, stored_jobs(store)))
    cli("run", str(study), "--store", str(store))
    return record
