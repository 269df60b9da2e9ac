"""Scaling-law fits of PTQ degradation δ(N, D, P) and of the full-precision loss L(N, D).

Laws, each fitted in log space with a Huber loss (L-BFGS-B, bounded, from a grid of starts):
- `kumar`:   δ = C_T · D^γ_D / N^γ_N · exp(−P/γ_post)   (Kumar et al. 2024), jointly over checkpoints and bits;
- `rival`:   δ = k · D^β / (N^α · P^γ)                   (the power law in bits of Ouyang et al. 2024);
- `per_bit`: δ = c_P · D^a_P / N^b_P, an independent fit per bit width P;
- `base`:    L = E + A/N^α + B/D^β on each checkpoint's full-precision loss (Hoffmann et al. 2022).
N is non-embedding parameters, D training tokens, P bits; δ is the paired loss difference (nats/token).

Exclusion rule: log δ exists only for δ > 0, and a δ whose 95% CI reaches zero cannot be told apart from no
damage, so a point enters a δ fit only if δ > 0 and delta_ci_low > 0 (a point without a CI counts if δ > 0).
Every other point is excluded but never silently: it is listed with its reason and counted in the
goodness-of-fit table. `per_bit` also excludes the points of a bit width too sparse for a fit of its own.
Excluding small δ conditions the fit on detectable damage (at high P this biases δ upward), so
`bound_violations` counts excluded points whose CI upper bound lies below the fitted δ.

Uncertainty: bootstrap over checkpoints (a checkpoint's points move together), 95% percentile intervals for
every parameter and forecast. Validation: leave-one-checkpoint-out and leave-largest-D-out (per N) RMSE of y.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
import scipy
from scipy import optimize, special

import ptq_eval
from ptq_eval.errors import UserError

EXPONENTS = (0.25, 0.5, 1.0)
LOG, EXPONENT = (-50.0, 50.0), (-2.0, 4.0)
BIT_RANGE = tuple(range(2, 17))


class FitError(UserError):
    """The data cannot identify the law; the message says what more to measure."""


@dataclass(frozen=True)
class FitOptions:
    resamples: int = 200  # bootstrap resamples over checkpoints
    seed: int = 0
    huber: float = 1e-3  # Huber delta on log residuals (Hoffmann et al. 2022)
    validate: bool = True  # leave-one-checkpoint-out and leave-largest-D-out errors


@dataclass(frozen=True)
class Points:
    """What a fit sees: checkpoint label, log N, log D, bits and the target y (log δ or log L)."""

    checkpoint: np.ndarray
    log_n: np.ndarray
    log_d: np.ndarray
    bits: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index) -> Points:
        return Points(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def query(params, tokens, bits=0) -> Points:
    """Points to predict at (the arguments broadcast together)."""
    n, d, p = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=float)) for v in (params, tokens, bits)))
    return Points(np.full(n.shape, ""), np.log(n), np.log(d), p, np.full(n.shape, np.nan))


@dataclass(frozen=True)
class Law:
    """A model of y: named parameters, bounds, starting grid; `model(theta, points)` -> (y, dy/dtheta)."""

    name: str
    parameters: tuple[str, ...]
    model: Callable[[np.ndarray, Points], tuple[np.ndarray, np.ndarray]]
    bounds: tuple[tuple[float, float], ...]
    starts: tuple[tuple[float, ...], ...]
    logged: tuple[int, ...] = (0,)  # fitted as logs, reported as values
    intercepts: tuple[int, ...] = (0,)  # additive in y: re-centred on the data at every start
    needs_bits: bool = True
    per_bits: tuple[int, ...] = ()  # one independent block of parameters per bit width

    def values(self, theta: np.ndarray) -> np.ndarray:
        """Natural parameter values (broadcasts over bootstrap rows)."""
        out = np.array(theta, dtype=float)
        out[..., list(self.logged)] = np.exp(out[..., list(self.logged)])
        return out

    def theta(self, values: dict[str, float]) -> np.ndarray:
        theta = np.array([values[name] for name in self.parameters], dtype=float)
        theta[list(self.logged)] = np.log(theta[list(self.logged)])
        return theta


def _kumar(theta, x):
    log_c, g_d, g_n, g_post = theta
    jac = np.column_stack([np.ones(len(x)), x.log_d, -x.log_n, x.bits / g_post**2])
    return log_c + g_d * x.log_d - g_n * x.log_n - x.bits / g_post, jac


def _rival(theta, x):
    log_k, alpha, beta, gamma = theta
    log_p = np.log(x.bits)
    jac = np.column_stack([np.ones(len(x)), -x.log_n, x.log_d, -log_p])
    return log_k - alpha * x.log_n + beta * x.log_d - gamma * log_p, jac


def _base(theta, x):
    log_e, log_a, log_b, alpha, beta = theta
    terms = np.column_stack([np.full(len(x), log_e), log_a - alpha * x.log_n, log_b - beta * x.log_d])
    top = terms.max(axis=1, keepdims=True)
    w = np.exp(terms - top)  # logsumexp by hand: scipy's is slow on small arrays
    value = top[:, 0] + np.log(w.sum(axis=1))
    w /= w.sum(axis=1, keepdims=True)
    return value, np.column_stack([w, -w[:, 1] * x.log_n, -w[:, 2] * x.log_d])


KUMAR = Law(
    "kumar", ("C_T", "gamma_D", "gamma_N", "gamma_post"), _kumar, (LOG, EXPONENT, EXPONENT, (0.05, 50.0)),
    tuple(itertools.product([0.0], EXPONENTS, EXPONENTS, (0.5, 1.5, 4.0))),
)  # fmt: skip
RIVAL = Law(
    "rival", ("k", "alpha", "beta", "gamma"), _rival, (LOG, EXPONENT, EXPONENT, (-5.0, 30.0)),
    tuple(itertools.product([0.0], EXPONENTS, EXPONENTS, (1.0, 3.0, 8.0))),
)  # fmt: skip
BASE = Law(
    "base", ("E", "A", "B", "alpha", "beta"), _base, (LOG, LOG, LOG, (0.0, 3.0), (0.0, 3.0)),
    tuple(itertools.product((-1.0, 0.0, 1.0), (0.0, 5.0, 10.0), (0.0, 5.0, 10.0), (0.2, 0.5, 1.0), (0.2, 0.5, 1.0))),
    logged=(0, 1, 2), intercepts=(), needs_bits=False,
)  # fmt: skip


def per_bit_law(bits: Sequence[int]) -> Law:
    """δ = c_P · D^a_P / N^b_P for each of these bit widths (NaN at any other width)."""
    bits = tuple(sorted(int(b) for b in bits))

    def model(theta, x):
        value, jac = np.full(len(x), np.nan), np.zeros((len(x), 3 * len(bits)))
        for i, p in enumerate(bits):
            rows = x.bits == p
            log_c, a, b = theta[3 * i : 3 * i + 3]
            value[rows] = log_c + a * x.log_d[rows] - b * x.log_n[rows]
            jac[rows, 3 * i : 3 * i + 3] = np.column_stack([np.ones(rows.sum()), x.log_d[rows], -x.log_n[rows]])
        return value, jac

    names = tuple(f"{name}_P{p}" for p in bits for name in ("c", "a", "b"))
    starts = tuple((0.0, a, b) * len(bits) for a, b in itertools.product(EXPONENTS, EXPONENTS))
    blocks = tuple(range(0, 3 * len(bits), 3))
    return Law("per_bit", names, model, (LOG, EXPONENT, EXPONENT) * len(bits), starts, blocks, blocks, False, bits)


def _objective(theta, law: Law, points: Points, huber: float) -> tuple[float, np.ndarray]:
    value, jac = law.model(theta, points)
    residual = points.y - value
    loss = special.huber(huber, residual).mean() / huber
    return loss, -(jac.T @ np.clip(residual, -huber, huber)) / (len(residual) * huber)


def _centred(law: Law, start, points: Points) -> np.ndarray:
    theta = np.clip(np.array(start, dtype=float), *np.array(law.bounds).T)
    value, jac = law.model(theta, points)
    for j in law.intercepts:
        rows = jac[:, j] != 0
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


def _check(law: Law, points: Points) -> None:
    """Raise FitError, saying what to measure, when the points cannot identify the law."""
    groups = [(f" at P={p}", points.take(points.bits == p)) for p in law.per_bits] or [("", points)]
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
    if law.needs_bits and len(np.unique(points.bits)) < 2:
        raise FitError(
            f"{law.name}: its bits term needs at least two bit widths with δ significantly > 0 "
            f"(found only P={int(points.bits[0])}); measure at least two bit widths"
        )


def _refit(law: Law, points: Points, theta: np.ndarray, huber: float) -> np.ndarray:
    """Refit on a subset, warm-started from the full fit (plus the grid's best start)."""
    _check(law, points)
    return _optimize(law, points, [theta, *law.starts], huber, keep=2)


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
    """RMSE of y on held-out points, refitting without each fold (a fold that cannot be fitted is skipped)."""
    errors = []
    for held in folds:
        try:
            fitted = _refit(law, points.take(~held), theta, huber)
        except FitError:
            continue
        errors.append(points.y[held] - law.model(fitted, points.take(held))[0])
    return float(np.sqrt(np.mean(np.concatenate(errors) ** 2))) if errors else float("nan")


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


def _estimate(fn: Callable[[np.ndarray], float], theta: np.ndarray, boot: np.ndarray) -> Estimate:
    """A function of the parameters at the estimate, with the 95% interval of its bootstrap draws."""
    draws = np.array([fn(row) if np.isfinite(row).all() else np.nan for row in boot])
    return Estimate(float(fn(theta)), *_ci(draws))


@dataclass
class LawFit:
    """One law fitted to one (method, group size): estimate, bootstrap draws, exclusions, goodness of fit."""

    law: Law
    method: str | None
    group_size: int | None
    theta: np.ndarray
    boot: np.ndarray
    points: Points
    excluded: pd.DataFrame
    scores: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def estimate(self, fn: Callable[[np.ndarray], float]) -> Estimate:
        return _estimate(fn, self.theta, self.boot)

    def predict(self, params, tokens, bits=0) -> np.ndarray:
        """Point prediction in natural units (δ, or L for the base law)."""
        return np.exp(self.law.model(self.theta, query(params, tokens, bits))[0])

    def band(self, params, tokens, bits=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point prediction and its 95% bootstrap band at many points (natural units)."""
        x = query(params, tokens, bits)
        draws = np.array([np.exp(self.law.model(row, x)[0]) for row in self.boot if np.isfinite(row).all()])
        if not len(draws):
            return self.predict(params, tokens, bits), np.full(len(x), np.nan), np.full(len(x), np.nan)
        low, high = np.percentile(draws, [2.5, 97.5], axis=0, method="inverted_cdf")
        return self.predict(params, tokens, bits), low, high

    def table(self) -> pd.DataFrame:
        values, draws = self.law.values(self.theta), self.law.values(self.boot)
        low, high = np.array([_ci(draws[:, j]) for j in range(len(values))]).T
        head = {"law": self.law.name, "method": self.method, "group_size": self.group_size}
        frame = pd.DataFrame(head | {"parameter": self.law.parameters, "value": values, "ci_low": low, "ci_high": high})
        return frame.astype({"group_size": "Int64"})

    def goodness(self) -> dict:
        return {"law": self.law.name, "method": self.method, "group_size": self.group_size} | self.scores

    def record(self) -> dict:
        """What the store keeps: parameters with CIs, goodness of fit, provenance."""
        params = {r.parameter: {"value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high}
                  for r in self.table().itertuples()}  # fmt: skip
        head = {"law": self.law.name, "method": self.method, "group_size": self.group_size}
        return head | {"params": params, "goodness": self.scores, "provenance": self.provenance}


def fit_points(law: Law, points: Points, excluded: pd.DataFrame, options: FitOptions = FitOptions(),
               method: str | None = None, group_size: int | None = None, universe=None) -> LawFit:  # fmt: skip
    """Fit a law to prepared points; the bootstrap resamples `universe` (default: the points' checkpoints)."""
    _check(law, points)
    theta = _optimize(law, points, law.starts, options.huber, keep=8)
    boot = _bootstrap(law, points, theta, points.checkpoint if universe is None else universe, options)
    residual, spread = points.y - law.model(theta, points)[0], ((points.y - points.y.mean()) ** 2).sum()
    scores = {"n_points": len(points), "excluded": len(excluded), "rmse_log": float(np.sqrt(np.mean(residual**2))),
              "r2": float(1 - (residual**2).sum() / spread) if spread > 0 else float("nan"),
              "loco_rmse_log": float("nan"), "largest_d_rmse_log": float("nan")}  # fmt: skip
    if options.validate:
        loco = [points.checkpoint == c for c in np.unique(points.checkpoint)]
        largest = points.log_d == pd.Series(points.log_d).groupby(points.log_n).transform("max").to_numpy()
        scores["loco_rmse_log"] = _held_out_rmse(law, points, theta, options.huber, loco)
        scores["largest_d_rmse_log"] = _held_out_rmse(law, points, theta, options.huber, [largest])
    provenance = {"ptq_eval": ptq_eval.__version__, "scipy": scipy.__version__, "points": len(points),
                  "resamples": options.resamples, "resamples_ok": int(np.isfinite(boot).all(axis=1).sum()),
                  "seed": options.seed, "huber_delta": options.huber}  # fmt: skip
    fit = LawFit(law, method, group_size, theta, boot, points, excluded, scores, provenance)
    if "delta_ci_high" in excluded:
        bounded = excluded[excluded.delta_ci_high > 0]
        predicted = fit.predict(bounded.nonembedding_params, bounded.tokens, bounded.bits) if len(bounded) else []
        scores["bound_violations"] = int(np.sum(predicted > bounded.delta_ci_high.to_numpy()))
    return fit


def _points(frame: pd.DataFrame, target: pd.Series) -> Points:
    bits = frame.bits.to_numpy(dtype=float) if "bits" in frame else np.zeros(len(frame))
    log_n, log_d, y = (np.log(c.to_numpy(dtype=float)) for c in (frame.nonembedding_params, frame.tokens, target))
    return Points(frame.checkpoint.to_numpy(dtype=str), log_n, log_d, bits, y)


UNKNOWN_D = "tokens seen (D) unknown for this checkpoint"


def select(results: pd.DataFrame, method: str, group_size: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Loss rows of one method and group size, split into usable and excluded (with a `reason`)."""
    rows = results[(results.metric == "loss") & (results.method == method) & (results.group_size == group_size)]
    if rows.empty:
        raise FitError(f"no loss results for method {method!r} with group_size {group_size}")
    if rows.duplicated(["checkpoint", "bits"]).any():
        raise FitError(f"several {method} group_size {group_size} configs per (checkpoint, bits); filter the results")
    reason = pd.Series("", index=rows.index)
    reason[rows.delta_ci_low.notna() & (rows.delta_ci_low <= 0)] = "delta CI includes zero (delta_ci_low <= 0)"
    reason[~(rows.delta > 0)] = "delta <= 0 or missing (no measured damage)"
    reason[rows.tokens <= 0] = "D = 0 (an untrained checkpoint)"
    reason[rows.tokens.isna()] = UNKNOWN_D
    excluded = rows[reason != ""].assign(reason=reason[reason != ""])
    if len(excluded) == len(rows):
        counts = ", ".join(f"{n} with {r}" for r, n in excluded.reason.value_counts().items())
        raise FitError(
            f"none of the {len(rows)} {method} group_size {group_size} points has δ significantly above zero "
            f"({counts}); measure lower bit widths, longer-trained checkpoints or more eval tokens"
        )
    return rows[reason == ""], excluded


def fit_delta(
    results: pd.DataFrame, law: str, method: str, group_size: int, options: FitOptions = FitOptions()
) -> LawFit:
    """Fit `kumar`, `rival` or `per_bit` to one method and group size of a study's results."""
    if law not in ("kumar", "rival", "per_bit"):
        raise FitError(f"unknown law {law!r}; accepted: kumar, rival, per_bit")
    usable, excluded = select(results, method, group_size)
    if law == "per_bit":
        widths, sparse = [], [excluded]
        for bits, rows in usable.groupby("bits"):
            try:
                _check(per_bit_law([bits]), _points(rows, rows.delta))
                widths.append(bits)
            except FitError as error:
                sparse.append(rows.assign(reason=f"too few points for a fit of this width alone: {error}"))
        if not widths:
            raise FitError(f"per_bit: no bit width of {method} group_size {group_size} can be fitted on its own")
        usable, excluded, chosen = usable[usable.bits.isin(widths)], pd.concat(sparse), per_bit_law(widths)
    else:
        chosen = {"kumar": KUMAR, "rival": RIVAL}[law]
    points = _points(usable, usable.delta)
    return fit_points(chosen, points, excluded, options, method, group_size, results.checkpoint.unique())


def fit_base(results: pd.DataFrame, options: FitOptions = FitOptions()) -> LawFit:
    """Fit L = E + A/N^α + B/D^β to the full-precision loss of each checkpoint."""
    rows = results[results.metric == "loss"].drop_duplicates("checkpoint").drop(columns="bits")
    good = (rows.fp_value > 0) & (rows.tokens > 0)
    reason = np.where(rows.tokens.isna(), UNKNOWN_D, "D = 0, or full-precision loss missing or <= 0")
    excluded = rows[~good].assign(reason=reason[~good.to_numpy()])
    points = _points(rows[good], rows.fp_value[good])
    return fit_points(BASE, points, excluded, options, universe=results.checkpoint.unique())


@dataclass
class StudyFit:
    """Every law for every (method, group size), the base-loss fit, and why any law could not be fitted."""

    fits: list[LawFit]
    base: LawFit | None
    failures: dict[str, str]

    def all(self) -> list[LawFit]:
        return self.fits + ([self.base] if self.base else [])

    def table(self) -> pd.DataFrame:
        return pd.concat([fit.table() for fit in self.all()], ignore_index=True)

    def goodness(self) -> pd.DataFrame:
        return pd.DataFrame([fit.goodness() for fit in self.all()]).astype({"group_size": "Int64"})

    def excluded(self) -> pd.DataFrame:
        frames = [fit.excluded.assign(law=fit.law.name) for fit in self.all() if len(fit.excluded)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def notes(self) -> list[str]:
        """What a reader should know: laws not fitted and why, points each fit left out and why."""
        notes = [f"{law} not fitted: {message}" for law, message in self.failures.items()]
        for fit in self.all():
            if len(fit.excluded):
                label = " ".join(str(v) for v in (fit.law.name, fit.method, fit.group_size) if v is not None)
                reasons = ", ".join(f"{n} with {reason}" for reason, n in fit.excluded.reason.value_counts().items())
                notes.append(f"{label}: {len(fit.excluded)} points excluded: {reasons}")
        return notes

    def save(self, store, study: str) -> int:
        """Write every fit to a store (`Store.save_fit`) under study/law/method/group_size; returns how many."""
        for fit in self.all():
            record = fit.record()
            store.save_fit(f"{study}/{record['law']}/{record['method']}/{record['group_size']}", study, **record)
        return len(self.all())


def fit_study(results: pd.DataFrame, method: str | None = None, group_size: int | None = None,
              options: FitOptions = FitOptions(), laws=("kumar", "rival", "per_bit")) -> StudyFit:  # fmt: skip
    """Fit every law to each (method, group size) present (or the one asked for), and the base loss."""
    loss = results[results.metric == "loss"]
    loss = loss[(loss.method == method) if method is not None else loss.method.notna()]
    loss = loss[(loss.group_size == group_size) if group_size is not None else loss.group_size.notna()]
    if loss.empty:
        raise FitError(f"no loss results for method {method or 'any'} with group_size {group_size or 'any'}")
    fits, failures = [], {}
    for (m, g), law in itertools.product(sorted(loss.groupby(["method", "group_size"]).groups), laws):
        try:
            fits.append(fit_delta(results, law, m, int(g), options))
        except FitError as error:
            failures[f"{law} {m} group_size {g}"] = str(error)
    try:
        base = fit_base(results, options)
    except FitError as error:
        base, failures["base"] = None, str(error)
    if not fits:
        raise FitError("no law could be fitted: " + "; ".join(failures.values()))
    return StudyFit(fits, base, failures)


def predict_delta(fit: LawFit, params: float, tokens: float, bits: int) -> Estimate:
    """δ at (N, D, P)."""
    return fit.estimate(lambda theta: float(np.exp(fit.law.model(theta, query(params, tokens, bits))[0][0])))


def max_tokens_per_param(fit: LawFit, params: float, bits: int, budget: float, search=(1e-2, 1e7)) -> Estimate:
    """The largest D/N with δ ≤ budget at this N and P (0: over budget at the low end; inf: never over)."""

    def solve(theta):
        def excess(u):
            return fit.law.model(theta, query(params, params * np.exp(u), bits))[0][0] - np.log(budget)

        low, high = np.log(search)
        if excess(high) <= 0:
            return np.inf
        return 0.0 if excess(low) > 0 else float(np.exp(optimize.brentq(excess, low, high, xtol=1e-12)))

    return fit.estimate(solve)


def min_bits(fit: LawFit, params: float, tokens_per_param: float, budget: float) -> Estimate:
    """The smallest integer P in 2..16 with δ ≤ budget at this N and D/N (inf: none)."""

    def solve(theta):
        delta = np.exp(fit.law.model(theta, query(params, params * tokens_per_param, BIT_RANGE))[0])
        return float(next((p for p, d in zip(BIT_RANGE, delta, strict=True) if d <= budget), np.inf))

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

    return _estimate(solve, np.concatenate([fit.theta, base.theta]), np.hstack([fit.boot, base.boot]))


def forecast_table(fit: LawFit, base: LawFit | None = None, predict: Sequence[dict] = (), budget=None, params=None,
                   bits=None, tokens_per_param=None) -> pd.DataFrame:  # fmt: skip
    """The forecasts these arguments ask for (δ at each {N, D, P}; with budget, params and bits: the largest D/N;
    with budget, params and tokens_per_param: the smallest P; with base, params and bits: the critical D)."""
    asked = [("delta", f"N={q['N']:g} D={q['D']:g} P={q['P']:g}", predict_delta(fit, q["N"], q["D"], q["P"]))
             for q in predict]  # fmt: skip
    if None not in (budget, params, bits):
        estimate = max_tokens_per_param(fit, params, bits, budget)
        asked.append(("max_tokens_per_param", f"N={params:g} P={bits} budget={budget:g}", estimate))
    if None not in (budget, params, tokens_per_param):
        estimate = min_bits(fit, params, tokens_per_param, budget)
        asked.append(("min_bits", f"N={params:g} D/N={tokens_per_param:g} budget={budget:g}", estimate))
    if base is not None and None not in (params, bits):
        asked.append(("critical_tokens", f"N={params:g} P={bits}", critical_tokens(fit, base, params, bits)))
    head = {"law": fit.law.name, "method": fit.method, "group_size": fit.group_size}
    return pd.DataFrame([head | {"forecast": f, "inputs": i, **vars(e)} for f, i, e in asked])


def simulate_results(law: Law, values: dict[str, float], sizes: Sequence[float], ratios: Sequence[float],
                     bits: Sequence[int], noise: float = 0.1, seed: int = 0, base: dict[str, float] | None = None,
                     base_noise: float = 0.005) -> pd.DataFrame:  # fmt: skip
    """Synthetic loss results of a law with log-normal noise (CI ±2σ): for tests, benchmarks, study planning."""
    rng = np.random.default_rng(seed)
    n, r, p = (a.ravel() for a in np.meshgrid(sizes, ratios, bits, indexing="ij"))
    x = query(n, n * r, p)
    delta = np.exp(law.model(law.theta(values), x)[0] + rng.normal(0.0, noise, len(n)))
    checkpoint = np.array([f"sim/n{a:g}/tpp{b:g}" for a, b in zip(n, r, strict=True)])
    fp = np.full(len(n), 3.0)
    if base is not None:  # one full-precision loss per checkpoint
        _, first, inverse = np.unique(checkpoint, return_index=True, return_inverse=True)
        fp = np.exp(BASE.model(BASE.theta(base), x)[0] + rng.normal(0.0, base_noise, len(n)))[first][inverse]
    return pd.DataFrame(
        {"checkpoint": checkpoint, "params": n, "nonembedding_params": n, "tokens": n * r, "tokens_per_param": r,
         "method": "sim", "bits": p.astype(int), "group_size": -1, "symmetric": True, "eval": "sim", "metric": "loss",
         "fp_value": fp, "quant_value": fp + delta, "delta": delta, "delta_ci_low": delta * np.exp(-2 * noise),
         "delta_ci_high": delta * np.exp(2 * noise), "n": 0, "granularity": "channel", "seconds": 0.0}
    )  # fmt: skip
