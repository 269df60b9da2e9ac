"""End to end, as a user runs it: the CLI on the micro ladder (the first run in its own process, the rest in
this one), re-runs, kill and resume."""

import io

import pandas as pd
import pytest
from in_process import cli
from kill_resume import cli as cli_process
from kill_resume import comparable_rows

from ptq_eval.results import COLUMNS, EXTRA

STUDY = """
name: micro
ladder:
  - {ladder}/*/tpp*
quant:
  - {{method: rtn, bits: [3, 4, 8], group_size: [-1, 8]}}
evals:
  - {{kind: perplexity, tokens: 4096, seq_len: 32}}
"""


@pytest.fixture(scope="module")
def study(write_study):
    return write_study("micro", STUDY)


@pytest.fixture(scope="module")
def finished_store(study, tmp_path_factory):
    directory = tmp_path_factory.mktemp("finished")
    store = directory / "micro.sqlite"
    first = cli_process("run", str(study), "--store", str(store), "--report-dir", str(directory / "report"))
    return store, directory, first


def test_run_prints_the_table_and_writes_reports(finished_store):
    store, directory, first = finished_store
    assert (
        "| checkpoint | N | D | D/N | method | bits | granularity | fp loss | quant loss | δ [95% CI] |" in first.stdout
    )
    assert first.stdout.count("| rtn |") == 6 * 6
    assert {p.name for p in (directory / "report").iterdir()} == {"results.csv", "results.md", "summary.md"}


def test_results_csv_has_the_documented_columns_and_sane_values(study, finished_store):
    store, _, _ = finished_store
    frame = pd.read_csv(io.StringIO(cli("results", str(study), "--store", str(store), "--format", "csv").stdout))
    assert list(frame.columns) == COLUMNS + EXTRA
    loss = frame[frame.metric == "loss"]
    assert len(loss) == 36 and loss.n.eq(4096).all()
    assert (loss.delta_ci_low <= loss.delta).all() and (loss.delta <= loss.delta_ci_high).all()
    # The quantized loss really is paired with the baseline: same fp value for every config of a checkpoint.
    assert loss.groupby("checkpoint").fp_value.nunique().eq(1).all()
    # At 3 bits per channel the most-trained micro checkpoint is clearly worse than at 8 bits.
    last = loss[loss.checkpoint.str.endswith("n7k/tpp160") & (loss.group_size == -1)].set_index("bits")
    assert last.loc[3, "delta"] > last.loc[8, "delta"] and last.loc[3, "delta_ci_low"] > 0


def test_json_and_markdown_formats(study, finished_store):
    store, _, _ = finished_store
    records = pd.read_json(io.StringIO(cli("results", str(study), "--store", str(store), "--format", "json").stdout))
    assert len(records) == 72 * 3  # loss, perplexity and the four distribution metrics
    assert cli("results", str(study), "--store", str(store), "--format", "md").stdout.startswith("| checkpoint |")


def test_a_second_run_reuses_the_store(study, finished_store):
    store, _, _ = finished_store
    again = cli("run", str(study), "--store", str(store))
    assert "0 jobs run, 36 already in" in again.stderr


def test_runs_killed_at_random_moments_resume_to_the_same_rows(study, finished_store, tmp_path):
    from kill_resume import interrupted_run

    store = tmp_path / "resumed.sqlite"
    # The micro study stores 20-60 jobs/s on the 2-core machine (loaded or quiet): kills within 0.25 s of a run's
    # first stored job leave it unfinished at either speed (at 0.4 s a quiet machine finished before the third).
    kills = interrupted_run(study, store, kills=3, seed=1, longest=0.25)
    assert len(kills) == 3 and kills[-1][1] < 36 + 6  # interrupted before the study (36 jobs + 6 baselines) ended
    assert comparable_rows(study, store) == comparable_rows(study, finished_store[0])


def test_bad_study_exits_3_with_the_key_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nladder: [a@b]\nquant: [{method: rtn, bits: 1}]\nevals: [{kind: perplexity}]\n")
    result = cli("run", str(bad), "--store", str(tmp_path / "s.sqlite"), check=False)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert f"{bad}: quant[0].bits: 1 is not in 2..16" in result.stderr


def test_ladder_show_lists_n_d_and_ratio(micro_ladder):
    shown = cli("ladder", "show", str(micro_ladder)).stdout
    assert shown.count("| wsd |") == 6 and "tokens_per_param" in shown


def test_lm_evals_own_command_line_finds_our_scorer(micro_checkpoint, tmp_path, monkeypatch, capsys):
    """`ptq-eval lm-eval ARGS`: lm-eval's CLI with the `ptq_eval` model registered, giving HFLM's numbers."""
    import json
    from pathlib import Path

    from ptq_eval import cli as entry

    root = Path(__file__).resolve().parents[1]
    found = {}
    for model in ("ptq_eval", "hf"):
        out = tmp_path / model
        arguments = ["--model", model, "--model_args", f"pretrained={micro_checkpoint}", "--limit", "2",
                     "--include_path", str(root / "tasks" / "lm_eval"), "--tasks", "stdlib_python",
                     "--device", "cpu", "--batch_size", "4", "--output_path", str(out)]  # fmt: skip
        code = entry.main(["lm-eval", *arguments])
        assert code == 0
        (written,) = out.rglob("results_*.json")
        found[model] = json.loads(written.read_text())["results"]["stdlib_python"]["bits_per_byte,none"]
    assert found["ptq_eval"] == pytest.approx(found["hf"], rel=1e-5)
    assert "ptq_eval (" in capsys.readouterr().out
