"""Scaling-law fits on synthetic results: recovery, censoring, model choice, forecasts, keys (eval, metric, quant
config), clear errors, and `ptq-eval fit`."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from simulate import simulate_results

from ptq_eval.cli import main
from ptq_eval.fit import (
    KUMAR,
    PHASE,
    PHASE_ONLY,
    RIVAL,
    FitError,
    FitKey,
    FitOptions,
    compare_phase,
    critical_tokens,
    fit_base,
    fit_delta,
    fit_keys,
    fit_study,
    max_tokens_per_param,
    min_bits,
    predict_delta,
    select,
)
from ptq_eval.report.plots import delta_by_phase
from ptq_eval.report.study import phase_verdict
from ptq_eval.results import COLUMNS
from ptq_eval.store import Store

KUMAR_TRUE = {"C_T": 0.02, "gamma_D": 0.6, "gamma_N": 0.4, "gamma_post": 1.2}
RIVAL_TRUE = {"k": 1.0, "alpha": 0.4, "beta": 0.6, "gamma": 3.6}
BASE_TRUE = {"E": 1.7, "A": 400.0, "B": 1000.0, "alpha": 0.35, "beta": 0.3}
SIZES, RATIOS = (2e4, 5e4, 1e5, 2e5), (5, 10, 20, 40, 80, 160, 320)
FAST = FitOptions(resamples=40, validate=False)
SIM = FitKey("sim", "loss", "sim", -1, True)


def kumar_results(seed=0, sizes=SIZES, ratios=RATIOS, bits=(3, 4, 5, 6), noise=0.1, **kwargs):
    return simulate_results(KUMAR, KUMAR_TRUE, sizes, ratios, bits, noise, seed, **kwargs)


def test_kumar_recovers_every_parameter_within_its_bootstrap_ci():
    covered = []
    for seed in range(5):
        fit = fit_delta(kumar_results(seed), "kumar", SIM, FitOptions(resamples=80, seed=seed, validate=False))
        table = fit.table().set_index("parameter")
        covered.append(all(table.ci_low[p] <= v <= table.ci_high[p] for p, v in KUMAR_TRUE.items()))
        assert table.value.to_dict() == pytest.approx(KUMAR_TRUE, rel=0.5)  # C_T: an intercept far from the data
        assert table.value.drop("C_T").to_dict() == pytest.approx(
            {k: v for k, v in KUMAR_TRUE.items() if k != "C_T"}, rel=0.1
        )
        assert fit.scores["n_points"] == 112 and fit.scores["excluded"] == fit.scores["censored"] == 0
    assert sum(covered) >= 4, covered


def test_censored_fit_recovers_the_exponents_where_exclusion_is_biased():
    # Realistic noise: δ measured with additive noise (σ 0.005 nats), so about a third of the points (high bits,
    # low D/N) have a CI reaching zero; excluding them keeps the ones whose noise came out high.
    estimates = {"censor": [], "exclude": []}
    for seed in range(10):
        results = kumar_results(seed, bits=(3, 4, 5, 6, 7, 8), noise=0.05, measurement=0.005)
        for censoring, found in estimates.items():
            options = FitOptions(resamples=0, seed=seed, validate=False, censoring=censoring)
            fit = fit_delta(results, "kumar", SIM, options)
            found.append(KUMAR.values(fit.theta))
            assert fit.scores["censored" if censoring == "censor" else "excluded"] > 40
    truth = np.array(list(KUMAR_TRUE.values()))
    bias = {censoring: np.mean(found, axis=0) - truth for censoring, found in estimates.items()}
    _, d_exclude, n_exclude, post_exclude = bias["exclude"]
    assert post_exclude > 0.04 and d_exclude < -0.01 and n_exclude < -0.005  # exclusion: biased
    _, d_censor, n_censor, post_censor = bias["censor"]
    assert abs(post_censor) < 0.02 and abs(d_censor) < 0.01 and abs(n_censor) < 0.01  # censoring: recovered


def test_held_out_error_picks_the_generating_law():
    for truth, law, values in (("kumar", KUMAR, KUMAR_TRUE), ("rival", RIVAL, RIVAL_TRUE)):
        results = simulate_results(law, values, SIZES, RATIOS, (2, 3, 4, 6, 8), noise=0.05, seed=3)
        fits = {name: fit_delta(results, name, SIM, FitOptions(resamples=0)) for name in ("kumar", "rival")}
        assert fits[truth].table().set_index("parameter").value.to_dict() == pytest.approx(values, rel=0.15)
        other = "rival" if truth == "kumar" else "kumar"
        for score in ("loco_rmse_log", "largest_d_rmse_log"):
            assert fits[truth].scores[score] < fits[other].scores[score], (truth, score)
        assert fits[truth].scores["r2"] > 0.99 and fits[truth].scores["rmse_log"] < 0.06


PHASE_TRUE = KUMAR_TRUE | {"beta": 1.5}


def phase_results(law=PHASE, values=PHASE_TRUE, phases=(0.0, 0.5, 1.0), seed=0):
    """One synthetic ladder per learning-rate phase, the same (N, D) in each."""
    frames = [simulate_results(law, values, SIZES, RATIOS, (3, 4, 6), 0.05, seed + i, phase=phase)
              for i, phase in enumerate(phases)]  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def test_phase_laws_recover_the_phase_term_and_held_out_error_tells_phase_from_tokens():
    tokens_and_phase = phase_results()
    fits = {name: fit_delta(tokens_and_phase, name, SIM, FitOptions(resamples=0)) for name in ("kumar", "phase")}
    assert fits["phase"].table().set_index("parameter").value.to_dict() == pytest.approx(PHASE_TRUE, rel=0.15)
    assert fits["phase"].scores["loco_rmse_log"] < fits["kumar"].scores["loco_rmse_log"] / 2
    only_phase = phase_results(PHASE_ONLY, {"C": 0.5, "gamma_N": 0.4, "gamma_post": 1.2, "beta": 2.0}, seed=5)
    fits = {name: fit_delta(only_phase, name, SIM, FitOptions(resamples=0)) for name in ("kumar", "phase_only")}
    assert fits["phase_only"].scores["loco_rmse_log"] < fits["kumar"].scores["loco_rmse_log"]
    assert fits["phase_only"].table().set_index("parameter").value["beta"] == pytest.approx(2.0, rel=0.15)


def test_the_phase_comparison_and_its_figure():
    results = phase_results()
    fitted = fit_study(results, options=FitOptions(resamples=20), laws=("kumar", "phase", "phase_only"))
    table = compare_phase(fitted)
    assert list(table.law) == ["kumar", "phase", "phase_only"]
    rows = table.set_index("law")
    assert rows.loc["phase", "rmse_log"] < rows.loc["kumar", "rmse_log"]
    assert rows.loc["kumar", "beta"] == "" and rows.loc["phase_only", "gamma_D"] == ""
    low, high = map(float, rows.loc["phase", "beta"].split("[")[1].rstrip("]").split(","))
    assert 0 < low <= PHASE_TRUE["beta"] <= high
    phase_fit = next(fit for fit in fitted.fits if fit.law.name == "phase")
    figure = delta_by_phase(results, [phase_fit], 4)
    assert figure.png.startswith(b"\x89PNG") and "decay_done" in figure.caption
    assert phase_verdict(fitted) == (
        "Measured here, over 1 configs: phase alone predicts held-out checkpoints better than tokens in 0 of the 1 "
        "where it could be fitted; phase on top of tokens improves the held-out error in 1 of 1, and its β's 95% "
        "interval excludes 0 in 1 of 1."
    )
    annealed = fit_study(kumar_results(), options=FitOptions(resamples=0, validate=False), laws=("kumar",))
    assert compare_phase(annealed).empty


def test_phase_laws_need_several_phases_and_a_known_one():
    annealed = kumar_results()
    studied = fit_study(annealed, options=FitOptions(resamples=0, validate=False))
    assert {fit.law.name for fit in studied.fits} == {"kumar", "rival", "per_bit", "broken_d", "broken_dn"}
    assert any("phase, phase_only not fitted" in note and "1.00" in note for note in studied.notes())
    with pytest.raises(FitError, match="same learning-rate phase"):
        fit_delta(annealed, "phase", SIM, FAST)
    mixed = phase_results()
    mixed.loc[mixed.checkpoint.str.startswith("sim-phase0.5/"), "decay_done"] = math.nan
    fit = fit_delta(mixed, "phase", SIM, FitOptions(resamples=0, validate=False))
    assert set(fit.excluded.reason) == {"learning-rate phase (decay_done) unknown for this checkpoint"}
    assert len(fit.excluded) == len(mixed) // 3


def test_base_loss_recovery_and_critical_data_size():
    results = kumar_results(seed=1, base=BASE_TRUE, base_noise=1e-3)
    base = fit_base(results, SIM, FAST)
    fitted = base.table().set_index("parameter").value
    assert fitted[["E", "A", "B"]].to_dict() == pytest.approx({k: BASE_TRUE[k] for k in "EAB"}, rel=0.2)
    assert fitted[["alpha", "beta"]].to_dict() == pytest.approx({k: BASE_TRUE[k] for k in ("alpha", "beta")}, abs=0.03)
    fit = fit_delta(results, "kumar", SIM, FAST)
    critical = critical_tokens(fit, base, 1e5, 4)
    assert np.isfinite(critical.value) and critical.ci_low <= critical.value <= critical.ci_high

    def total(tokens):
        return base.predict(1e5, tokens)[0] + fit.predict(1e5, tokens, 4)[0]

    d = critical.value
    slope = (total(d * 1.001) - total(d / 1.001)) / (d * 0.002)
    assert abs(slope) * d < 1e-6 and total(d / 2) > total(d) < total(d * 2)
    # Closed form for these two laws: γ_D δ(D*) = β B D*^-β.
    c, g_d, g_n, g_post = KUMAR.values(fit.theta)
    _, _, b, _, beta = base.law.values(base.theta)
    closed = (beta * b / (g_d * c * 1e5**-g_n * np.exp(-4 / g_post))) ** (1 / (g_d + beta))
    assert d == pytest.approx(closed, rel=1e-6)


def test_budget_forecasts_are_consistent():
    fit = fit_delta(kumar_results(), "kumar", SIM, FAST)
    ratio = max_tokens_per_param(fit, 1e5, 4, 0.05)
    assert ratio.ci_low <= ratio.value <= ratio.ci_high
    assert predict_delta(fit, 1e5, 1e5 * ratio.value, 4).value == pytest.approx(0.05, rel=1e-8)
    bits = min_bits(fit, 1e5, 100, 0.05)
    assert bits.value == int(bits.value) and bits.ci_low <= bits.value <= bits.ci_high
    assert fit.predict(1e5, 1e7, bits.value)[0] <= 0.05 < fit.predict(1e5, 1e7, bits.value - 1)[0]
    assert max_tokens_per_param(fit, 1e5, 16, 0.05).value == np.inf
    assert min_bits(fit, 1e5, 100, 1e-12).value == np.inf


def test_points_whose_ci_reaches_zero_are_censored_or_excluded_and_reported():
    results = kumar_results(bits=(3, 4, 5, 6, 8))
    eight = results.bits == 8
    results.loc[eight, "delta_ci_low"] = -results.loc[eight, "delta"]
    results.loc[eight & (results.tokens_per_param == 5), "delta"] = -1e-4
    results.loc[eight & (results.tokens_per_param == 10), "delta_ci_high"] = -1e-5  # significantly below zero
    censored = fit_delta(results, "kumar", SIM, FAST)
    assert censored.scores["n_points"] == 136 and censored.scores["censored"] == 24
    assert censored.excluded.reason.value_counts().to_dict() == {
        "delta CI at or below zero (delta_ci_high <= 0): no bound on a positive delta": 4
    }
    assert censored.table().set_index("parameter").value.to_dict() == pytest.approx(KUMAR_TRUE, rel=0.2)
    assert censored.scores["bound_violations"] == 0  # the law stays below every censored point's CI
    # The old rule, still an option: every point whose CI reaches zero left out.
    fit = fit_delta(results, "kumar", SIM, FitOptions(resamples=40, validate=False, censoring="exclude"))
    assert fit.scores["n_points"] == 112 and fit.scores["excluded"] == 28 and fit.scores["censored"] == 0
    assert fit.excluded.reason.value_counts().to_dict() == {
        "delta CI includes zero (delta_ci_low <= 0)": 24,
        "delta <= 0 or missing (no measured damage)": 4,
    }
    assert fit.table().set_index("parameter").value.to_dict() == pytest.approx(KUMAR_TRUE, rel=0.2)
    # A width with too few measured points for its own per-bit fit is excluded from that law, with its reason.
    results.loc[(results.bits == 6) & (results.nonembedding_params > 2e4), "delta"] = -1.0
    per_bit = fit_delta(results, "per_bit", SIM, FitOptions(resamples=40, validate=False, censoring="exclude"))
    assert per_bit.law.per_bits == (3, 4, 5) and per_bit.table().parameter.str.endswith("P6").sum() == 0
    assert per_bit.excluded.reason.str.contains("one model size").sum() == 7


def test_a_censored_fit_that_sinks_below_every_detection_limit_is_refused():
    # CIs that barely clear zero put each point's detection limit at its δ: a law below every limit costs nothing
    # (the degenerate corner of the censored objective), so the fit must be refused, not reported.
    results = kumar_results().assign(delta_ci_low=lambda r: r.delta * 1e-6)
    with pytest.raises(FitError, match="kumar: the censored fit lies below the detection limit of all but 0 of 112"):
        fit_delta(results, "kumar", SIM, FAST)
    excluded = fit_delta(results, "kumar", SIM, FitOptions(resamples=4, validate=False, censoring="exclude"))
    assert excluded.table().set_index("parameter").value.to_dict() == pytest.approx(KUMAR_TRUE, rel=0.5)


def test_an_unknown_censoring_option_names_the_accepted_ones():
    with pytest.raises(FitError, match="censoring='drop' is not accepted; use one of censor, exclude"):
        FitOptions(censoring="drop")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sizes": (5e4, 1e5), "ratios": (20,), "bits": (3, 4)}, "only 4 usable points"),
        ({"sizes": (1e5,)}, "measure at least two model sizes"),
        ({"bits": (4,)}, "measure at least two bit widths"),
        ({"ratios": (20,)}, "measure at least two tokens-per-parameter ratios"),
    ],
)
def test_data_that_cannot_identify_the_law_says_what_to_measure(change, message):
    with pytest.raises(FitError, match=message):
        fit_delta(kumar_results(**change), "kumar", SIM, FAST)


def test_no_significant_damage_is_an_error():
    results = kumar_results()
    results["delta_ci_low"] = -1.0
    with pytest.raises(FitError, match="none of the 112 .* significantly above zero .*112 censored"):
        fit_delta(results, "kumar", SIM, FAST)
    results["delta"] = -results.delta
    with pytest.raises(FitError, match="112 with delta <= 0"):
        fit_delta(results, "rival", SIM, FitOptions(resamples=4, censoring="exclude"))


def as_metric(results: pd.DataFrame, eval_name: str, metric: str, **config) -> pd.DataFrame:
    """Simulated loss results (nats/token) restated as another loss metric of another eval."""
    out = results.assign(eval=eval_name, metric=metric, **config)
    columns = ["delta", "delta_ci_low", "delta_ci_high"]
    if metric == "bits_per_byte":
        out[[*columns, "fp_value", "quant_value"]] = results[[*columns, "fp_value", "quant_value"]] / math.log(2)
    elif metric.endswith("perplexity"):
        out["fp_value"], out["quant_value"] = np.exp(results.fp_value), np.exp(results.quant_value)
        out[columns] = np.exp(results.fp_value).to_numpy()[:, None] * np.expm1(results[columns])
    return out


def scaled(results: pd.DataFrame, factor: float) -> pd.DataFrame:
    columns = ["delta", "delta_ci_low", "delta_ci_high"]
    return results.assign(**{column: results[column] * factor for column in columns})


def mixed_results() -> pd.DataFrame:
    """Two evals (perplexity: loss and perplexity; lm-eval: bits_per_byte, word_perplexity and acc), one of them
    also asymmetric (with 10× the damage), and GPTQ with and without act_order (2× apart)."""
    loss = kumar_results(sizes=(3e4, 1e5, 3e5), ratios=(10, 40, 160), bits=(3, 4, 6), noise=0.02, base=BASE_TRUE)
    loss = loss.assign(method="rtn")
    frames = [
        as_metric(loss, "ppl", "loss"),
        as_metric(loss, "ppl", "perplexity"),
        as_metric(scaled(loss, 10), "ppl", "loss", symmetric=False),
        as_metric(loss, "task", "bits_per_byte"),
        as_metric(loss, "task", "word_perplexity"),
        as_metric(loss, "task", "acc").assign(delta=0.01),
    ]
    for act_order, factor in ((True, 1), (False, 2)):
        gptq = as_metric(scaled(loss, factor), "ppl", "loss", method="gptq", act_order=act_order, sequential="block")
        frames.append(gptq)
    return pd.concat(frames, ignore_index=True)


def test_keys_keep_evals_metrics_symmetry_and_gptq_options_apart():
    results = mixed_results()
    keys, notes = fit_keys(results)
    assert {key.label() for key in keys} == {
        "ppl loss rtn -1 True", "ppl loss rtn -1 False", "ppl loss gptq -1 True act_order=False",
        "ppl loss gptq -1 True act_order=True", "task bits_per_byte rtn -1 True",
    }  # fmt: skip
    assert notes == [
        "ppl: perplexity not fitted separately (the same summed loss as loss)",
        "task: acc not fitted (no law reads them: reported, not fitted)",
        "task: word_perplexity not fitted separately (the same summed loss as bits_per_byte)",
    ]
    with pytest.raises(FitError, match=r"differ in eval \(ppl, task\); give eval"):
        select(results, FitKey(method="rtn"))
    with pytest.raises(FitError, match=r"differ in symmetric \(True, False\)"):
        select(results, FitKey("ppl", "loss", "rtn"))
    with pytest.raises(FitError, match="metric 'acc' is not one a law is fitted to"):
        select(results, FitKey("task", "acc"))
    # Each key's law is its own (not pooled): 10x the damage asymmetric, 2x without act_order; a loss stated in
    # bits per byte or as a word perplexity is the same δ once in nats.
    point = FitOptions(resamples=0, validate=False)
    c_t = {key.label(): fit_delta(results, "kumar", key, point).table().set_index("parameter").value["C_T"]
           for key in [*keys, FitKey("task", "word_perplexity")]}  # fmt: skip
    assert c_t["ppl loss rtn -1 False"] == pytest.approx(10 * c_t["ppl loss rtn -1 True"], rel=1e-3)
    assert c_t["ppl loss gptq -1 True act_order=False"] == pytest.approx(2 * c_t["ppl loss rtn -1 True"], rel=1e-3)
    for other in ("task bits_per_byte rtn -1 True", "task word_perplexity"):
        assert c_t[other] == pytest.approx(c_t["ppl loss rtn -1 True"], rel=1e-3)
    pairs = (("task", "word_perplexity"), ("ppl", "loss"))
    bases = [fit_base(results, FitKey(*pair), point).table().value for pair in pairs]
    assert list(bases[0]) == pytest.approx(list(bases[1]), rel=1e-4)  # log fp of a word perplexity: nats per word


def test_cli_fit_of_a_study_with_two_evals_keeps_them_apart_and_saves_every_key(tmp_path, capsys):
    csv = tmp_path / "mixed.csv"
    mixed = mixed_results().query("method == 'rtn' and symmetric")
    mixed.reindex(columns=COLUMNS).to_csv(csv, index=False)
    store = tmp_path / "fits.sqlite"
    args = ["fit", "--results", str(csv), "--store", str(store), "--resamples", "4", "--params", "1e5", "--bits", "4"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "| kumar | ppl | loss | rtn | int | -1 | True | gamma_post |" in captured.out
    assert "| kumar | task | bits_per_byte | rtn | int | -1 | True | gamma_post |" in captured.out
    assert "| kumar | task | bits_per_byte | rtn | int | -1 | True | critical_tokens |" in captured.out
    assert "note: task: acc not fitted" in captured.err
    with Store(store) as opened:
        saved = opened.fits("mixed")
    assert set(saved.censoring) == {"censor"} and set(saved[saved.law != "base"].symmetric) == {True}
    for law in ("kumar", "base"):
        assert sorted(saved[saved.law == law].metric) == ["bits_per_byte", "loss"], law
    assert main([*args, "--eval", "task", "--metric", "bits_per_byte", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {(row["eval"], row["metric"]) for row in printed["parameters"]} == {("task", "bits_per_byte")}


def test_cli_fit_prints_tables_and_forecasts_and_saves_to_the_store(tmp_path, capsys):
    csv = tmp_path / "sim.csv"
    kumar_results(sizes=(3e4, 1e5, 3e5), ratios=(10, 40, 160), bits=(3, 4, 6), base=BASE_TRUE).reindex(
        columns=COLUMNS
    ).to_csv(csv, index=False)
    store = tmp_path / "fits.sqlite"
    forecasts = ["--predict", "N=1e5,D=3e7,P=4", "--budget", "0.05", "--bits", "4", "--params", "1e5"]
    args = ["fit", "--results", str(csv), "--store", str(store), "--resamples", "8", *forecasts]
    assert main(args + ["--tokens-per-param", "100"]) == 0
    out = capsys.readouterr().out
    assert "| kumar | sim | loss | sim | int | -1 | True | gamma_post |" in out
    assert "| base | sim | loss |  |  |  |  | E |" in out
    assert "| law | eval | metric | method | format | group_size | symmetric | n_points | censored | excluded |" in out
    for forecast in ("delta", "max_tokens_per_param", "min_bits", "critical_tokens"):
        assert f"| kumar | sim | loss | sim | int | -1 | True | {forecast} |" in out
    with Store(store) as opened:
        saved = opened.fits("sim").set_index("law")
    assert set(saved.index) - {"broken_d", "broken_dn"} == {"kumar", "rival", "per_bit", "base"}
    assert set(saved.params["kumar"]) == set(KUMAR_TRUE) and saved.provenance["kumar"]["resamples"] == 8
    assert saved.goodness["kumar"]["n_points"] == 27 and saved.group_size.isna()["base"]

    assert main(args + ["--format", "json", "--law", "rival", "--censoring", "exclude"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {row["parameter"] for row in printed["parameters"] if row["law"] == "rival"} == set(RIVAL_TRUE)
    assert [row["forecast"] for row in printed["forecasts"]] == ["delta", "max_tokens_per_param", "critical_tokens"]
    with Store(store) as opened:
        assert sorted(opened.fits("sim").query("law == 'kumar'").censoring) == ["censor", "exclude"]


def test_cli_fit_without_significant_damage_exits_3(tmp_path, capsys):
    csv = tmp_path / "flat.csv"
    kumar_results().assign(delta_ci_low=-1.0).reindex(columns=COLUMNS).to_csv(csv, index=False)
    assert main(["fit", "--results", str(csv), "--resamples", "2"]) == 3
    assert "significantly above zero" in capsys.readouterr().err


def test_a_study_fit_without_loss_metrics_says_which_metrics_it_skipped():
    results = kumar_results().assign(metric="acc")
    with pytest.raises(FitError, match=r"no loss results for any key \(sim: acc not fitted"):
        fit_study(results)


def test_a_fit_of_results_already_fitted_loads_its_estimates_from_the_store(tmp_path, monkeypatch):
    from ptq_eval.fit import estimate

    computed = []
    compute = estimate._estimate
    monkeypatch.setattr(estimate, "_estimate", lambda task: computed.append(task.law.name) or compute(task))
    monkeypatch.setattr(estimate, "available_cpus", lambda: 1)  # counted in this process
    results, options = kumar_results(0, sizes=(3e4, 1e5), bits=(3, 4)), FitOptions(resamples=6)
    with Store(tmp_path / "fits.sqlite") as store:
        first = fit_study(results, options=options, laws=("kumar", "rival"), cache=store)
        assert sorted(computed) == ["kumar", "rival"]
        again = fit_study(results, options=options, laws=("kumar", "rival"), cache=store)
        assert len(computed) == 2  # nothing estimated again
        pd.testing.assert_frame_equal(first.table(), again.table())
        pd.testing.assert_frame_equal(first.goodness(), again.goodness())
        assert np.array_equal(first.fits[0].boot, again.fits[0].boot, equal_nan=True)
        # Other results or other options are estimated afresh, never served a stale estimate.
        fit_study(results.assign(delta=results.delta * 1.01), options=options, laws=("kumar",), cache=store)
        fit_study(results, options=FitOptions(resamples=6, seed=1), laws=("kumar",), cache=store)
        assert len(computed) == 4


def test_intervals_are_withheld_when_few_bootstrap_resamples_can_be_refit():
    """Every size at one D/N and one checkpoint off it: a resample without that checkpoint cannot identify γ_D,
    and the resamples that can all hold it, so their interval would be far too narrow."""
    on_ratio = kumar_results(sizes=SIZES, ratios=(20,), bits=(3, 4, 6))
    results = pd.concat([on_ratio, kumar_results(sizes=(5e4,), ratios=(160,), bits=(3, 4, 6))], ignore_index=True)
    fitted = fit_study(results, options=FitOptions(resamples=40, validate=False), laws=("kumar",))
    fit = fitted.fits[0]
    assert fit.scores["resamples_refit"] < 36 and fit.table().ci_low.isna().all()
    assert any("intervals withheld: only" in note for note in fitted.notes())
    assert fit_delta(kumar_results(), "kumar", SIM, FAST).scores["resamples_refit"] == 40  # a full ladder: all refit


def test_smallest_bit_width_is_unknown_across_widths_a_per_bit_law_did_not_fit():
    results = kumar_results(bits=(3, 8))
    per_bit = fit_delta(results, "per_bit", SIM, FAST)
    assert math.isnan(min_bits(per_bit, 1e5, 100, 0.05).value)  # 3 bits is over budget; 4-7 were never fitted
    assert math.isnan(max_tokens_per_param(per_bit, 1e5, 5, 0.05).value)  # no law at 5 bits: no answer, no crash
    assert min_bits(fit_delta(results, "kumar", SIM, FAST), 1e5, 100, 0.05).value == 5


def test_with_d_unknown_everywhere_the_error_asks_for_tokens_not_more_measurements():
    unknown = kumar_results().assign(tokens=math.nan, tokens_per_param=math.nan)
    with pytest.raises(FitError, match=r"give each checkpoint's tokens seen \(D\) in the study"):
        fit_delta(unknown, "kumar", SIM, FAST)


def test_p_is_counted_from_a_results_csv_without_bits_per_weight():
    from ptq_eval.fit.data import precision

    frame = pd.DataFrame({"bits": [4, 4, 4], "group_size": [128, -1, 32], "symmetric": [True, True, False]})
    assert list(precision(frame)) == [4.125, 4.0, 4 + (16 + 4) / 32]
    assert list(precision(frame.assign(format=["nvfp4", None, None], group_size=[16, -1, 32]))) == [4.5, 4.0, 4.625]


def test_min_bits_finds_a_p_that_is_not_an_integer():
    from ptq_eval.fit import min_bits

    results = simulate_results(KUMAR, KUMAR_TRUE, SIZES, RATIOS, (3, 4), noise=0.02).assign(group_size=128)
    fit = fit_delta(results, "per_bit", FitKey(), FitOptions(resamples=0, validate=False))
    assert fit.law.per_bits == (3.125, 4.125)
    delta = fit.predict(1e5, 1e5 * 20, 4.125)[0]
    assert min_bits(fit, 1e5, 20, 1.01 * delta).value == 4.125  # not inf for want of an integer width
