"""Scale-out: job-array shards merged, Ray (local, 2 CPUs) with a worker killed mid-study, and runs that share a
store — each must end with exactly the rows of one plain in-process run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import torch
from kill_resume import comparable_rows as rows
from kill_resume import stored_jobs

from ptq_eval.claims import Claims
from ptq_eval.errors import StoreError, UserError
from ptq_eval.executors import parse_shard, shard_checkpoints
from ptq_eval.jobs import CheckpointSpec
from ptq_eval.results import study_results
from ptq_eval.runner import run_study
from ptq_eval.spec import load_study
from ptq_eval.store import Store, merge_stores

STUDY = """
name: micro-scale
ladder:
  - {ladder}/*/tpp*
quant:
  - {{method: rtn, bits: [3, 4], group_size: [-1, 8]}}
  - {{method: gptq, bits: [3], group_size: [8]}}
calibration: {{samples: 8, seq_len: 32}}
evals:
  - {{kind: perplexity, tokens: 2048, seq_len: 32}}
"""


@pytest.fixture(scope="module")
def study_file(write_study):
    return write_study("micro-scale", STUDY)


@pytest.fixture(scope="module")
def reference(study_file, tmp_path_factory):
    """The study run once in this process, the plain way."""
    study = load_study(study_file)
    path = tmp_path_factory.mktemp("reference") / "store.sqlite"
    with Store(path) as store:
        summary = run_study(study, store)
    assert summary.ran == summary.jobs == 6 * 5 and not summary.failed
    return study, path


def test_shard_split_is_balanced_deterministic_and_complete():
    counts = {CheckpointSpec(f"c{i}"): 10 + (i % 3) for i in range(7)}
    shares = [shard_checkpoints(counts, index, 3) for index in range(3)]
    assert set().union(*shares) == set(counts) and sum(map(len, shares)) == 7
    loads = [sum(counts[c] for c in share) for share in shares]
    assert max(loads) - min(loads) <= max(counts.values())
    assert shares == [shard_checkpoints(dict(reversed(counts.items())), index, 3) for index in range(3)]
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(UserError, match=re.escape(f"--shard {bad!r}")):
            parse_shard(bad)


def test_shards_merged_give_the_in_process_rows(reference, tmp_path):
    study, reference_path = reference
    shards = [tmp_path / f"shard{index}.sqlite" for index in range(2)]
    ran = []
    for index, path in enumerate(shards):
        with Store(path) as store:
            ran.append(run_study(study, store, shard=(index, 2)).ran)
    assert sum(ran) == 30 and min(ran) > 0
    merged = tmp_path / "merged.sqlite"
    with Store(merged) as target:
        first = merge_stores(target, shards)
        again = merge_stores(target, shards)  # idempotent
    assert (first.copied, first.identical) == (30 + 6, 0) and (again.copied, again.identical) == (0, 36)
    assert rows(study, merged) == rows(study, reference_path)


def test_merge_refuses_a_conflicting_row_and_writes_nothing(reference, tmp_path):
    study, reference_path = reference
    altered = tmp_path / "altered.sqlite"
    shutil.copy(reference_path, altered)
    with sqlite3.connect(altered) as db:
        key = db.execute("SELECT job_key FROM metrics WHERE delta IS NOT NULL LIMIT 1").fetchone()[0]
        db.execute("UPDATE metrics SET delta = delta + 1 WHERE job_key = ?", (key,))
    target_path = tmp_path / "target.sqlite"
    with Store(target_path) as target:
        merge_stores(target, [reference_path])
        with pytest.raises(StoreError, match=f"job {key} .* has other metrics than in {target_path}"):
            merge_stores(target, [altered])
        with pytest.raises(StoreError, match="is the target store itself"):
            merge_stores(target, [target_path])
    assert stored_jobs(target_path) == 36 and rows(study, target_path) == rows(study, reference_path)


def test_claims_exclude_other_runs_until_released_expired_or_dead(tmp_path):
    path = tmp_path / "claims.sqlite"
    Store(path).close()
    with Claims(path, lease_seconds=60) as first, Claims(path, lease_seconds=60) as second:
        assert first.take("a") is None and second.take("a") == first.owner
        first.release("a")
        assert second.take("a") is None and first.take("a") == second.owner
    with sqlite3.connect(path) as db:  # an expired lease, and a live lease of a process that no longer exists
        db.execute("INSERT INTO claims VALUES ('b', 'elsewhere|1|x', ?)", (time.time() - 1,))
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        db.execute("INSERT INTO claims VALUES ('c', ?, ?)", (f"{os.uname().nodename}|{dead.stdout.strip()}|y", 1e12))
        db.execute("INSERT INTO claims VALUES ('d', 'elsewhere|1|z', 1e12)")
    with Claims(path, lease_seconds=60) as fourth:  # a claim that lapsed and was taken over is lost, loudly
        assert fourth.take("e") is None
        with sqlite3.connect(path) as db:
            db.execute("UPDATE claims SET owner = 'elsewhere|2|w' WHERE checkpoint = 'e'")
        fourth.renew()
        with pytest.raises(StoreError, match="e: this run's claim on it lapsed"):
            fourth.check("e")
        fourth.check("a")  # never held, never lost: nothing to refuse
    with Claims(path) as third:
        assert third.take("b") is None and third.take("c") is None and third.take("d") == "elsewhere|1|z"
    with sqlite3.connect(path) as db:  # released on exit, the live foreign ones kept
        assert db.execute("SELECT checkpoint FROM claims ORDER BY checkpoint").fetchall() == [("d",), ("e",)]


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "ptq_eval.cli", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_sharing_a_store_run_each_job_once(reference, study_file, tmp_path):
    study, reference_path = reference
    store = tmp_path / "shared.sqlite"
    runs = [cli("run", str(study_file), "--store", str(store)) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][1][-2000:]
    ran = [int(re.search(r"(\d+) jobs run", stderr).group(1)) for _, stderr in outputs]
    assert sum(ran) == 30, ran  # every job once between them
    assert stored_jobs(store) == 36 and rows(study, store) == rows(study, reference_path)


def _kill_a_worker_after_the_first_job(store, killed: list) -> None:
    """SIGKILL one Ray worker while it runs a checkpoint group (its process title names the task)."""
    deadline = time.time() + 300
    while time.time() < deadline and not killed:
        if stored_jobs(store) > 0:  # 0 while the store or its tables do not exist yet
            found = subprocess.run(["pgrep", "-f", "ray::_ray_group"], capture_output=True, text=True).stdout.split()
            if found:
                os.kill(int(found[0]), signal.SIGKILL)
                killed.append(int(found[0]))
        time.sleep(0.02)


def test_ray_with_a_worker_killed_mid_study_gives_the_in_process_rows(reference, tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray executor is optional: pip install 'ptq-eval[ray]'")
    from ptq_eval.executors import RayExecutor

    study, reference_path = reference
    store_path = tmp_path / "ray.sqlite"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_the_first_job, args=(store_path, killed))
    try:
        executor = RayExecutor(study.device, cpus=2)
        killer.start()
        with Store(store_path) as store:
            summary = run_study(study, store, executor=executor)
    finally:
        killer.join()
        ray.shutdown()
    assert killed, "no Ray worker was running a checkpoint group after the first job was stored"
    assert not summary.failed and summary.ran == 30
    assert stored_jobs(store_path) == 36 and rows(study, store_path) == rows(study, reference_path)


def test_a_quant_device_absent_here_is_refused_before_any_work(study_file, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    study = load_study(study_file).model_copy(update={"quant_device": "cuda"})
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(UserError, match="device 'cuda': this machine has 0"):
        run_study(study, store)
    assert stored_jobs(tmp_path / "s.sqlite") == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "setting", [{"dtype": "bfloat16", "device": "cuda"}, {"device": "cpu", "quant_device": "cuda"}]
)
def test_cuda_studies_bf16_and_gptq_offloaded(reference, tmp_path, setting):
    original, reference_path = reference
    study = original.model_copy(update=setting)
    with Store(tmp_path / "cuda.sqlite") as store:
        summary = run_study(study, store)
        results = study_results(study, store)
    assert summary.ran == 30 and not summary.failed
    with Store(reference_path) as store:
        expected = study_results(original, store)
    loss = results[results.metric == "loss"].set_index(["checkpoint", "method", "bits", "group_size"]).delta
    expected = expected[expected.metric == "loss"].set_index(["checkpoint", "method", "bits", "group_size"]).delta
    tolerance = 0.05 if setting.get("dtype") == "bfloat16" else 1e-3  # bf16 weights and activations vs float32
    assert loss.notna().all() and (loss - expected.loc[loss.index]).abs().max() < tolerance
