"""Whether points identify a law, and its optimum on them: the measured points each parameter needs, the
starting grid re-centred on the data, and many fits solved as one batch (`solve.py`) — one plain fit, or every
bootstrap resample and held-out fold of one at once, each a reweighting of the same points."""

from __future__ import annotations

import numpy as np
from scipy import special

from ptq_eval.fit.data import FitError
from ptq_eval.fit.laws import Law, Points, per_bit_law
from ptq_eval.fit.solve import minimize


def _groups(law: Law, points: Points) -> list[tuple[str, np.ndarray]]:
    """The blocks of points a law's parameters must be identified on: one per bit width for per-bit laws."""
    return [(f" at P={p:g}", points.bits == p) for p in law.per_bits] or [("", np.ones(len(points), dtype=bool))]


def _block_size(law: Law) -> int:
    return len(law.parameters) // max(1, len(law.per_bits))


def _distinct(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """How many distinct `values` each row of `present` (B, n) holds."""
    _, inverse = np.unique(values, return_inverse=True)
    seen = np.zeros((len(present), inverse.max(initial=-1) + 1))
    np.maximum.at(seen, (slice(None), inverse), present.astype(float))
    return (seen > 0).sum(axis=1)


def _conditions(law: Law, points: Points, weights: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """What the measured (uncensored) points of each row of `weights` (B, n; a point's multiplicity) need to
    identify the law, in the order `check` reports them: (condition, where, holds per row)."""
    measured = ~points.censored
    count = weights * measured
    present = count > 0
    k, found = _block_size(law), []
    for where, rows in _groups(law, points):
        found.append(("points", where, count[:, rows].sum(axis=1) > k))
        found.append(("sizes", where, _distinct(points.log_n[rows], present[:, rows]) >= 2))
        design = np.column_stack([np.ones(rows.sum()), points.log_n[rows], points.log_d[rows]])
        singular = np.linalg.svd(np.sqrt(count[:, rows])[..., None] * design, compute_uv=False)  # as repeated rows
        found.append(("rank", where, (singular > 1e-6).sum(axis=1) >= 3))
    if law.needs_phase:
        found.append(("phase", "", _distinct(points.phase, present) >= 2))
    if law.needs_bits:
        found.append(("bits", "", _distinct(points.bits, present) >= 2))
    return found


def check(law: Law, points: Points) -> None:
    """Raise FitError, saying what to measure, when the measured (uncensored) points cannot identify the law."""
    conditions = _conditions(law, points, np.ones((1, len(points))))
    failed = [(name, where) for name, where, holds in conditions if not holds[0]]
    if not failed:
        return
    name, where = failed[0]
    measured = points.take(~points.censored)
    group = measured.take(dict(_groups(law, measured)).get(where, np.ones(len(measured), dtype=bool)))
    k = _block_size(law)
    messages = {
        "points": lambda: f"{law.name}{where}: {k} parameters but only {len(group)} usable points from "
                  f"{len(set(group.checkpoint))} checkpoints; measure at least {k + 1} points with δ significantly > 0",
        "sizes": lambda: f"{law.name}{where}: every usable point comes from one model size "
                 f"(N={np.exp(group.log_n[0]):.0f}), so the exponent of N is not identifiable; measure at least two "
                 "model sizes",
        "rank": lambda: f"{law.name}{where}: D and N vary together, so the exponents of D and N cannot be told apart; "
                "measure at least two tokens-per-parameter ratios",
        "phase": lambda: f"{law.name}: every usable point has the same learning-rate phase (decay_done "
                 f"{measured.phase[0]:.2f}); measure checkpoints at several points of their decay (a cosine "
                 "ladder's mid-run checkpoints)",
        "bits": lambda: f"{law.name}: its bits term needs at least two bit widths with δ significantly > 0 "
                f"(found only P={measured.bits[0]:g}); measure at least two bit widths",
    }  # fmt: skip
    raise FitError(messages[name]())


def _above(law: Law, theta: np.ndarray, points: Points, weights: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Per block: how many measured points (with their multiplicity) each row's law lies above the limit of."""
    measured = ~points.censored
    above = (law.model(theta, points)[0] > points.limit) & measured
    return [(where, (weights * above)[:, rows].sum(axis=1)) for where, rows in _groups(law, points)]


def _check_above(law: Law, theta: np.ndarray, points: Points) -> None:
    """Raise FitError when the law sank below the detection limits of its measured points: nothing then ties it
    to them (the degenerate corner of Powell's estimator, within reach when CIs are wide for their δ)."""
    measured = ~points.censored
    for where, counts in _above(law, theta[None], points, np.ones((1, len(points)))):
        if counts[0] <= _block_size(law):
            rows = dict(_groups(law, points))[where] & measured
            raise FitError(
                f"{law.name}{where}: the censored fit lies below the detection limit of all but {counts[0]:.0f} "
                f"of {rows.sum()} measured points, so they no longer identify it: either their CIs are "
                "too wide for their δ (measure more eval tokens) or the law cannot follow them (its held-out error "
                "with censoring exclude tells which)"
            )


def _weighted_median(values: np.ndarray, eligible: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The median of each start's `values` (S, n) over its `eligible` points, each repeated as often as a row of
    `weights` (B, n) says, as np.median of the repeated values takes it; (B, S), NaN where none is eligible."""
    order = np.argsort(np.where(eligible, values, np.inf), axis=1)
    ranked = np.take_along_axis(values, order, axis=1)  # (S, n)
    counts = np.where(eligible[None], weights[:, None, :], 0.0)  # (B, S, n)
    cumulative = np.cumsum(np.take_along_axis(counts, np.broadcast_to(order, counts.shape), axis=2), axis=2)
    total = cumulative[..., -1]
    low = (cumulative > np.floor((total - 1) / 2)[..., None]).argmax(axis=2)
    high = (cumulative > np.floor(total / 2)[..., None]).argmax(axis=2)
    median = (np.take_along_axis(ranked, low.T, axis=1).T + np.take_along_axis(ranked, high.T, axis=1).T) / 2
    return np.where(total > 0, median, np.nan)


def _best_starts(law: Law, starts: np.ndarray, points: Points, weights: np.ndarray, huber: float,
                 keep: int) -> np.ndarray:  # fmt: skip
    """Each start re-centred on each row's data (its intercepts moved to the median residual of the measured
    points they apply to), scored by F there; the `keep` best per row, (B, keep, k)."""
    low, high = (np.array(side, dtype=float) for side in zip(*law.bounds, strict=True))
    starts = np.clip(np.asarray(starts, dtype=float), low, high)
    value, jac = law.model(starts, points)  # (S, n), (S, n, k)
    centred = np.broadcast_to(starts, (len(weights), *starts.shape)).copy()
    shifted = np.broadcast_to(value, (len(weights), *value.shape)).copy()
    for j in law.intercepts:
        shift = _weighted_median(points.y - value, (jac[..., j] != 0) & ~points.censored, weights)
        shift = np.nan_to_num(shift)
        centred[..., j] += shift
        shifted += shift[..., None] * jac[None, ..., j]
    loss = special.huber(huber, points.y - np.maximum(shifted, points.limit))
    scores = (weights[:, None, :] * loss).sum(axis=2)
    best = np.argsort(scores, axis=1, kind="stable")[:, :keep]
    return np.take_along_axis(centred, best[..., None], axis=1)


def _solve(law: Law, points: Points, weights: np.ndarray, starts, huber: float, keep: int) -> np.ndarray:
    """Each row's optimum (B, k): minimised from its `keep` best starts, the lowest F kept."""
    if len(law.per_bits) > 1:  # independent fits, one per bit width
        blocks = [(per_bit_law([p]), rows, slice(3 * i, 3 * i + 3))
                  for i, (p, (_, rows)) in enumerate(zip(law.per_bits, _groups(law, points), strict=True))]  # fmt: skip
        return np.concatenate(
            [_solve(b, points.take(rows), weights[:, rows], np.asarray(starts)[:, s], huber, keep)
             for b, rows, s in blocks], axis=1,
        )  # fmt: skip
    chosen = _best_starts(law, starts, points, weights, huber, keep)
    b, c, k = chosen.shape
    theta, loss = minimize(law, points, chosen.reshape(b * c, k), np.repeat(weights, c, axis=0), huber)
    best = loss.reshape(b, c).argmin(axis=1)
    return theta.reshape(b, c, k)[np.arange(b), best]


def identify(law: Law, points: Points, huber: float, starts=None, keep: int | None = None) -> np.ndarray:
    """The best optimum from these starts (default: the law's grid; each minimised, or the `keep` that score
    best), or FitError when the points cannot identify the law."""
    check(law, points)
    starts = np.asarray(law.starts if starts is None else starts, dtype=float)
    theta = _solve(law, points, np.ones((1, len(points))), starts, huber, keep or len(starts))[0]
    _check_above(law, theta, points)
    return theta


def refit(law: Law, points: Points, theta: np.ndarray, huber: float, weights: np.ndarray,
          starts: int) -> np.ndarray:  # fmt: skip
    """Refits on many reweightings of the points at once (B, n; a point's multiplicity, 0 left out), each
    minimised from the `starts` best on its data of the full fit and the grid's starts (all re-centred), the
    lowest kept; a NaN row where the data cannot identify the law."""
    fitted = np.full((len(weights), len(theta)), np.nan)
    ok = np.logical_and.reduce([holds for _, _, holds in _conditions(law, points, weights)])
    if ok.any():
        rows = weights[ok]
        solved = _solve(law, points, rows, np.vstack([theta, law.starts]), huber, starts)
        above = np.logical_and.reduce([n > _block_size(law) for _, n in _above(law, solved, points, rows)])
        fitted[np.flatnonzero(ok)[above]] = solved[above]
    return fitted
