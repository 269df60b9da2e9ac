"""Scaling-law fits on synthetic results: recovery, model choice, forecasts, clear errors, and `ptq-eval fit`."""

import json

import numpy as np
import pytest

from ptq_eval.cli import main
from ptq_eval.fit import (
    KUMAR,
    RIVAL,
    FitError,
    FitOptions,
    critical_tokens,
    fit_base,
    fit_delta,
    max_tokens_per_param,
    min_bits,
    predict_delta,
    simulate_results,
)
from ptq_eval.results import COLUMNS
from ptq_eval.store import Store

KUMAR_TRUE = {"C_T": 0.02, "gamma_D": 0.6, "gamma_N": 0.4, "gamma_post": 1.2}
RIVAL_TRUE = {"k": 1.0, "alpha": 0.4, "beta": 0.6, "gamma": 3.6}
BASE_TRUE = {"E": 1.7, "A": 400.0, "B": 1000.0, "alpha": 0.35, "beta": 0.3}
SIZES, RATIOS = (2e4, 5e4, 1e5, 2e5), (5, 10, 20, 40, 80, 160, 320)
FAST = FitOptions(resamples=40, validate=False)


def kumar_results(seed=0, sizes=SIZES, ratios=RATIOS, bits=(3, 4, 5, 6), noise=0.1, **kwargs):
    return simulate_results(KUMAR, KUMAR_TRUE, sizes, ratios, bits, noise, seed, **kwargs)


def test_kumar_recovers_every_parameter_within_its_bootstrap_ci():
    covered = []
    for seed in range(5):
        fit = fit_delta(kumar_results(seed), "kumar", "sim", -1, FitOptions(resamples=80, seed=seed, validate=False))
        table = fit.table().set_index("parameter")
        covered.append(all(table.ci_low[p] <= v <= table.ci_high[p] for p, v in KUMAR_TRUE.items()))
        assert table.value.to_dict() == pytest.approx(KUMAR_TRUE, rel=0.5)  # C_T: an intercept far from the data
        assert table.value.drop("C_T").to_dict() == pytest.approx(
            {k: v for k, v in KUMAR_TRUE.items() if k != "C_T"}, rel=0.1
        )
        assert fit.scores["n_points"] == 112 and fit.scores["excluded"] == 0
    assert sum(covered) >= 4, covered


def test_held_out_error_picks_the_generating_law():
    for truth, law, values in (("kumar", KUMAR, KUMAR_TRUE), ("rival", RIVAL, RIVAL_TRUE)):
        results = simulate_results(law, values, SIZES, RATIOS, (2, 3, 4, 6, 8), noise=0.05, seed=3)
        fits = {name: fit_delta(results, name, "sim", -1, FitOptions(resamples=0)) for name in ("kumar", "rival")}
        assert fits[truth].table().set_index("parameter").value.to_dict() == pytest.approx(values, rel=0.15)
        other = "rival" if truth == "kumar" else "kumar"
        for score in ("loco_rmse_log", "largest_d_rmse_log"):
            assert fits[truth].scores[score] < fits[other].scores[score], (truth, score)
        assert fits[truth].scores["r2"] > 0.99 and fits[truth].scores["rmse_log"] < 0.06


def test_base_loss_recovery_and_critical_data_size():
    results = kumar_results(seed=1, base=BASE_TRUE, base_noise=1e-3)
    base = fit_base(results, FAST)
    fitted = base.table().set_index("parameter").value
    assert fitted[["E", "A", "B"]].to_dict() == pytest.approx({k: BASE_TRUE[k] for k in "EAB"}, rel=0.2)
    assert fitted[["alpha", "beta"]].to_dict() == pytest.approx({k: BASE_TRUE[k] for k in ("alpha", "beta")}, abs=0.03)
    fit = fit_delta(results, "kumar", "sim", -1, FAST)
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
    fit = fit_delta(kumar_results(), "kumar", "sim", -1, FAST)
    ratio = max_tokens_per_param(fit, 1e5, 4, 0.05)
    assert ratio.ci_low <= ratio.value <= ratio.ci_high
    assert predict_delta(fit, 1e5, 1e5 * ratio.value, 4).value == pytest.approx(0.05, rel=1e-8)
    bits = min_bits(fit, 1e5, 100, 0.05)
    assert bits.value == int(bits.value) and bits.ci_low <= bits.value <= bits.ci_high
    assert fit.predict(1e5, 1e7, bits.value)[0] <= 0.05 < fit.predict(1e5, 1e7, bits.value - 1)[0]
    assert max_tokens_per_param(fit, 1e5, 16, 0.05).value == np.inf
    assert min_bits(fit, 1e5, 100, 1e-12).value == np.inf


def test_points_not_significantly_above_zero_are_excluded_and_reported():
    results = kumar_results(bits=(3, 4, 5, 6, 8))
    eight = results.bits == 8
    results.loc[eight, "delta_ci_low"] = -results.loc[eight, "delta"]
    results.loc[eight & (results.tokens_per_param == 5), "delta"] = -1e-4
    fit = fit_delta(results, "kumar", "sim", -1, FAST)
    assert fit.scores["n_points"] == 112 and fit.scores["excluded"] == 28 and len(fit.excluded) == 28
    assert fit.excluded.reason.value_counts().to_dict() == {
        "delta CI includes zero (delta_ci_low <= 0)": 24,
        "delta <= 0 or missing (no measured damage)": 4,
    }
    assert fit.table().set_index("parameter").value.to_dict() == pytest.approx(KUMAR_TRUE, rel=0.2)
    # A width with too few points for its own per-bit fit is excluded from that law, with its reason.
    results.loc[(results.bits == 6) & (results.nonembedding_params > 2e4), "delta"] = -1.0
    per_bit = fit_delta(results, "per_bit", "sim", -1, FAST)
    assert per_bit.law.per_bits == (3, 4, 5) and per_bit.table().parameter.str.endswith("P6").sum() == 0
    assert per_bit.excluded.reason.str.contains("one model size").sum() == 7


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
        fit_delta(kumar_results(**change), "kumar", "sim", -1, FAST)


def test_no_significant_damage_is_an_error():
    results = kumar_results()
    results["delta_ci_low"] = -1.0
    with pytest.raises(FitError, match="none of the 112 .* significantly above zero"):
        fit_delta(results, "kumar", "sim", -1, FAST)
    results["delta"] = -results.delta
    with pytest.raises(FitError, match="112 with delta <= 0"):
        fit_delta(results, "rival", "sim", -1, FAST)


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
    assert "| kumar | sim | -1 | gamma_post |" in out and "| base |  |  | E |" in out
    assert "| law | method | group_size | n_points | excluded | rmse_log | r2 | loco_rmse_log |" in out
    for forecast in ("delta", "max_tokens_per_param", "min_bits", "critical_tokens"):
        assert f"| kumar | sim | -1 | {forecast} |" in out
    with Store(store) as opened:
        saved = opened.fits("sim").set_index("law")
    assert set(saved.index) == {"kumar", "rival", "per_bit", "base"}
    assert set(saved.params["kumar"]) == set(KUMAR_TRUE) and saved.provenance["kumar"]["resamples"] == 8
    assert saved.goodness["kumar"]["n_points"] == 27 and saved.group_size.isna()["base"]

    assert main(args + ["--format", "json", "--law", "rival"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {row["parameter"] for row in printed["parameters"] if row["law"] == "rival"} == set(RIVAL_TRUE)
    assert [row["forecast"] for row in printed["forecasts"]] == ["delta", "max_tokens_per_param", "critical_tokens"]


def test_cli_fit_without_significant_damage_exits_3(tmp_path, capsys):
    csv = tmp_path / "flat.csv"
    kumar_results().assign(delta_ci_low=-1.0).reindex(columns=COLUMNS).to_csv(csv, index=False)
    assert main(["fit", "--results", str(csv), "--resamples", "2"]) == 3
    assert "significantly above zero" in capsys.readouterr().err
