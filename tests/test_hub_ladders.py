"""Released ladders through an offline hub cache laid out as `from_pretrained(repo, revision=...)` reads it:
family rules give D and the schedule phase, discovery picks revisions from the cached refs, every checkpoint
is pinned to its commit, and a missing revision fails alone."""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import huggingface_hub
import pytest

from ptq_eval import cli
from ptq_eval.checkpoints import CheckpointRef, tokens_from_schedule
from ptq_eval.families import hub_revisions, ladder_revisions, pick
from ptq_eval.jobs import checkpoints
from ptq_eval.results import study_results
from ptq_eval.runner import run_study
from ptq_eval.spec import parse_study
from ptq_eval.store import Store

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def commit_of(repo: str, revision: str) -> str:
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


def cache_repo(cache, source, repo: str, revisions: list[str]) -> None:
    """A hub cache entry for `repo` whose revisions all hold the `source` checkpoint's files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    for revision in revisions:
        commit = commit_of(repo, revision)
        (folder / "refs" / revision).write_text(commit)
        snapshot = folder / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name in CHECKPOINT_FILES:
            shutil.copy(source / name, snapshot / name)


OLMO2 = "allenai/OLMo-2-0425-1B"
SMOLLM3 = "HuggingFaceTB/SmolLM3-3B-checkpoints"
APERTUS = "swiss-ai/Apertus-8B-2509"
CACHED = {
    "EleutherAI/pythia-70m": ["main", "step1000", "step2000", "step8000", "step143000"],
    OLMO2: [
        "main",
        "stage1-step1000-tokens3B",
        "stage1-step1907359-tokens4001B",
        "stage2-ingredient1-step1000-tokens3B",
    ],
    SMOLLM3: ["stage1-step-40000", "stage3-step-4720000", "it-SFT"],
    APERTUS: ["step850000-tokens3570B", "step1800000-tokens8072B"],
}


@pytest.fixture
def hub(micro_checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    for repo, revisions in CACHED.items():
        cache_repo(cache, micro_checkpoint, repo, revisions)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_pythia_steps_give_tokens_and_the_cosine_phase():
    tokens, source, schedule = tokens_from_schedule(CheckpointRef.parse("EleutherAI/pythia-160m@step143000"))
    assert tokens == 143000 * 2_097_152 and source == "family pythia" and schedule["decay_done"] == 1.0
    tokens, source, schedule = tokens_from_schedule(CheckpointRef.parse("EleutherAI/pythia-70m-deduped@step1000"))
    assert tokens == 1000 * 2_097_152 and source == "family pythia-deduped"
    assert schedule["decay_done"] == pytest.approx(0.5 * (1 - math.cos(math.pi * 1000 / 143000)))
    _, _, schedule = tokens_from_schedule(CheckpointRef.parse("EleutherAI/pythia-160m@step71500"))
    assert schedule["decay_done"] == pytest.approx(0.5)  # half the cosine's length: half the rate's way down
    assert tokens_from_schedule(CheckpointRef.parse("EleutherAI/pythia-160m@main")) is None


def test_token_counts_in_revision_names_are_read_for_any_repository():
    tokens, source, _ = tokens_from_schedule(CheckpointRef.parse("someone/model@step20000-tokens84B"))
    assert tokens == 84 * 10**9 and source == "family tokens-in-name"
    tokens, _, _ = tokens_from_schedule(CheckpointRef.parse("someone/model@tokens1.5T"))
    assert tokens == 1_500_000_000_000


def test_discovery_picks_log_spaced_revisions_from_the_cached_refs(hub):
    found = ladder_revisions("EleutherAI/pythia-70m", hub_revisions("EleutherAI/pythia-70m"))
    assert [r.name for r in found] == ["step1000", "step2000", "step8000", "step143000"]  # main has no D
    assert [r.name for r in pick(found, 0, 1e12, 3, None)] == ["step1000", "step8000", "step143000"]
    assert [r.name for r in pick(found, 3e9, 2e10, None, None)] == ["step2000", "step8000"]
    assert [r.name for r in pick(found, 0, 1e12, None, 2)] == ["step1000", "step8000"]


@pytest.mark.parametrize(
    ("repo", "revision", "tokens", "phase"),
    [
        (OLMO2, "stage1-step1000-tokens3B", 1000 * 2_097_152, "stable"),
        (OLMO2, "stage2-ingredient1-step1000-tokens3B", 4_000_021_741_568 + 1000 * 2_097_152, "anneal"),
        (SMOLLM3, "stage1-step-40000", 40000 * 2_359_296, "stable"),
        (SMOLLM3, "stage3-step-4720000", 4720000 * 2_359_296, "decay"),
        (APERTUS, "step850000-tokens3570B", 3_570_000_000_000, None),
    ],
)
def test_family_rules_give_tokens_and_schedule_phase(repo, revision, tokens, phase):
    found, source, schedule = tokens_from_schedule(CheckpointRef.parse(f"{repo}@{revision}"))
    assert found == tokens and schedule.get("phase") == phase and source.startswith("family ")


def test_discovery_across_families_reads_only_revisions_a_rule_knows(hub):
    assert [r.name for r in ladder_revisions(OLMO2, hub_revisions(OLMO2))] == [
        "stage1-step1000-tokens3B", "stage1-step1907359-tokens4001B", "stage2-ingredient1-step1000-tokens3B"
    ]  # fmt: skip
    assert [r.name for r in ladder_revisions(SMOLLM3, hub_revisions(SMOLLM3))] == [
        "stage1-step-40000", "stage3-step-4720000"
    ]  # fmt: skip


def test_a_hub_ladder_study_pins_commits_and_survives_a_missing_revision(hub, tmp_path, capsys):
    study = parse_study(
        {
            "name": "hub",
            "ladder": [
                {"family": "pythia", "sizes": ["70m"], "tokens": [1e9, 1e10], "count": 2},
                {"family": "olmo2", "sizes": ["1B"], "tokens": [4e12, 5e12]},
                {"family": "smollm3", "sizes": ["3B"], "tokens": [1e12, 2e13]},
                {"family": "apertus", "sizes": ["8B"], "revisions": ["step850000-tokens3570B"]},
                "EleutherAI/pythia-70m@step99999",
            ],
            "quant": [{"method": "rtn", "bits": 4}],
            "evals": [{"kind": "perplexity", "tokens": 512, "seq_len": 16}],
        }
    )
    references = [spec.reference for spec in checkpoints(study)]
    assert references == [
        "EleutherAI/pythia-70m@step1000",
        "EleutherAI/pythia-70m@step2000",
        f"{OLMO2}@stage1-step1907359-tokens4001B",
        f"{OLMO2}@stage2-ingredient1-step1000-tokens3B",
        f"{SMOLLM3}@stage3-step-4720000",
        f"{APERTUS}@step850000-tokens3570B",
        "EleutherAI/pythia-70m@step99999",
    ]
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_study(study, store)
        results = study_results(study, store).query("metric == 'loss'").set_index("checkpoint")
        facts = {
            json.loads(job)["checkpoint"]: json.loads(f) for job, f in store._db.execute("SELECT job, facts FROM jobs")
        }
    assert list(summary.failed) == ["EleutherAI/pythia-70m@step99999"] and summary.ran == 6
    assert results.tokens.to_dict() == {
        references[0]: 1000 * 2_097_152,
        references[1]: 2000 * 2_097_152,
        references[2]: 1907359 * 2_097_152,
        references[3]: 4_000_021_741_568 + 1000 * 2_097_152,
        references[4]: 4720000 * 2_359_296,
        references[5]: 3_570_000_000_000,
    }
    phases = [facts[reference]["schedule"].get("phase") for reference in references[:6]]
    assert phases == [None, None, "stable", "anneal", "decay", None]
    assert facts[references[4]]["schedule"]["decay_done"] == 1.0
    for reference in references[:6]:
        repo, revision = reference.split("@")
        assert facts[reference]["weights_id"] == f"git:{commit_of(repo, revision)}"

    assert cli.main(["ladder", "show", "EleutherAI/pythia-70m"]) == 0
    shown = capsys.readouterr()
    assert "| step143000 | 299892736000 | cosine | 1.0 |" in shown.out and "4 of 5 revisions" in shown.err
