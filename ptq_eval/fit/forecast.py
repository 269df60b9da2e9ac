"""Forecasts from a fitted law, each with its 95% bootstrap interval: δ at an unmeasured (N, D, P), the largest
D/N within a δ budget, the smallest bit width within it, and the critical D where L + δ stops falling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import optimize

from ptq_eval.fit.estimate import Estimate, LawFit, estimate
from ptq_eval.fit.laws import query

BIT_RANGE = tuple(range(2, 17))


def predict_delta(fit: LawFit, params: float, tokens: float, bits: int) -> Estimate:
    """δ at (N, D, P)."""
    return fit.estimate(lambda theta: float(np.exp(fit.law.model(theta, query(params, tokens, bits))[0][0])))


def max_tokens_per_param(fit: LawFit, params: float, bits: int, budget: float, search=(1e-2, 1e7)) -> Estimate:
    """The largest D/N with δ ≤ budget at this N and P (0: over budget at the low end; inf: never over)."""

    def solve(theta):
        def excess(u):
            return fit.law.model(theta, query(params, params * np.exp(u), bits))[0][0] - np.log(budget)

        low, high = np.log(search)
        if not (np.isfinite(excess(low)) and np.isfinite(excess(high))):  # a width the law has no value for
            return np.nan
        if excess(high) <= 0:
            return np.inf
        return 0.0 if excess(low) > 0 else float(np.exp(optimize.brentq(excess, low, high, xtol=1e-12)))

    return fit.estimate(solve)


def min_bits(fit: LawFit, params: float, tokens_per_param: float, budget: float) -> Estimate:
    """The smallest P with δ ≤ budget at this N and D/N (inf: none), among the widths 2..16 at the key's own
    scale overhead (P is bits per weight: a key's P share their fraction, INT4 g128 is 4.125, so the candidates
    are 2.125 ... 16.125), from the lowest P the law has a value for (per_bit: the lowest fitted); NaN when a
    candidate it has no value for lies below the answer (per_bit fitted at 3 and 8 bits cannot say whether 5
    would do)."""
    fractions = {round(p % 1, 9) for p in np.unique(fit.points.bits).tolist()}
    overhead = fractions.pop() if len(fractions) == 1 else 0.0
    candidates = np.array(sorted({b + overhead for b in BIT_RANGE} | set(fit.law.per_bits)), dtype=float)

    def solve(theta):
        delta = np.exp(fit.law.model(theta, query(params, params * tokens_per_param, candidates))[0])
        known = np.isfinite(delta)
        for p, d, gap in zip(candidates, delta, ~known & (np.cumsum(known) > 0), strict=True):
            if gap:
                return np.nan
            if d <= budget:
                return float(p)
        return np.inf

    return fit.estimate(solve)


def critical_tokens(fit: LawFit, base: LawFit, params: float, bits: int, search=(1.0, 1e6)) -> Estimate:
    """The D at which L(N, D) + δ(N, D, P) stops decreasing, searched over D/N in `search` (0: rising over all
    of it; inf: still falling at its end). Draws pair the two fits' refits on the same checkpoint resamples."""
    grid, k = np.log(params) + np.linspace(*np.log(search), 400), len(fit.theta)

    def slope(joint, u, h=1e-5):
        x = query(params, np.exp(np.concatenate([np.atleast_1d(u) - h, np.atleast_1d(u) + h])), bits)
        total = np.exp(base.law.model(joint[k:], x)[0]) + np.exp(fit.law.model(joint[:k], x)[0])
        return np.diff(total.reshape(2, -1), axis=0)[0] / (2 * h)

    def solve(joint):
        rising = np.flatnonzero(slope(joint, grid) >= 0)
        if not len(rising) or rising[0] == 0:
            return np.inf if not len(rising) else 0.0
        return float(np.exp(optimize.brentq(lambda u: slope(joint, u)[0], grid[rising[0] - 1], grid[rising[0]])))

    return estimate(solve, np.concatenate([fit.theta, base.theta]), np.hstack([fit.boot, base.boot]))


def forecast_table(fit: LawFit, base: LawFit | None = None, predict: Sequence[dict] = (), budget=None, params=None,
                   bits=None, tokens_per_param=None) -> pd.DataFrame:  # fmt: skip
    """The forecasts these arguments ask for (δ at each {N, D, P}; with budget, params and bits: the largest D/N;
    with budget, params and tokens_per_param: the smallest P; with base, params and bits: the critical D).
    `base` must be the fit of the same eval and metric's full-precision loss."""
    asked = [("delta", f"N={q['N']:g} D={q['D']:g} P={q['P']:g}", predict_delta(fit, q["N"], q["D"], q["P"]))
             for q in predict]  # fmt: skip
    if None not in (budget, params, bits):
        found = max_tokens_per_param(fit, params, bits, budget)
        asked.append(("max_tokens_per_param", f"N={params:g} P={bits:g} budget={budget:g}", found))
    if None not in (budget, params, tokens_per_param):
        found = min_bits(fit, params, tokens_per_param, budget)
        asked.append(("min_bits", f"N={params:g} D/N={tokens_per_param:g} budget={budget:g}", found))
    if base is not None and None not in (params, bits):
        asked.append(("critical_tokens", f"N={params:g} P={bits:g}", critical_tokens(fit, base, params, bits)))
    return pd.DataFrame([fit.head() | {"forecast": f, "inputs": i, **vars(e)} for f, i, e in asked])
