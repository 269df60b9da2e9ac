"""The release gate: decisions on constructed results and store contents, the policy's validation, the CLI's
exit codes, JSON verdict and Markdown summary, and one end-to-end run on the micro ladder."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from simulate import simulate_results

from ptq_eval import cli
from ptq_eval.fit import KUMAR, Estimate, query
from ptq_eval.gate import (
    PolicyError,
    decide,
    fit_forecasts,
    gate_study,
    judge,
    load_policy,
    parse_policy,
)
from ptq_eval.jobs import expand_jobs
from ptq_eval.report.verdict import verdict_markdown
from ptq_eval.results import COLUMNS
from ptq_eval.store import MetricRow, Store

EVAL = "ppl:stdlib-python:validation"
FACTS = {"params": 200_000, "nonembedding_params": 100_000, "tokens": 10_000_000, "tokens_per_param": 100.0}
COVERED = {"matrices": 8, "params": 99_000, "fraction": 0.99, "left_out_params": 0}
KUMAR_TRUE = {"C_T": 0.02, "gamma_D": 0.6, "gamma_N": 0.4, "gamma_post": 1.2}
POLICY = """
name: release
quant:
  - {method: rtn, bits: 4, group_size: -1}
evals:
  - {kind: perplexity, tokens: 4096, seq_len: 32}
budgets:
  - {kind: absolute, max: 0.01}
"""


def policy(*budgets: dict, uncertainty: str = "ci"):
    data = {
        "name": "release",
        "quant": [{"method": "rtn", "bits": 4, "group_size": -1}],
        "evals": [{"kind": "perplexity", "tokens": 4096, "seq_len": 32}],
        "budgets": list(budgets),
        "uncertainty": uncertainty,
    }
    return parse_policy(data)


def row(
    checkpoint: str, delta: float, low: float, high: float, metric: str = "loss", fp: float = 3.0, **coverage
) -> dict:
    coverage = COVERED | coverage
    return FACTS | {
        "quantized_matrices": coverage["matrices"], "quantized_params": coverage["params"],
        "coverage": coverage["fraction"], "left_out_params": coverage["left_out_params"],
        "checkpoint": checkpoint, "method": "rtn", "bits": 4, "group_size": -1, "symmetric": True, "eval": EVAL,
        "metric": metric, "fp_value": fp, "quant_value": fp + delta, "delta": delta, "delta_ci_low": low,
        "delta_ci_high": high, "n": 4096,
    }  # fmt: skip


def results(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLUMNS)


def decisions(verdict) -> list[str]:
    return [check.decision for check in verdict.checks]


@pytest.mark.parametrize(
    ("uncertainty", "measured", "expected"),
    [
        ("ci", (0.004, 0.002, 0.006), "pass"),
        ("ci", (0.05, 0.04, 0.06), "fail"),
        ("ci", (0.009, 0.006, 0.012), "undecided"),
        ("strict", (0.009, 0.006, 0.012), "fail"),
        ("point", (0.009, 0.006, 0.012), "pass"),
        ("point", (0.011, 0.009, 0.013), "fail"),
        ("point", (math.nan, math.nan, math.nan), "fail"),  # the quantized loss is NaN, full precision's is not
        ("ci", (math.inf, math.inf, math.inf), "fail"),  # it overflowed
    ],
)
def test_absolute_budget_under_each_uncertainty_rule(uncertainty, measured, expected):
    verdict = decide(
        policy({"kind": "absolute", "max": 0.01}, uncertainty=uncertainty), "m", results(row("m", *measured))
    )
    assert decisions(verdict) == [expected] and verdict.decision == expected


def test_a_diverged_candidate_fails_a_baseline_budget_and_a_diverged_baseline_is_named():
    rules = policy({"kind": "baseline", "checkpoint": "base", "max": 0.01})
    diverged, fine = row("m", *[math.inf] * 3), row("base", 0.004, 0.003, 0.005)
    assert decisions(decide(rules, "m", results(diverged, fine))) == ["fail"]
    check = decide(rules, "m", results(row("m", 0.004, 0.003, 0.005), row("base", *[math.inf] * 3))).checks[0]
    assert check.decision == "undecided" and check.reason.startswith("the baseline's quantized value is not finite")


def test_a_value_missing_on_both_sides_is_undecided_not_failed():
    verdict = decide(policy({"kind": "absolute", "max": 0.01}), "m", results(row("m", *[math.nan] * 3, fp=math.nan)))
    assert decisions(verdict) == ["undecided"] and verdict.checks[0].reason == "no finite value"
    diverged = decide(policy({"kind": "absolute", "max": 0.01}), "m", results(row("m", *[math.nan] * 3)))
    assert diverged.checks[0].reason.startswith("not finite: the quantized model's value")


def test_judge_explains_the_decision():
    assert judge(Estimate(0.009, 0.006, 0.012), 0.01, "ci") == ("undecided", "CI [0.006, 0.012] straddles 0.01")
    assert judge(Estimate(0.02, 0.015, 0.025), 0.01, "ci") == ("fail", "CI lower 0.015 > 0.01")
    assert judge(Estimate(0.005, math.nan, math.nan), 0.01, "ci")[0] == "undecided"
    assert judge(Estimate(0.005, math.nan, math.nan), 0.01, "point")[0] == "pass"


def test_a_result_not_stored_is_undecided():
    verdict = decide(policy({"kind": "absolute", "max": 0.01}), "missing", results(row("other", 0.001, 0, 0.002)))
    assert decisions(verdict) == ["undecided"] and "no stored loss result for missing" in verdict.checks[0].reason


@pytest.mark.parametrize(
    ("coverage", "min_coverage", "reason"),
    [
        ({"left_out_params": 4096}, None, "4096 parameters were left in full precision without an exclude pattern"),
        ({"fraction": 0.5}, 0.9, "coverage 50.0% of N is below the policy's min_coverage 90.0%"),
        ({"fraction": math.nan}, None, "no coverage recorded"),
    ],
)
def test_a_result_that_covers_too_little_of_the_model_is_never_a_pass(coverage, min_coverage, reason):
    checkpoint = "org/model@v1"
    gate = policy({"kind": "absolute", "max": 0.01}).model_copy(update={"min_coverage": min_coverage})
    verdict = decide(gate, checkpoint, results(row(checkpoint, 0.0, 0.0, 0.0, **coverage)))
    assert decisions(verdict) == ["undecided"] and reason in verdict.checks[0].reason
    allowed = gate.model_copy(update={"min_coverage": 0.4})
    assert decisions(decide(allowed, checkpoint, results(row(checkpoint, 0.0, 0.0, 0.0, fraction=0.5)))) == ["pass"]


def test_relative_budget_is_a_percentage_of_the_full_precision_value():
    rules = policy({"kind": "relative", "max": 1.0})
    passed = decide(rules, "m", results(row("m", 0.02, 0.015, 0.025, fp=4.0)))  # 0.5% [0.375, 0.625]
    failed = decide(rules, "m", results(row("m", 0.08, 0.06, 0.1, fp=4.0)))  # 2% [1.5, 2.5]
    assert decisions(passed) == ["pass"] and decisions(failed) == ["fail"]
    assert (passed.checks[0].value, passed.checks[0].ci_high) == pytest.approx((0.5, 0.625))
    assert passed.checks[0].quantity == "δ/fp (%)"


def test_baseline_budget_combines_the_two_half_widths_in_quadrature():
    rules = policy({"kind": "baseline", "checkpoint": "./old/", "max": 0.01})
    table = results(row("old", 0.010, 0.007, 0.014), row("new", 0.012, 0.008, 0.015))
    check = decide(rules, "new", table).checks[0]
    assert check.value == pytest.approx(0.002)
    assert check.ci_low == pytest.approx(0.002 - math.hypot(0.004, 0.004))
    assert check.ci_high == pytest.approx(0.002 + math.hypot(0.003, 0.003))
    assert check.decision == "pass" and check.quantity == "δ − δ(old)"
    worse = table.assign(delta=[0.0, 0.05], delta_ci_low=[0.0, 0.045], delta_ci_high=[0.0, 0.055])
    assert decisions(decide(rules, "new", worse)) == ["fail"]
    assert decisions(decide(rules, "new", table[table.checkpoint == "new"])) == ["undecided"]


def an_eval_that_produces(monkeypatch, *metrics: str) -> None:
    """Let the policy's eval produce these metrics too (as an lm-eval task would), without loading a task."""
    from ptq_eval.gate import checks

    monkeypatch.setattr(checks, "_produced", lambda evaluation: ("loss", "perplexity", *metrics))


def test_higher_is_better_metrics_count_a_drop_as_damage(monkeypatch):
    an_eval_that_produces(monkeypatch, "task/acc")
    rules = policy({"kind": "absolute", "metric": "acc", "higher_is_better": True, "max": 0.02})
    dropped = decide(rules, "m", results(row("m", -0.05, -0.06, -0.04, metric="acc", fp=0.6)))
    improved = decide(rules, "m", results(row("m", 0.01, 0.0, 0.02, metric="acc", fp=0.6)))
    assert decisions(dropped) == ["fail"] and dropped.checks[0].ci_low == pytest.approx(0.04)
    assert dropped.checks[0].value == pytest.approx(0.05) and dropped.checks[0].quantity == "drop"  # positive: worse
    assert decisions(improved) == ["pass"] and improved.checks[0].value == pytest.approx(-0.01)
    assert "| drop ≤ 0.02 |" in verdict_markdown(dropped)
    known = policy({"kind": "absolute", "metric": "acc", "max": 0.02})  # evals/metrics.py knows acc's direction
    assert decisions(decide(known, "m", results(row("m", -0.05, -0.06, -0.04, metric="acc", fp=0.6)))) == ["fail"]


def test_one_failure_fails_the_verdict_even_when_others_are_undecided():
    rules = policy({"kind": "absolute", "max": 0.01}, {"kind": "absolute", "metric": "perplexity", "max": 0.5})
    table = results(row("m", 0.05, 0.04, 0.06), row("m", 0.4, 0.3, 0.6, metric="perplexity"))
    verdict = decide(rules, "m", table)
    assert decisions(verdict) == ["fail", "undecided"] and verdict.decision == "fail"
    table = results(row("m", 0.005, 0.004, 0.006), row("m", 0.4, 0.3, 0.6, metric="perplexity"))
    assert decide(rules, "m", table).decision == "undecided"


def kumar_delta(params: float, tokens_per_param: float, bits: int) -> float:
    return float(np.exp(KUMAR.model(KUMAR.theta(KUMAR_TRUE), query(params, params * tokens_per_param, bits))[0][0]))


@pytest.fixture
def ladder_csv(tmp_path):
    simulated = simulate_results(KUMAR, KUMAR_TRUE, (3e4, 1e5, 3e5), (10, 40, 160), (3, 4, 6), noise=0.02)
    simulated = simulated.assign(method="rtn", eval=EVAL)
    louder = simulated.assign(delta=simulated.delta * 10, delta_ci_low=0.0, delta_ci_high=simulated.delta * 20)
    others = [louder.assign(eval="ppl:other:validation"), louder.assign(symmetric=False), louder.assign(metric="acc")]
    path = tmp_path / "ladder.csv"
    pd.concat([simulated, *others]).reindex(columns=COLUMNS).to_csv(path, index=False)
    return path


def test_forecast_budget_fits_the_law_of_its_eval_and_config_and_decides_on_its_interval(ladder_csv, tmp_path):
    # The fit source also holds another eval, an asymmetric grid and an accuracy, each 10x the damage: a forecast
    # must use only the rows of the release config's eval, metric and symmetry.
    truth = kumar_delta(FACTS["nonembedding_params"], 640, 4)
    budgets = [
        {"kind": "forecast", "tokens_per_param": 640, "fit": str(ladder_csv), "max": 2 * truth, "resamples": 30},
        {"kind": "forecast", "tokens_per_param": 640, "fit": str(ladder_csv), "max": truth / 2, "resamples": 30},
        {"kind": "forecast", "tokens_per_param": 640, "fit": str(tmp_path / "none.csv"), "max": 1.0},
    ]
    rules = policy(*budgets)
    fits = fit_forecasts(rules, tmp_path / "unused.sqlite")
    verdict = decide(rules, "m", results(row("m", 0.001, 0, 0.002)), fits)  # N: the checkpoint's
    assert decisions(verdict) == ["pass", "fail", "undecided"]
    assert verdict.checks[0].value == pytest.approx(truth, rel=0.1)
    assert verdict.checks[0].ci_low <= verdict.checks[0].value <= verdict.checks[0].ci_high
    assert "No such file" in verdict.checks[2].reason
    unknown_n = decide(rules, "not-measured", results(), fits).checks[0]
    assert unknown_n.decision == "undecided" and unknown_n.reason.startswith("N unknown")


def test_a_per_bit_forecast_at_a_width_it_was_not_fitted_to_says_so(tmp_path):
    simulated = simulate_results(KUMAR, KUMAR_TRUE, (3e4, 1e5, 3e5), (10, 40, 160), (3, 6), noise=0.02)
    path = tmp_path / "ladder.csv"
    simulated.assign(method="rtn", eval=EVAL).reindex(columns=COLUMNS).to_csv(path, index=False)
    budget = {"kind": "forecast", "law": "per_bit", "tokens_per_param": 640, "fit": str(path), "max": 1.0}
    rules = policy(budget | {"resamples": 10})
    fits = fit_forecasts(rules, tmp_path / "x.sqlite")
    check = decide(rules, "m", results(row("m", 0.001, 0, 0.002)), fits).checks[0]
    assert check.decision == "undecided"
    assert check.reason == "the per_bit law was fitted at 3, 6 bits, not 4: it has no value there"


def test_forecast_of_a_study_without_a_stored_store_is_undecided(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nladder: [a@b]\nquant: [{method: rtn, bits: 4}]\nevals: [{kind: perplexity}]\n")
    rules = policy({"kind": "forecast", "tokens_per_param": 80, "params": 1e5, "fit": str(study), "max": 0.05})
    check = decide(rules, "m", results(), fit_forecasts(rules, tmp_path / "absent.sqlite")).checks[0]
    assert check.decision == "undecided" and "no store at" in check.reason


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (
            {"kind": "typo", "max": 1},
            "budgets[0].kind: Input should be 'absolute', 'relative', 'baseline' or 'forecast'",
        ),
        ({"kind": "baseline", "max": 1}, "budgets[0]: kind baseline needs checkpoint"),
        ({"kind": "absolute", "max": 1, "fit": "x.csv"}, "budgets[0]: fit applies to kind forecast only, not absolute"),
        ({"kind": "absolute", "max": 1, "metric": "f1"}, "budgets[0]: metric 'f1' needs higher_is_better"),
        (
            {"kind": "forecast", "max": 1, "fit": "x.csv", "tokens_per_param": 9, "law": "kumr"},
            "budgets[0].law: 'kumr' is not a law; accepted: kumar, rival, per_bit, phase, phase_only",
        ),
        ({"kind": "absolute", "max": -1}, "budgets[0].max: Input should be greater than or equal to 0"),
        (
            {"kind": "absolute", "max": 1, "eval": "ppl:x"},
            "budgets: eval 'ppl:x' (budgets[0]) is not an eval of the policy; accepted: " + EVAL,
        ),
        ({"kind": "forecast", "max": 1, "fit": "x.csv"}, "budgets[0]: kind forecast needs tokens_per_param"),
    ],
)
def test_a_bad_policy_names_the_file_the_key_and_what_is_accepted(tmp_path, budget, message):
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps({"name": "p", "quant": [{"method": "rtn", "bits": 4}], "evals": [{"kind": "perplexity"}],
                                "budgets": [budget]}))  # fmt: skip
    with pytest.raises(PolicyError) as error:
        load_policy(path)
    assert f"{path}: " in str(error.value) and message in str(error.value)


def test_a_policy_has_no_ladder_and_a_missing_file_is_named(tmp_path):
    with pytest.raises(PolicyError, match="ladder: a policy has no ladder"):
        parse_policy({**policy({"kind": "absolute", "max": 1}).model_dump(), "ladder": ["x"]})
    with pytest.raises(PolicyError, match="absent.yaml: no such policy file"):
        load_policy(tmp_path / "absent.yaml")


def test_release_configs_must_be_told_apart_by_their_results():
    grids = [{"method": "gptq", "bits": 4}, {"method": "gptq", "bits": 4, "damp": 0.1}]
    with pytest.raises(PolicyError, match="quant: two configs differ only in their method's options"):
        parse_policy(policy({"kind": "absolute", "max": 1}).model_dump() | {"quant": grids})


def test_gate_study_runs_the_checkpoint_and_its_baselines():
    rules = policy({"kind": "baseline", "checkpoint": "old@v1", "max": 0.01}, {"kind": "absolute", "max": 0.01})
    study = gate_study(rules, "./new/")
    assert study.ladder == ["new", "old@v1"] and study.name == "release"
    assert {job.checkpoint.reference for job in expand_jobs(study)} == {"new", "old@v1"}


def test_markdown_verdict_has_a_heading_the_rule_and_one_row_per_check():
    verdict = decide(policy({"kind": "absolute", "max": 0.01}), "m", results(row("m", 0.05, 0.04, 0.06)))
    text = verdict_markdown(verdict)
    assert text.startswith("## Release gate: ❌ FAIL — `m`")
    assert "| rtn | 4 | channel | " + EVAL + " | loss | δ ≤ 0.01 | 0.05 [0.04, 0.06] | ❌ fail |" in text


def store_contents(path, policy_file, deltas: dict[str, tuple[float, float, float]]):
    """Store results for these checkpoints as the runner would, without running a model."""
    with Store(path) as store:
        for checkpoint, (delta, low, high) in deltas.items():
            for job in expand_jobs(gate_study(load_policy(policy_file), checkpoint)):
                metric = MetricRow("loss", 3.0 + delta, 4096, 3.0, delta, low, high)
                details = {"quant_report": {"coverage": COVERED}}
                store.save(job.key, job.describe(), FACTS, details, 0.0, [metric])


@pytest.mark.parametrize(
    ("checkpoint", "code", "decision"),
    [
        ("org/good@v1", 0, "pass"),
        ("org/bad@v1", 1, "fail"),
        ("org/close@v1", 2, "undecided"),
        ("org/none@v1", 2, "undecided"),
    ],
)
def test_cli_exit_codes_json_and_step_summary_on_stored_results(
    tmp_path, monkeypatch, capsys, checkpoint, code, decision
):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    store = tmp_path / "store.sqlite"
    deltas = {
        "org/good@v1": (0.004, 0.002, 0.006),
        "org/bad@v1": (0.05, 0.04, 0.06),
        "org/close@v1": (0.009, 0.006, 0.012),
    }
    store_contents(store, policy_file, deltas)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = tmp_path / "verdict.json"
    argv = ["gate", checkpoint, "--policy", str(policy_file), "--store", str(store), "--no-run", "--out", str(out)]
    assert cli.main(argv) == code
    record = json.loads(out.read_text())
    assert record["decision"] == decision and record["exit_code"] == code and record["checkpoint"] == checkpoint
    assert record["checks"][0]["budget_kind"] == "absolute" and record["counts"][decision] == 1
    printed = capsys.readouterr().out
    assert printed.startswith("## Release gate:") and summary.read_text() == printed + "\n"


def test_cli_bad_policy_exits_3(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("kind: absolute", "kind: absolut"))
    assert cli.main(["gate", "m", "--policy", str(bad), "--no-run"]) == 3
    assert f"{bad}: budgets[0].kind: Input should be" in capsys.readouterr().err


def test_gate_runs_missing_jobs_end_to_end(micro_ladder, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    policy_file = tmp_path / "policy.yaml"
    baseline = micro_ladder / "n7k" / "tpp10"
    policy_file.write_text(POLICY + f"  - {{kind: baseline, checkpoint: {baseline}, max: 1.0}}\n")
    store, out = tmp_path / "store.sqlite", tmp_path / "verdict.json"
    candidate = f"{micro_ladder}/n7k/tpp40/"
    argv = ["gate", candidate, "--policy", str(policy_file), "--store", str(store), "--out", str(out)]
    code = cli.main([*argv, "--summary", str(tmp_path / "summary.md")])
    assert (tmp_path / "summary.md").read_text().startswith("## Release gate:")
    record = json.loads(out.read_text())
    assert code == {"pass": 0, "fail": 1, "undecided": 2}[record["decision"]]
    assert [c["budget_kind"] for c in record["checks"]] == ["absolute", "baseline"]
    assert record["checks"][1]["decision"] == "pass" and record["checkpoint"] == candidate.rstrip("/")
    with Store(store) as opened:
        assert len(opened.frame()) == 4 * 6  # fp + rtn for two checkpoints: loss, perplexity, 4 distribution metrics
    assert cli.main(argv) == code
    assert "0 jobs run, 2 already in" in capsys.readouterr().err


def test_a_checkpoint_that_failed_in_the_run_is_never_decided_on_its_old_rows():
    checkpoint = "org/model@v1"
    gate = policy({"kind": "absolute", "max": 0.01})
    verdict = decide(gate, checkpoint, results(row(checkpoint, 0.0, 0.0, 0.0)), failed={checkpoint: "out of memory"})
    assert decisions(verdict) == ["undecided"] and "failed in this run: out of memory" in verdict.checks[0].reason


def test_a_forecast_past_a_supported_break_comes_from_the_broken_law(tmp_path):
    from ptq_eval.fit.laws import broken_law

    law = broken_law("broken_dn", False, (float(np.log(10)), float(np.log(160))))
    truth = {"C": 1.0, "gamma_1": 0.3, "gamma_2": 1.2, "gamma_N": 0.4, "break_D_over_N": 40.0}
    ratios = (5, 10, 20, 40, 80, 160, 320)
    simulated = simulate_results(law, truth, (2e4, 5e4, 1e5, 2e5), ratios, (4,), noise=0.03, measurement=0.002)
    path = tmp_path / "bent.csv"
    simulated.assign(method="rtn", eval=EVAL).reindex(columns=COLUMNS).to_csv(path, index=False)
    budget = {"kind": "forecast", "law": "per_bit", "tokens_per_param": 640, "fit": str(path), "max": 100.0}
    rules = policy(budget | {"resamples": 40})
    check = decide(rules, "m", results(row("m", 0.001, 0, 0.002)), fit_forecasts(rules, tmp_path / "x.sqlite")).checks[
        0
    ]
    expected = float(np.exp(law.model(law.theta(truth), query(1e5, 1e5 * 640, 4.0))[0][0]))
    assert "from the broken_dn law: δ bends at D/N" in check.reason
    assert check.value == pytest.approx(expected, rel=0.25)  # the slope after the break, not the one before


def test_a_budget_applies_only_to_the_evals_that_produce_its_metric(monkeypatch):
    with pytest.raises(
        PolicyError,
        match=r"budgets\[0\] \(relative, metric acc_norm\) applies to no eval: none "
        r"produces acc_norm. The evals produce: ppl:stdlib-python:validation: loss, perplexity",
    ):
        decide(policy({"kind": "relative", "metric": "acc_norm", "higher_is_better": True, "max": 5}), "m", results())
    data = {
        "name": "release",
        "quant": [{"method": "rtn", "bits": 4, "group_size": -1}],
        "evals": [{"kind": "perplexity", "tokens": 4096, "seq_len": 32}, {"kind": "lm_eval", "task": "hellaswag"}],
        "budgets": [{"kind": "absolute", "max": 0.01}],
    }
    from ptq_eval.gate import checks

    produced = {"ppl:stdlib-python:validation": ("loss", "perplexity"), "hellaswag": ("hellaswag/acc_norm",)}
    monkeypatch.setattr(checks, "_produced", lambda evaluation: produced[evaluation.name])
    verdict = decide(parse_policy(data), "m", results(row("m", 0.005, 0.004, 0.006)))
    assert [check.eval for check in verdict.checks] == ["ppl:stdlib-python:validation"]  # not hellaswag's
    assert decisions(verdict) == ["pass"]


def test_a_metric_that_names_several_is_refused_and_never_judged_on_the_first_row(monkeypatch):
    an_eval_that_produces(monkeypatch, "arc_easy/acc", "arc_challenge/acc")
    budget = {"kind": "absolute", "metric": "acc", "higher_is_better": True, "max": 0.05}
    with pytest.raises(PolicyError, match="metric acc names several metrics of eval .*arc_easy/acc, arc_challenge/acc"):
        decide(policy(budget), "m", results())
    an_eval_that_produces(monkeypatch, "arc_easy/acc")
    rows = results(row("m", 0.01, 0.0, 0.02, metric="arc_easy/acc"), row("m", 0.5, 0.4, 0.6, metric="arc_easy/acc,x"))
    check = decide(policy(budget), "m", rows).checks[0]
    assert check.decision == "undecided" and "matches several results" in check.reason
    named = decide(policy(budget | {"metric": "arc_easy/acc,none"}), "m", rows).checks[0]
    assert named.decision == "pass" and named.value == pytest.approx(-0.01)  # the filter named: that row only


def test_a_law_without_a_p_term_forecasts_only_at_its_own_p(tmp_path):
    simulated = simulate_results(KUMAR, KUMAR_TRUE, (3e4, 1e5, 3e5), (10, 20, 40, 80, 160), (6,), noise=0.02)
    path = tmp_path / "ladder.csv"
    simulated.assign(method="rtn", eval=EVAL).reindex(columns=COLUMNS).to_csv(path, index=False)
    budget = {"kind": "forecast", "law": "broken_dn", "tokens_per_param": 640, "fit": str(path), "max": 1.0}
    rules = policy(budget | {"resamples": 10})
    check = decide(rules, "m", results(row("m", 0.001, 0, 0.002)), fit_forecasts(rules, tmp_path / "x.sqlite")).checks[
        0
    ]
    assert check.decision == "undecided"
    assert check.reason == "the broken_dn law has no P term and was fitted at P=6, not 4: it has no value there"


@pytest.mark.parametrize(
    ("measured", "expected"),
    [((0.004, 0.003, 0.005), "pass"), ((0.05, 0.045, 0.055), "fail"), ((0.019, 0.015, 0.023), "undecided")],
)
def test_a_kld_budget_bounds_the_divergence_itself(measured, expected):
    """KLD has no full-precision term (fp is 0): δ is the divergence, lower is better."""
    rules = policy({"kind": "absolute", "metric": "kld", "max": 0.02})
    verdict = decide(rules, "m", results(row("m", *measured, metric="kld", fp=0.0)))
    assert decisions(verdict) == [expected] and verdict.checks[0].quantity == "δ"
    with pytest.raises(PolicyError, match="is 0 in full precision, so a relative budget has nothing to divide by"):
        policy({"kind": "relative", "metric": "kld", "max": 5})


@pytest.mark.parametrize(
    ("measured", "expected"),
    [((0.01, 0.0, 0.03), "pass"), ((0.12, 0.08, 0.16), "fail"), ((0.04, 0.02, 0.07), "undecided")],
)
def test_a_flips_budget_fails_a_release_whose_answers_changed_even_when_accuracy_did_not(
    monkeypatch, measured, expected
):
    an_eval_that_produces(monkeypatch, "task/acc", "task/flips")
    rules = policy(
        {"kind": "absolute", "metric": "acc", "max": 0.05}, {"kind": "absolute", "metric": "flips", "max": 0.05}
    )
    unchanged_accuracy = row("m", 0.0, -0.02, 0.02, metric="task/acc", fp=0.6)
    verdict = decide(rules, "m", results(unchanged_accuracy, row("m", *measured, metric="task/flips", fp=0.0)))
    assert decisions(verdict) == ["pass", expected] and verdict.decision == expected


def test_top1_agreement_counts_its_drop_as_damage():
    rules = policy({"kind": "absolute", "metric": "top1_agree", "max": 0.05})
    agreed = decide(rules, "m", results(row("m", -0.02, -0.03, -0.01, metric="top1_agree", fp=1.0)))
    disagreed = decide(rules, "m", results(row("m", -0.2, -0.25, -0.15, metric="top1_agree", fp=1.0)))
    assert decisions(agreed) == ["pass"] and agreed.checks[0].quantity == "drop"
    assert decisions(disagreed) == ["fail"] and disagreed.checks[0].value == pytest.approx(0.2)


def test_a_kv_cache_release_is_judged_and_forecast_on_its_own_rows_and_law(tmp_path):
    # The fit source holds the KV cache's rows (int asymmetric per token, P its bits) beside weight-only RTN and
    # fp8 KV rows at the same bits, each 10x the damage: the forecast reads only the release config's rows.
    simulated = simulate_results(KUMAR, KUMAR_TRUE, (3e4, 1e5, 3e5), (10, 40, 160), (3, 4, 6), noise=0.02)
    kv = simulated.assign(method="fp", eval=EVAL, kv_cache="int token asym", kv_bits=simulated.bits.astype(float))
    louder = kv.assign(delta=kv.delta * 10, delta_ci_low=0.0, delta_ci_high=kv.delta * 20)
    others = [louder.assign(method="rtn", kv_cache="", kv_bits=math.nan), louder.assign(kv_cache="fp8_e4m3 token")]
    path = tmp_path / "ladder.csv"
    columns = [*COLUMNS, "activations", "activation_bits", "kv_cache", "kv_bits"]
    pd.concat([kv, *others]).reindex(columns=columns).to_csv(path, index=False)
    truth = kumar_delta(FACTS["nonembedding_params"], 640, 4)
    rules = parse_policy({
        "name": "release", "quant": [{"kv_cache": {"format": "int", "bits": 4, "symmetric": False}}],
        "evals": [{"kind": "perplexity", "tokens": 4096, "seq_len": 32}],
        "budgets": [{"kind": "absolute", "max": 0.01},
                    {"kind": "forecast", "tokens_per_param": 640, "fit": str(path), "max": 2 * truth, "resamples": 30}],
    })  # fmt: skip
    fits = fit_forecasts(rules, tmp_path / "unused.sqlite")
    # a config keeping its weights rounds none: its weight coverage (0) says nothing of it under min_coverage
    rules = rules.model_copy(update={"min_coverage": 0.9})
    measured = row("m", 0.004, 0.002, 0.006, fraction=0.0, matrices=0, params=0)
    measured |= {"method": "fp", "kv_cache": "int token asym", "kv_bits": 4.0}
    weights_only = row("m", 0.5, 0.4, 0.6)  # RTN 4-bit alone, same bits: never judged for the KV config
    table = pd.DataFrame([measured, weights_only], columns=columns)
    verdict = decide(rules, "m", table, fits)
    assert decisions(verdict) == ["pass", "pass"]
    assert verdict.checks[0].value == pytest.approx(0.004)
    assert verdict.checks[1].value == pytest.approx(truth, rel=0.1)
