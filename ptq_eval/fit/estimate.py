"""Estimation: a law fitted to points by a robust, censored objective in log space, with bootstrap intervals
and held-out error.

Objective: the mean Huber loss (L-BFGS-B, bounded, from the best few of a grid of starts) of the residual
    r = y − max(f(θ), c)
where y = log δ, f the law's log δ and c the log of the point's detection limit. This is Powell's (1984)
censored least absolute deviations (CLAD), with Huber's loss in place of the absolute value (Huber δ 1e-3 on
log residuals, as in Hoffmann et al. 2022: median regression in effect).

Why censoring, and why at the detection limit: a point's δ is measured with additive noise (a paired
bootstrap CI from a finite number of eval tokens), and its CI reaches zero exactly when δ ≤ c = δ − CI_low,
the half-width of its CI below δ. Excluding such points keeps, near the limit, only those whose noise happened
to be positive, so the small-δ (high-bit, low-D/N) end of every fit is biased upward (γ_post up, γ_D down).
Powell's estimator is the robust form of the Tobit likelihood for exactly this selection: a point below its
limit enters as "y* ≤ c" (y set to c: zero loss while the law predicts below c, Huber on the excess above it),
and every point is compared with max(f, c), so a measured point never pulls the law into the region where it
could not have been measured. It is consistent for the median of log δ whatever the noise distribution, and
the log keeps medians, so additive noise in δ needs no model (only a limit c set by the CI's width, not by
the noise itself). Bounding a censored δ by its CI's upper end instead is a valid but weak constraint (the
true δ lies below it 97.5% of the time, so it almost never binds) and leaves most of the selection bias in
place; the limit is the quantity the selection used.
A point whose whole CI lies at or below zero contradicts δ > 0 beyond its noise and is excluded with that
reason. tests/bench/fit_recovery.py measures bias and interval coverage of both options on synthetic data.

Reuse: an estimate (θ, bootstrap draws, held-out errors) is a function of the points, the universe of
checkpoints, the options and this code, so `fit_points` keeps it in a cache (a study's store) under a digest of
exactly those, and a later fit of the same points loads it instead of refitting.

Uncertainty: bootstrap over checkpoints (a checkpoint's points move together, censored or not), 95% percentile
intervals for every parameter and forecast. Validation: leave-one-checkpoint-out and leave-largest-D-out (per
N) RMSE of the censored residual (for a censored point, how far the law rises above its limit).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import scipy
from scipy import optimize, special

from ptq_eval.fit.data import ANY, FitError, FitKey
from ptq_eval.fit.laws import Law, Points, per_bit_law, query
from ptq_eval.version import __version__

CENSORING = ("censor", "exclude")
# The code an estimate depends on beyond its points and options: a change to either file invalidates every
# stored estimate.
FIT_CODE = hashlib.sha256(b"".join((Path(__file__).parent / f).read_bytes() for f in ("laws.py", "estimate.py")))


MIN_REFIT = 0.9  # below this share of bootstrap resamples refitted, a fit's intervals are withheld (NaN)


def intervals_withheld(refit: int, resamples: int) -> bool:
    """Whether too few resamples refit for an interval: those that do are a biased few (too narrow)."""
    return refit < MIN_REFIT * resamples


@dataclass(frozen=True)
class FitOptions:
    resamples: int = 200  # bootstrap resamples over checkpoints
    seed: int = 0
    huber: float = 1e-3  # Huber delta on log residuals (Hoffmann et al. 2022)
    validate: bool = True  # leave-one-checkpoint-out and leave-largest-D-out errors
    censoring: Literal["censor", "exclude"] = "censor"  # points whose δ CI reaches zero: censored, or left out

    def __post_init__(self) -> None:
        if self.censoring not in CENSORING:
            raise FitError(f"censoring={self.censoring!r} is not accepted; use one of {', '.join(CENSORING)}")


DEFAULTS = FitOptions()


def residuals(law: Law, theta: np.ndarray, points: Points) -> np.ndarray:
    """y − max(f, limit): the plain residual of a measured point above its limit, the excess of the law over
    the limit (negated) for a censored one, zero where both lie below the limit."""
    return points.y - np.maximum(law.model(theta, points)[0], points.limit)


def _objective(theta, law: Law, points: Points, huber: float) -> tuple[float, np.ndarray]:
    value, jac = law.model(theta, points)
    above = value > points.limit  # only there does the prediction move the residual
    residual = points.y - np.where(above, value, points.limit)
    loss = special.huber(huber, residual).mean() / huber
    return loss, -(jac[above].T @ np.clip(residual[above], -huber, huber)) / (len(residual) * huber)


def _centred(law: Law, start, points: Points) -> np.ndarray:
    theta = np.clip(np.array(start, dtype=float), *np.array(law.bounds).T)
    value, jac = law.model(theta, points)
    for j in law.intercepts:
        rows = (jac[:, j] != 0) & ~points.censored
        if rows.any():
            theta[j] += np.median(points.y[rows] - value[rows])
    return theta


def _optimize(law: Law, points: Points, starts, huber: float, keep: int) -> np.ndarray:
    """Score every start, run L-BFGS-B from the `keep` best, return the best optimum."""
    if len(law.per_bits) > 1:  # independent fits, one per bit width
        blocks = [(per_bit_law([p]), points.take(points.bits == p), slice(3 * i, 3 * i + 3))
                  for i, p in enumerate(law.per_bits)]  # fmt: skip
        return np.concatenate([_optimize(b, x, [s[i] for s in starts], huber, keep) for b, x, i in blocks])
    starts = [_centred(law, start, points) for start in starts]
    scores = [_objective(start, law, points, huber)[0] for start in starts]
    options = {"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-10}
    results = [
        optimize.minimize(_objective, starts[i], (law, points, huber), "L-BFGS-B", True, bounds=law.bounds,
                          options=options)
        for i in np.argsort(scores)[:keep]
    ]  # fmt: skip
    return min(results, key=lambda result: result.fun).x


def check(law: Law, points: Points) -> None:
    """Raise FitError, saying what to measure, when the measured (uncensored) points cannot identify the law."""
    measured = points.take(~points.censored)
    groups = [(f" at P={p:g}", measured.take(measured.bits == p)) for p in law.per_bits] or [("", measured)]
    k = len(law.parameters) // max(1, len(law.per_bits))
    for where, group in groups:
        if len(group) <= k:
            raise FitError(
                f"{law.name}{where}: {k} parameters but only {len(group)} usable points from "
                f"{len(set(group.checkpoint))} checkpoints; measure at least {k + 1} points with δ significantly > 0"
            )
        if len(np.unique(group.log_n)) < 2:
            raise FitError(
                f"{law.name}{where}: every usable point comes from one model size (N={np.exp(group.log_n[0]):.0f}), "
                "so the exponent of N is not identifiable; measure at least two model sizes"
            )
        if np.linalg.matrix_rank(np.column_stack([np.ones(len(group)), group.log_n, group.log_d]), tol=1e-6) < 3:
            raise FitError(
                f"{law.name}{where}: D and N vary together, so the exponents of D and N cannot be told apart; "
                "measure at least two tokens-per-parameter ratios"
            )
    if law.needs_phase and len(np.unique(measured.phase)) < 2:
        raise FitError(
            f"{law.name}: every usable point has the same learning-rate phase (decay_done "
            f"{measured.phase[0]:.2f}); measure checkpoints at several points of their decay (a cosine ladder's "
            "mid-run checkpoints)"
        )
    if law.needs_bits and len(np.unique(measured.bits)) < 2:
        raise FitError(
            f"{law.name}: its bits term needs at least two bit widths with δ significantly > 0 "
            f"(found only P={measured.bits[0]:g}); measure at least two bit widths"
        )


def _check_above(law: Law, theta: np.ndarray, points: Points) -> None:
    """Raise FitError when the law sank below the detection limits of its measured points: nothing then ties it
    to them (the degenerate corner of Powell's estimator, within reach when CIs are wide for their δ)."""
    measured = points.take(~points.censored)
    above = law.model(theta, measured)[0] > measured.limit
    k = len(law.parameters) // max(1, len(law.per_bits))
    for where, rows in [(f" at P={p:g}", measured.bits == p) for p in law.per_bits] or [("", slice(None))]:
        if above[rows].sum() <= k:
            raise FitError(
                f"{law.name}{where}: the censored fit lies below the detection limit of all but {above[rows].sum()} "
                f"of {len(measured.y[rows])} measured points, so they no longer identify it: either their CIs are "
                "too wide for their δ (measure more eval tokens) or the law cannot follow them (its held-out error "
                "with censoring exclude tells which)"
            )


def identify(law: Law, points: Points, huber: float, starts=None, keep: int = 8) -> np.ndarray:
    """The optimum from these starts (default: the law's grid), or FitError when the points cannot identify it."""
    check(law, points)
    theta = _optimize(law, points, law.starts if starts is None else starts, huber, keep)
    _check_above(law, theta, points)
    return theta


def _refit(law: Law, points: Points, theta: np.ndarray, huber: float) -> np.ndarray:
    """Refit on a subset, warm-started from the full fit (plus the grid's best start)."""
    return identify(law, points, huber, [theta, *law.starts], keep=2)


def _bootstrap(law: Law, points: Points, theta, universe, options: FitOptions) -> np.ndarray:
    """Refits on resamples (with replacement) of the checkpoint names; a NaN row where one cannot be fitted."""
    rng = np.random.default_rng(options.seed)
    labels = np.array(sorted(set(universe)))
    rows = {c: np.flatnonzero(points.checkpoint == c) for c in labels}
    boot = np.full((options.resamples, len(theta)), np.nan)
    for i in range(options.resamples):
        index = np.concatenate([rows.get(c, []) for c in rng.choice(labels, size=len(labels))]).astype(int)
        try:
            boot[i] = _refit(law, points.take(index), theta, options.huber)
        except FitError:
            pass
    return boot


def _held_out_rmse(law: Law, points: Points, theta, huber: float, folds: list[np.ndarray]) -> float:
    """RMSE of the residual on held-out points, refitting without each fold (a fold that cannot be fitted is
    skipped)."""
    errors = []
    for held in folds:
        try:
            fitted = _refit(law, points.take(~held), theta, huber)
        except FitError:
            continue
        errors.append(residuals(law, fitted, points.take(held)))
    return float(np.sqrt(np.mean(np.concatenate(errors) ** 2))) if errors else float("nan")


def _number(value: float | None) -> float:
    """A stored number (JSON keeps NaN as null)."""
    return float("nan") if value is None else float(value)


def _ci(draws: np.ndarray) -> tuple[float, float]:
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return float("nan"), float("nan")
    low, high = np.percentile(draws, [2.5, 97.5], method="inverted_cdf")
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float


def estimate(fn: Callable[[np.ndarray], float], theta: np.ndarray, boot: np.ndarray) -> Estimate:
    """A function of the parameters at the estimate, with the 95% interval of its bootstrap draws."""
    draws = np.array([fn(row) if np.isfinite(row).all() else np.nan for row in boot])
    return Estimate(float(fn(theta)), *_ci(draws))


@dataclass
class LawFit:
    """One law fitted to one key (eval, metric, quant config): estimate, bootstrap draws, censored and excluded
    points, goodness of fit."""

    law: Law
    key: FitKey
    theta: np.ndarray
    boot: np.ndarray
    points: Points
    excluded: pd.DataFrame
    scores: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def estimate(self, fn: Callable[[np.ndarray], float]) -> Estimate:
        return estimate(fn, self.theta, self.boot)

    def predict(self, params, tokens, bits=0, phase=1.0) -> np.ndarray:
        """Point prediction in natural units (δ, or L for the base law); `phase` (decay_done) for phase laws."""
        return np.exp(self.law.model(self.theta, query(params, tokens, bits, phase))[0])

    def band(self, params, tokens, bits=0, phase=1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point prediction and its 95% bootstrap band at many points (natural units)."""
        x = query(params, tokens, bits, phase)
        draws = np.array([np.exp(self.law.model(row, x)[0]) for row in self.boot if np.isfinite(row).all()])
        if not len(draws):
            return self.predict(params, tokens, bits, phase), np.full(len(x), np.nan), np.full(len(x), np.nan)
        low, high = np.percentile(draws, [2.5, 97.5], axis=0, method="inverted_cdf")
        return self.predict(params, tokens, bits, phase), low, high

    def head(self) -> dict:
        return {"law": self.law.name} | self.key.head()

    def table(self) -> pd.DataFrame:
        values, draws = self.law.values(self.theta), self.law.values(self.boot)
        low, high = np.array([_ci(draws[:, j]) for j in range(len(values))]).T
        rows = {"parameter": self.law.parameters, "value": values, "ci_low": low, "ci_high": high}
        return pd.DataFrame(self.head() | rows)

    def goodness(self) -> dict:
        return self.head() | self.scores

    def record(self) -> dict:
        """What the store keeps: parameters with CIs, goodness of fit, provenance (with the whole key)."""
        params = {r.parameter: {"value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high}
                  for r in self.table().itertuples()}  # fmt: skip
        head = {"law": self.law.name, "method": self.key.method, "group_size": self.key.group_size}
        return head | {"params": params, "goodness": self.scores, "provenance": self.provenance}


class EstimateCache(Protocol):
    """Where estimates are kept between runs (`Store` is one)."""

    def estimate_record(self, digest: str) -> dict | None: ...

    def save_estimate_record(self, digest: str, record: dict) -> None: ...


def estimate_digest(law: Law, points: Points, options: FitOptions, universe) -> str:
    """What an estimate is a function of: the law, the points, the checkpoints resampled, the options, the code."""
    digest = FIT_CODE.copy()
    head = {"law": law.name, "parameters": law.parameters, "options": asdict(options), "scipy": scipy.__version__,
            "numpy": np.__version__, "universe": sorted(map(str, universe))}  # fmt: skip
    digest.update(json.dumps(head, sort_keys=True).encode())
    digest.update("\0".join(map(str, points.checkpoint)).encode())
    for name in (f.name for f in fields(points) if f.name != "checkpoint"):
        digest.update(np.ascontiguousarray(getattr(points, name), dtype=np.float64).tobytes())
    return digest.hexdigest()


def _estimate(law: Law, points: Points, options: FitOptions, universe) -> dict:
    """θ, bootstrap draws and held-out errors of a law on these points (the costly part of a fit)."""
    theta = identify(law, points, options.huber)
    record = {"theta": theta.tolist(), "boot": _bootstrap(law, points, theta, universe, options).tolist(),
              "loco_rmse_log": float("nan"), "largest_d_rmse_log": float("nan")}  # fmt: skip
    if options.validate:
        loco = [points.checkpoint == c for c in np.unique(points.checkpoint)]
        largest = points.log_d == pd.Series(points.log_d).groupby(points.log_n).transform("max").to_numpy()
        record["loco_rmse_log"] = _held_out_rmse(law, points, theta, options.huber, loco)
        record["largest_d_rmse_log"] = _held_out_rmse(law, points, theta, options.huber, [largest])
    return record


def fit_points(law: Law, points: Points, excluded: pd.DataFrame, key: FitKey = ANY, options: FitOptions = DEFAULTS,
               universe=None, cache: EstimateCache | None = None) -> LawFit:  # fmt: skip
    """Fit a law to prepared points; the bootstrap resamples `universe` (default: the points' checkpoints). With
    a cache, an estimate of the same points, options and code is loaded instead of computed, and a new one kept."""
    universe = points.checkpoint if universe is None else universe
    digest = estimate_digest(law, points, options, universe) if cache is not None else ""
    record = cache.estimate_record(digest) if cache is not None else None
    if record is None:
        record = _estimate(law, points, options, universe)
        if cache is not None:
            cache.save_estimate_record(digest, record)
    theta = np.array(record["theta"], dtype=float)
    boot = np.array(record["boot"], dtype=float).reshape(options.resamples, len(theta))
    refit = int(np.isfinite(boot).all(axis=1).sum())
    if intervals_withheld(refit, options.resamples):
        boot = np.full_like(boot, np.nan)
    residual = residuals(law, theta, points)
    spread = ((points.y - points.y.mean()) ** 2).sum()
    scores = {"n_points": len(points), "censored": int(points.censored.sum()), "excluded": len(excluded),
              "rmse_log": float(np.sqrt(np.mean(residual**2))),
              "r2": float(1 - (residual**2).sum() / spread) if spread > 0 else float("nan"),
              "loco_rmse_log": _number(record["loco_rmse_log"]),
              "largest_d_rmse_log": _number(record["largest_d_rmse_log"]), "resamples_refit": refit}  # fmt: skip
    provenance = {"ptq_eval": __version__, "scipy": scipy.__version__, "points": len(points),
                  "resamples": options.resamples, "resamples_ok": refit,
                  "seed": options.seed, "huber_delta": options.huber, "censoring": options.censoring,
                  "key": key.record()}  # fmt: skip
    return LawFit(law, key, theta, boot, points, excluded, scores, provenance)
