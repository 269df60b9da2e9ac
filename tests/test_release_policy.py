"""The shipped Llama release policy, end to end on the real stories260K checkpoint, from a folder that is not a
git checkout: every check decided or undecided for a reason a reader accepts, a verdict without machine paths,
nothing on stderr but ptq-eval's own lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
STORIES = SHARED_DATA / "models" / "stories260K-hf"
NEEDED = [STORIES, SHARED_DATA / "eval" / "arc_easy.jsonl", SHARED_DATA / "text" / "wikitext-2-raw"]


@pytest.mark.skipif(not all(path.exists() for path in NEEDED), reason="../shared/data is absent")
def test_the_llama_release_policy_gates_stories260k_cleanly(tmp_path):
    shutil.copytree(ROOT / "tasks" / "lm_eval", tmp_path / "tasks" / "lm_eval")
    shutil.copy(ROOT / "tasks" / "release-policy-llama.yaml", tmp_path)
    command = [sys.executable, "-m", "ptq_eval.cli", "gate", "--policy", "release-policy-llama.yaml"]
    command += ["--store", "gate.sqlite", "--out", "verdict.json", str(STORIES)]
    environment = os.environ | {"PTQ_EVAL_DATA": str(SHARED_DATA), "GITHUB_STEP_SUMMARY": ""}
    done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900)
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    checks = verdict["checks"]
    # Each budget only where its metric exists: word perplexity on WikiText-2, acc_norm on ARC-Easy and HellaSwag.
    assert sorted((c["eval_label"], c["metric"]) for c in checks) == sorted(
        [("wikitext2", "word_perplexity")] * 2 + [("arc_easy", "acc_norm")] * 2 + [("hellaswag", "acc_norm")] * 2
    )
    assert not any("no stored" in c["reason"] for c in checks)
    undecided = [c for c in checks if c["decision"] == "undecided"]
    assert all("straddles" in c["reason"] for c in undecided)  # decided wherever the interval allows
    assert {c["decision"] for c in checks} == {"pass", "fail", "undecided"}
    drops = [c for c in checks if c["metric"] == "acc_norm"]
    assert all(c["quantity"] == "drop" and c["ci_low"] <= c["value"] <= c["ci_high"] for c in drops)
    assert done.returncode == 1 and verdict["decision"] == "fail"
    assert str(SHARED_DATA) not in done.stdout and "| wikitext2 | word_perplexity |" in done.stdout
    assert "drop ≤ 0.05" in done.stdout
    ours = ("jobs already in the store", "jobs done", "jobs run", "wrote verdict.json")
    stray = [line for line in done.stderr.splitlines() if line and not any(text in line for text in ours)]
    assert stray == []
