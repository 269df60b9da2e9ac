"""Stored results are re-used only for the same inputs; failed checkpoints are recorded, not fatal; D may be unknown."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

from ptq_eval.corpus import stdlib_root
from ptq_eval.fit import UNKNOWN_D, FitError, FitKey, fit_base, select
from ptq_eval.identity import stale_reason
from ptq_eval.results import study_results
from ptq_eval.runner import run_study
from ptq_eval.spec import parse_study
from ptq_eval.store import Store

SOURCES = {"text_a": "json/decoder.py", "text_b": "json/encoder.py"}


@pytest.fixture
def root(micro_ladder, tmp_path):
    """Two checkpoints and two eval corpora that a test may change."""
    shutil.copytree(micro_ladder / "n7k" / "tpp10", tmp_path / "small")
    shutil.copytree(micro_ladder / "n7k" / "tpp160", tmp_path / "large")
    for name, source in SOURCES.items():
        (tmp_path / name).mkdir()
        shutil.copy(stdlib_root() / source, tmp_path / name / "valid.txt")
    return tmp_path


def study_of(root, ladder=("small", "large")):
    evals = [
        {"kind": "perplexity", "corpus": str(root / name), "split": "valid", "tokens": 512, "seq_len": 16}
        for name in SOURCES
    ]
    ladder = [str(root / name) for name in ladder]
    return parse_study({"name": "inputs", "ladder": ladder, "quant": [{"method": "rtn", "bits": 4}], "evals": evals})


def finished_at(store: Store) -> dict[str, str]:
    return dict(store._db.execute("SELECT job_key, finished_at || seconds FROM jobs").fetchall())


def test_a_changed_corpus_or_checkpoint_is_scored_again_and_the_rest_reused(root):
    study = study_of(root)
    with Store(root / "s.sqlite") as store:
        first = run_study(study, store)
        assert first.ran == 4 and not first.rescored
        again = run_study(study, store)
        assert again.ran == 0 and again.already_done == 4

        (root / "text_a" / "valid.txt").write_text((root / "text_a" / "valid.txt").read_text() + "\nx = 1\n")
        changed_text = run_study(study, store)
        assert changed_text.ran == 2  # text_a's job on each checkpoint, with their baselines
        assert all("eval text changed" in reason for reason in changed_text.rescored.values())

        weights = load_file(root / "large" / "model.safetensors")
        name = next(key for key in weights if "dense_h_to_4h.weight" in key)
        weights[name] = weights[name] * 1.01
        save_file(weights, root / "large" / "model.safetensors", metadata={"format": "pt"})
        changed_weights = run_study(study, store)
        assert changed_weights.ran == 2 and list(changed_weights.rescored) == [str(root / "large")]
        assert "checkpoint weights changed" in changed_weights.rescored[str(root / "large")]

        results = study_results(study, store)
    # every stored quantized result is paired with the baseline of the same inputs
    loss = results[results.metric == "loss"]
    assert len(loss) == 4 and loss.groupby(["checkpoint", "eval"]).fp_value.nunique().eq(1).all()


def test_results_stored_without_their_inputs_are_computed_again(root):
    study = study_of(root, ("small",))
    with Store(root / "s.sqlite") as store:
        run_study(study, store)
        store._db.execute("UPDATE jobs SET provenance = json_remove(provenance, '$.inputs')")
        store._db.commit()
        rerun = run_study(study, store)
    assert rerun.ran == 2 and "stored without a record of its inputs" in rerun.rescored[str(root / "small")]


def test_a_missing_checkpoint_is_recorded_and_the_study_goes_on(root):
    study = parse_study(
        study_of(root).model_dump() | {"ladder": [str(root / "small"), "EleutherAI/pythia-70m@step999"]}
    )
    with Store(root / "s.sqlite") as store:
        summary = run_study(study, store)
        assert summary.ran == 2 and list(summary.failed) == ["EleutherAI/pythia-70m@step999"]
        assert (
            "not in the local hub cache"
            in store.failures(["EleutherAI/pythia-70m@step999"])["EleutherAI/pythia-70m@step999"]
        )
        assert len(study_results(study, store)) == 2 * 6  # the local checkpoint's six metrics, two evals
        assert list(run_study(study, store).failed) == ["EleutherAI/pythia-70m@step999"]  # retried, fails again


def test_a_checkpoint_whose_tokens_nobody_knows_is_run_reported_and_left_out_of_fits(root):
    (root / "small" / "ptq_eval.json").unlink()
    study = study_of(root)
    with Store(root / "s.sqlite") as store:
        summary = run_study(study, store)
        results = study_results(study, store)
    assert summary.ran == 4 and not summary.failed
    small = results[results.checkpoint == str(root / "small")]
    assert small.tokens.isna().all() and small.tokens_per_param.isna().all() and small.delta.notna().all()
    key = FitKey(results["eval"].iloc[0], "loss", "rtn", -1)
    usable, excluded = select(results.assign(delta=1.0, delta_ci_low=0.5), key)
    assert set(excluded.reason) == {UNKNOWN_D} and usable.tokens.notna().all()
    with pytest.raises(FitError, match="only 1 usable points"):  # the unknown-D checkpoint is left out
        fit_base(results, key)


def test_a_checkpoint_rewritten_after_it_was_hashed_fails_alone(root, monkeypatch):
    monkeypatch.setattr("ptq_eval.worker.weights_stamp", lambda reference: ("rewritten since",))
    with Store(root / "s.sqlite") as store:
        summary = run_study(study_of(root, ("small",)), store)
        assert summary.ran == 0 and "its files changed while the study ran" in summary.failed[str(root / "small")]
        assert store._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0  # nothing stored for it


def test_lm_eval_results_are_reused_only_from_the_backend_that_scored_them():
    recorded = {"weights": "w", "tokenizer": "t", "eval_data": None}  # stored before the backend was recorded
    wanted = recorded | {"scorer": "ptq_eval"}
    assert stale_reason(recorded, wanted) == "lm-eval backend changed since it was stored"
    assert stale_reason(recorded, recorded | {"scorer": "hflm"}) is None  # what scored them then
    assert stale_reason(wanted, wanted) is None
