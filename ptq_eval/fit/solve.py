"""Many censored Huber fits at once: every start, bootstrap resample and held-out fold of a law is one row of a
batch, solved together in vectorised NumPy instead of one SciPy call each.

Each row minimises, within the law's bounds, F(θ) = Σ_i w_i · huber(r_i) / (δ · Σ_i w_i) with
r_i = y_i − max(f_i(θ), c_i) (`estimate.py` says why), where the weights w say how often each point enters the
row's data: 1 for a plain fit, its checkpoint's multiplicity in a bootstrap resample, 0 when held out. That is
exactly the objective of the resampled points themselves, so a row's optimum is the refit's.

The step is Gauss–Newton on Huber's loss, between two curvatures for a point above its limit: 1 where
|r| ≤ δ, and beyond it μ·δ/|r|. At μ = 1 that is iteratively reweighted least squares (the quadratic touching
Huber's loss at r lies above it, so for a law linear in θ the step never raises F, but it crawls when δ is
small next to the residuals, as here: median regression in effect); as μ → 0 it is Newton's step (beyond δ
Huber's loss is straight), which lands on the optimum once it knows which points the law passes through, but
overshoots before. μ is adapted per row as a trust region: divided by 10 after a full-length step that lowered
F, multiplied by 10 (up to 1) after any shorter one. A point below its limit adds no curvature (its
loss does not move with θ there). The step solves (Jᵀ W J) s = Jᵀ ψ(r), ψ Huber's clipped residual.

Bounds: a parameter at a bound whose gradient points outward is held there for the step (projected Newton),
the rest stepped and clipped into the box. Each step is halved until F decreases (starting from twice the last
length a halved step took, at most the full step); a row stops when its step moves no parameter by more than
`XTOL`, lowers F by less than `FTOL`, or no halving decreases F; or after `MAX_STEPS` steps.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from ptq_eval.fit.laws import Law, Points

XTOL = 1e-9  # a step smaller than this in every parameter (log units or exponents) ends a row's iteration
FTOL = 1e-13  # so does a step that lowers F by less than this (relative; absolute below F = 1)
MAX_STEPS = 500
TRIALS = 4  # step lengths tried at once after the first fails, each half the last
HALVINGS = 9 * TRIALS  # after the first length fails, at most this many halvings
BLEND = (1e-6, 1.0)  # μ's range: Newton-like at the low end, IRLS at the high end
RIDGE = 1e-12  # relative to the largest curvature: keeps a step finite along a direction no point constrains


def objective(law: Law, theta: np.ndarray, points: Points, weights: np.ndarray, huber: float) -> np.ndarray:
    """F per row: the weighted mean Huber loss of the censored residuals over δ (rows of `theta`, `weights`)."""
    value = law.model(theta, points, jac=False)[0]
    loss = special.huber(huber, points.y - np.maximum(value, points.limit))
    return (weights * loss).sum(axis=-1) / (huber * weights.sum(axis=-1))


def _step(law: Law, theta: np.ndarray, points: Points, weights: np.ndarray, huber: float,
          bounds: tuple[np.ndarray, np.ndarray], blend: np.ndarray) -> np.ndarray:  # fmt: skip
    """Each row's Gauss–Newton step at curvature blend μ, parameters held at a bound they press against."""
    value, jac = law.model(theta, points)
    above = value > points.limit
    residual = points.y - np.where(above, value, points.limit)
    size = np.abs(residual)
    beyond = blend[:, None] * huber / np.maximum(size, huber)
    curvature = weights * above * np.where(size <= huber, 1.0, beyond)
    pull = weights * above * np.clip(residual, -huber, huber)  # −∂F/∂f, up to the positive factor δ·Σw
    gradient = -(pull[:, None, :] @ jac)[:, 0]
    hessian = np.swapaxes(jac, 1, 2) @ (curvature[..., None] * jac)
    low, high = bounds
    held = ((theta <= low) & (gradient > 0)) | ((theta >= high) & (gradient < 0))
    free = (~held).astype(float)
    hessian *= free[:, :, None] * free[:, None, :]
    scale = np.diagonal(hessian, axis1=1, axis2=2).max(axis=1, initial=0.0)
    diagonal = np.where(held, 1.0, RIDGE * np.where(scale > 0, scale, 1.0)[:, None])
    k = theta.shape[1]
    hessian[:, np.arange(k), np.arange(k)] += diagonal
    return np.linalg.solve(hessian, -(gradient * free)[..., None])[..., 0]


def minimize(law: Law, points: Points, theta: np.ndarray, weights: np.ndarray,
             huber: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Minimise F from each row of `theta` (B, k) under the matching row of `weights` (B, n), every row with
    some weight; returns the optima and F there."""
    bounds = tuple(np.array(side, dtype=float) for side in zip(*law.bounds, strict=True))
    theta = np.clip(np.array(theta, dtype=float), *bounds)
    weights = np.asarray(weights, dtype=float)
    loss = objective(law, theta, points, weights, huber)
    blend = np.full(len(theta), BLEND[1])
    reach = np.ones(len(theta))  # the step length tried first: twice the last one accepted, at most 1
    active = np.arange(len(theta))
    for _ in range(MAX_STEPS):
        if not len(active):
            break
        rows, current = theta[active], loss[active]
        step = _step(law, rows, points, weights[active], huber, bounds, blend[active])
        length, moved = reach[active].copy(), np.zeros(len(active), dtype=bool)
        pending = np.arange(len(active))
        for trials in (1, *[TRIALS] * (HALVINGS // TRIALS)):
            lengths = length[pending, None] / 2.0 ** np.arange(trials)  # (p, trials), longest first
            trial = np.clip(rows[pending, None] + lengths[..., None] * step[pending, None], *bounds)
            found = objective(law, trial, points, weights[active[pending], None], huber)
            better = found < current[pending, None]
            first, hit = better.argmax(axis=1), better.any(axis=1)
            done = pending[hit]
            rows[done], current[done] = trial[hit, first[hit]], found[hit, first[hit]]
            length[done], moved[done] = lengths[hit, first[hit]], True
            length[pending[~hit]] /= 2.0**trials
            pending = pending[~hit]
            if not len(pending):
                break
        full = moved & (length == 1)
        blend[active] = np.clip(np.where(full, blend[active] / 10, blend[active] * 10), *BLEND)
        reach[active] = np.where(length == reach[active], 1.0, np.minimum(2 * length, 1.0))
        change = np.abs(rows - theta[active]).max(axis=1)
        gain = loss[active] - current
        theta[active], loss[active] = rows, current
        active = active[moved & (change > XTOL) & (gain > FTOL * np.maximum(current, 1.0))]
    return theta, loss
