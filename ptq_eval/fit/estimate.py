"""Estimation: a law fitted to points by a robust, censored objective in log space, with bootstrap intervals
and held-out error.

Objective: the mean Huber loss (minimised within bounds from every start of a grid, `solve.py`) of the residual
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
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import scipy

from ptq_eval.fit.data import ANY, FitError, FitKey
from ptq_eval.fit.identify import identify, refit
from ptq_eval.fit.laws import Law, Points, query
from ptq_eval.version import __version__

CENSORING = ("censor", "exclude")
# The code an estimate depends on beyond its points and options: a change to any of these files invalidates every
# stored estimate.
FIT_CODE = hashlib.sha256(
    b"".join((Path(__file__).parent / f).read_bytes() for f in ("laws.py", "solve.py", "identify.py", "estimate.py"))
)


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
    refit_starts: int = 2  # each refit minimised from the best this many of the full fit and the grid's starts

    def __post_init__(self) -> None:
        if self.censoring not in CENSORING:
            raise FitError(f"censoring={self.censoring!r} is not accepted; use one of {', '.join(CENSORING)}")
        if not (isinstance(self.refit_starts, int) and self.refit_starts >= 1):
            raise FitError(f"refit_starts={self.refit_starts!r} is not accepted; give a whole number >= 1")


DEFAULTS = FitOptions()


def residuals(law: Law, theta: np.ndarray, points: Points) -> np.ndarray:
    """y − max(f, limit): the plain residual of a measured point above its limit, the excess of the law over
    the limit (negated) for a censored one, zero where both lie below the limit."""
    return points.y - np.maximum(law.model(theta, points)[0], points.limit)


def _bootstrap(law: Law, points: Points, theta, universe, options: FitOptions) -> np.ndarray:
    """Refits on resamples (with replacement) of the checkpoint names; a NaN row where one cannot be fitted."""
    rng = np.random.default_rng(options.seed)
    labels = np.array(sorted(set(universe)))
    position = {c: i for i, c in enumerate(labels)}
    owner = np.array([position.get(c, len(labels)) for c in points.checkpoint])  # outside the universe: never drawn
    counts = np.zeros((options.resamples, len(labels) + 1))
    for row in counts:  # one draw per resample, as resampling the names one resample at a time draws them
        row[:-1] += np.bincount(rng.choice(len(labels), size=len(labels)), minlength=len(labels))
    return refit(law, points, theta, options.huber, counts[:, owner], options.refit_starts)


def _held_out_rmse(law: Law, points: Points, theta, options: FitOptions, folds: list[list[np.ndarray]]) -> list[float]:
    """Per set of folds: the RMSE of the residual on held-out points, refitting without each fold (all folds of
    every set in one batch; a fold that cannot be fitted is skipped)."""
    flat = [held for fold_set in folds for held in fold_set]
    fitted = refit(law, points, theta, options.huber, (~np.array(flat)).astype(float), options.refit_starts)
    ends = np.cumsum([len(fold_set) for fold_set in folds])
    found = []
    for rows, fold_set in zip(np.split(fitted, ends[:-1]), folds, strict=True):
        errors = [residuals(law, row, points.take(held))
                  for row, held in zip(rows, fold_set, strict=True) if np.isfinite(row).all()]  # fmt: skip
        found.append(float(np.sqrt(np.mean(np.concatenate(errors) ** 2))) if errors else float("nan"))
    return found


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
        draws = np.exp(self.law.model(self.boot[np.isfinite(self.boot).all(axis=1)], x, jac=False)[0])
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


@dataclass(frozen=True)
class Task:
    """What one estimate is computed from: a law, its points, the options and the checkpoints resampled."""

    law: Law
    points: Points
    options: FitOptions
    universe: np.ndarray
    label: str = ""  # what progress calls it (not part of the estimate)

    def digest(self) -> str:
        return estimate_digest(self.law, self.points, self.options, self.universe)


def _estimate(task: Task) -> dict:
    """θ, bootstrap draws and held-out errors of a law on these points (the costly part of a fit)."""
    law, points, options = task.law, task.points, task.options
    theta = identify(law, points, options.huber)
    record = {"theta": theta.tolist(), "boot": _bootstrap(law, points, theta, task.universe, options).tolist(),
              "loco_rmse_log": float("nan"), "largest_d_rmse_log": float("nan")}  # fmt: skip
    if options.validate:
        loco = [points.checkpoint == c for c in np.unique(points.checkpoint)]
        largest = points.log_d == pd.Series(points.log_d).groupby(points.log_n).transform("max").to_numpy()
        errors = _held_out_rmse(law, points, theta, options, [loco, [largest]])
        record["loco_rmse_log"], record["largest_d_rmse_log"] = errors
    return record


def available_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


Progress = Callable[[int, int, Task], None]  # (estimates done, of how many, the one just done)


def estimates(tasks: Sequence[Task | FitError], cache: EstimateCache | None = None, workers: int | None = 1,
              progress: Progress | None = None) -> list[dict | FitError]:  # fmt: skip
    """Each task's estimate record, or the FitError that stopped it (an error given as a task is passed
    through): loaded from `cache` where it holds one, else computed, on up to `workers` processes (None: every
    CPU this process may use; forked, so nothing is imported again; one process off Linux, where forking NumPy
    is not safe), and kept in `cache`. Records do not depend on `workers`."""
    found: list = [task if isinstance(task, FitError) else None for task in tasks]
    digests = {i: task.digest() for i, task in enumerate(tasks) if cache is not None and found[i] is None}
    for i, digest in digests.items():
        found[i] = cache.estimate_record(digest)
    missing = [i for i, record in enumerate(found) if record is None]
    done = len(tasks) - len(missing)

    def keep(i: int, record: dict | FitError) -> None:
        nonlocal done
        found[i], done = record, done + 1
        if cache is not None and not isinstance(record, FitError):
            cache.save_estimate_record(digests[i], record)
        if progress is not None:
            progress(done, len(tasks), tasks[i])

    workers = min(available_cpus() if workers is None else workers, len(missing))
    if workers <= 1 or not sys.platform.startswith("linux"):  # fork is safe for NumPy on Linux; elsewhere one process
        for i in missing:
            keep(i, _estimate_or_error(tasks[i]))
        return found
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        costly_first = sorted(missing, key=lambda i: -len(tasks[i].law.starts) * len(tasks[i].points))
        futures = {pool.submit(_estimate_or_error, tasks[i]): i for i in costly_first}  # the tail stays short
        try:
            for future in as_completed(futures):
                keep(futures[future], future.result())
        except BaseException:  # an error (or ^C) stops the rest at once; what finished is already kept
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return found


def _estimate_or_error(task: Task) -> dict | FitError:
    try:
        return _estimate(task)
    except FitError as error:
        return error


def law_fit(task: Task, record: dict, excluded: pd.DataFrame, key: FitKey = ANY) -> LawFit:
    """The fit of a task from its estimate record: intervals (withheld when too few resamples refit), goodness
    of fit and provenance."""
    law, points, options = task.law, task.points, task.options
    theta = np.array(record["theta"], dtype=float)
    boot = np.array(record["boot"], dtype=float).reshape(options.resamples, len(theta))
    refit_count = int(np.isfinite(boot).all(axis=1).sum())
    if intervals_withheld(refit_count, options.resamples):
        boot = np.full_like(boot, np.nan)
    residual = residuals(law, theta, points)
    spread = ((points.y - points.y.mean()) ** 2).sum()
    scores = {"n_points": len(points), "censored": int(points.censored.sum()), "excluded": len(excluded),
              "rmse_log": float(np.sqrt(np.mean(residual**2))),
              "r2": float(1 - (residual**2).sum() / spread) if spread > 0 else float("nan"),
              "loco_rmse_log": _number(record["loco_rmse_log"]),
              "largest_d_rmse_log": _number(record["largest_d_rmse_log"]), "resamples_refit": refit_count}  # fmt: skip
    provenance = {"ptq_eval": __version__, "scipy": scipy.__version__, "points": len(points),
                  "resamples": options.resamples, "resamples_ok": refit_count,
                  "seed": options.seed, "huber_delta": options.huber, "censoring": options.censoring,
                  "key": key.record()}  # fmt: skip
    return LawFit(law, key, theta, boot, points, excluded, scores, provenance)


def fit_points(law: Law, points: Points, excluded: pd.DataFrame, key: FitKey = ANY, options: FitOptions = DEFAULTS,
               universe=None, cache: EstimateCache | None = None) -> LawFit:  # fmt: skip
    """Fit a law to prepared points; the bootstrap resamples `universe` (default: the points' checkpoints). With
    a cache, an estimate of the same points, options and code is loaded instead of computed, and a new one kept."""
    task = Task(law, points, options, np.asarray(points.checkpoint if universe is None else universe))
    (record,) = estimates([task], cache)
    if isinstance(record, FitError):
        raise record
    return law_fit(task, record, excluded, key)
