"""Whether δ bends: each broken-law fit beside the straight law of the same key, and whether the data support
its break.

A break is supported when (1) the bootstrap interval of γ_2 − γ_1 excludes zero (the slope really changes)
and (2) the broken law predicts held-out checkpoints better than the straight one (leave-one-checkpoint-out
RMSE of log δ). The straight law is Kumar et al.'s where the key has several P, else the per-bit law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ptq_eval.fit.estimate import Estimate, LawFit
from ptq_eval.fit.laws import BROKEN_LAWS


@dataclass(frozen=True)
class BreakSupport:
    """A broken-law fit's verdict: where the break is, the slopes either side, and whether the data support it."""

    fit: LawFit
    straight: LawFit | None
    location: Estimate  # the break in D (broken_d) or D/N (broken_dn)
    before: Estimate  # γ_1
    after: Estimate  # γ_2
    change: Estimate  # γ_2 − γ_1
    supported: bool
    reason: str


def _straight(fit: LawFit, fits: list[LawFit]) -> LawFit | None:
    name = "kumar" if fit.law.needs_bits else "per_bit"
    return next((other for other in fits if other.law.name == name and other.key == fit.key), None)


def break_support(fit: LawFit, fits: list[LawFit]) -> BreakSupport:
    """The verdict on one broken-law fit, against the straight law of its key among `fits`."""
    straight = _straight(fit, fits)
    location = fit.estimate(lambda theta: math.exp(theta[4]))
    before, after = fit.estimate(lambda theta: theta[1]), fit.estimate(lambda theta: theta[2])
    change = fit.estimate(lambda theta: theta[2] - theta[1])
    broken_error, straight_error = fit.scores.get("loco_rmse_log", math.nan), math.nan
    if straight is not None:
        straight_error = straight.scores.get("loco_rmse_log", math.nan)
    interval = f"γ_2 − γ_1 = {change.value:.3g} [{change.ci_low:.3g}, {change.ci_high:.3g}]"
    if math.isnan(change.ci_low):
        supported, reason = False, "no interval for γ_2 − γ_1 (too few resamples refit)"
    elif change.ci_low <= 0 <= change.ci_high:
        supported, reason = False, f"{interval} includes 0"
    elif straight is None or math.isnan(straight_error) or math.isnan(broken_error):
        supported, reason = False, "no straight law's held-out error to compare with"
    elif broken_error >= straight_error:
        supported, reason = False, f"held-out RMSE {broken_error:.3g} ≥ the straight law's {straight_error:.3g}"
    else:
        supported = True
        reason = f"{interval}; held-out RMSE {broken_error:.3g} < {straight_error:.3g} ({straight.law.name})"
    return BreakSupport(fit, straight, location, before, after, change, supported, reason)


def _interval(estimate: Estimate) -> str:
    bounds = "" if math.isnan(estimate.ci_low) else f" [{estimate.ci_low:.3g}, {estimate.ci_high:.3g}]"
    return f"{estimate.value:.3g}{bounds}"


def break_table(fits: list[LawFit]) -> pd.DataFrame:
    """One row per broken-law fit: the break and its interval, the slopes either side, the verdict."""
    rows = []
    for fit in (fit for fit in fits if fit.law.name in BROKEN_LAWS):
        found = break_support(fit, fits)
        axis = "D/N" if fit.law.name == "broken_dn" else "D"
        rows.append(
            fit.head()
            | {
                "break in": axis,
                "break [95% CI]": _interval(found.location),
                "gamma_1": _interval(found.before),
                "gamma_2": _interval(found.after),
                "supported": "yes" if found.supported else "no",
                "why": found.reason,
            }
        )
    return pd.DataFrame(rows)
