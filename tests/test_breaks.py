"""Laws that bend: the broken power laws' derivatives, a known break recovered with its interval, no break found
where there is none, and negative controls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ptq_eval.fit import FitOptions, per_bit_law
from ptq_eval.fit.breaks import break_support, break_table
from ptq_eval.fit.estimate import fit_points
from ptq_eval.fit.laws import BEND_WIDTH, Points, broken_law

SIZES = (1e5, 3e5, 1e6)
RATIOS = np.geomspace(5, 320, 10)
TRUE_BREAK, BEFORE, AFTER = 40.0, 0.3, 1.5


def ladder(bent: bool, seed: int = 0, bits=(4.0,)) -> Points:
    """δ ∝ (D/N)^0.3 / N^0.2, bending to (D/N)^1.5 past D/N = 40 when `bent`; log-normal noise of 5%."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in SIZES:
        for ratio in RATIOS:
            for p in bits:
                u = np.log(ratio)
                y = np.log(1e-3) + BEFORE * u - 0.2 * np.log(n / 1e5) - (p - 4.0)
                if bent:
                    y += (AFTER - BEFORE) * BEND_WIDTH * np.logaddexp(0.0, (u - np.log(TRUE_BREAK)) / BEND_WIDTH)
                rows.append((f"n{n:g}/r{ratio:.3g}", np.log(n), np.log(n * ratio), p, y + rng.normal(0, 0.05)))
    checkpoint, log_n, log_d, bits_column, y = map(np.array, zip(*rows, strict=True))
    none = np.full(len(y), -np.inf)
    return Points(checkpoint, log_n, log_d, bits_column, y, none, np.full(len(y), np.nan))


def fitted(points: Points, name: str = "broken_dn", with_bits: bool = False):
    u = points.log_d - points.log_n if name == "broken_dn" else points.log_d
    distinct = np.unique(np.round(u, 9))
    law = broken_law(name, with_bits, (float(distinct[1]), float(distinct[-2])))
    options = FitOptions(resamples=40)
    broken = fit_points(law, points, pd.DataFrame(), options=options)
    straight = fit_points(per_bit_law(sorted(set(points.bits))), points, pd.DataFrame(), options=options)
    return broken, straight


@pytest.mark.parametrize("name", ["broken_d", "broken_dn"])
@pytest.mark.parametrize("with_bits", [False, True])
def test_the_broken_laws_derivatives_match_finite_differences(name, with_bits):
    points = ladder(True, bits=(3.0, 4.0))
    law = broken_law(name, with_bits, (2.0, 20.0))
    theta = np.array([0.1, 0.4, 1.3, 0.2, 10.5] + ([1.2] if with_bits else []))
    _, jacobian = law.model(theta, points)
    for j in range(len(theta)):
        step = np.zeros_like(theta)
        step[j] = 1e-6
        numeric = (law.model(theta + step, points)[0] - law.model(theta - step, points)[0]) / 2e-6
        assert np.allclose(jacobian[:, j], numeric, atol=1e-5), law.parameters[j]


def test_a_known_break_is_found_where_it_is_with_both_slopes():
    broken, straight = fitted(ladder(True))
    found = break_support(broken, [broken, straight])
    assert found.supported, found.reason
    assert found.location.ci_low <= TRUE_BREAK <= found.location.ci_high
    assert found.before.ci_low <= BEFORE <= found.before.ci_high
    assert found.after.ci_low <= AFTER <= found.after.ci_high
    table = break_table([broken, straight])
    assert table.loc[0, "supported"] == "yes" and table.loc[0, "break in"] == "D/N"


def test_no_break_is_found_in_a_straight_power_law():
    broken, straight = fitted(ladder(False, seed=1))
    found = break_support(broken, [broken, straight])
    assert not found.supported
    assert "includes 0" in found.reason or "held-out" in found.reason


def test_a_law_that_predicts_damage_where_the_highest_width_measured_none_fails_its_negative_control():
    from simulate import simulate_results

    from ptq_eval.fit import KUMAR, FitKey, fit_study

    truth = {"C_T": 0.02, "gamma_D": 0.6, "gamma_N": 0.4, "gamma_post": 1.2}
    results = simulate_results(KUMAR, truth, (2e4, 5e4, 1e5, 2e5), (5, 20, 80, 320), (3, 4, 5, 6, 8), noise=0.05)
    fitted = fit_study(results, options=FitOptions(resamples=0, validate=False), laws=("kumar",))
    assert fitted.fits[0].scores["control_flags"] == 0 and not fitted.controls()  # the law holds at 8 bits
    silent = results.bits == 8  # 8 bits measured as no damage at all, tightly: four widths pin γ_post
    results.loc[silent, ["delta", "delta_ci_low", "delta_ci_high"]] = [0.0, -1e-5, 1e-5]
    fitted = fit_study(results, FitKey(), FitOptions(resamples=0, validate=False), laws=("kumar",))
    scores = fitted.fits[0].scores
    assert scores["control_p"] == 8 and scores["control_points"] == 16 and scores["control_flags"] > 0
    assert "negative control failed at P=8" in " ".join(fitted.notes())
