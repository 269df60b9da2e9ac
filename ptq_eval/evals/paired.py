"""Paired degradation: quantized minus full precision on the same units, with bootstrap CIs.

Every metric here is a ratio of sums over units (windows, or documents) passed through a
transform: loss is Σ nats / Σ tokens, perplexity its exp, accuracy Σ correct / Σ 1, lm-eval's
word perplexity exp(−Σ log-likelihood / Σ words). The CI of δ resamples units in pairs, so
whatever the two runs share (a hard document is hard for both) cancels: it is the CI of the
paired difference, never one built from two independent standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
DRAWS_PER_CHUNK = 2**22  # bootstrap indices drawn at once (32 MiB), however many units there are

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class UnitMetric:
    """transform(Σ values / Σ weights) over units; `n` is what the metric counts (tokens, documents)."""

    name: str
    values: np.ndarray
    weights: np.ndarray
    transform: Transform | None
    n: int
    ids: np.ndarray | None = None  # the units' identities (e.g. lm-eval doc ids), checked when pairing

    def of(self, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        ratio = values / weights
        return ratio if self.transform is None else self.transform(ratio)

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.values).all())

    @property
    def value(self) -> float:
        """The metric; NaN when any unit is not finite (never averaged away)."""
        return float(self.of(self.values.sum(), self.weights.sum())) if self.finite else math.nan


@dataclass(frozen=True)
class PairedMetric:
    """One metric for both runs, their difference, and the difference's confidence interval."""

    metric: str
    fp_value: float
    quant_value: float
    delta: float
    ci_low: float
    ci_high: float
    n: int


def _check_paired(fp: UnitMetric, quant: UnitMetric) -> None:
    if fp.name != quant.name or len(fp.values) != len(quant.values):
        raise ValueError(
            f"runs are not paired: fp {fp.name} over {len(fp.values)} units vs "
            f"quantized {quant.name} over {len(quant.values)} units"
        )
    same_ids = fp.ids is None or quant.ids is None or np.array_equal(fp.ids, quant.ids)
    if not same_ids or not np.array_equal(fp.weights, quant.weights):
        raise ValueError(f"runs are not paired: {fp.name} was scored on different units (ids or weights differ)")


def _bootstrap_deltas(fp: UnitMetric, quant: UnitMetric, resamples: int, seed: int) -> np.ndarray:
    """δ of each bootstrap resample of the units (the same resample for both runs)."""
    rng = np.random.default_rng(seed)
    units = len(fp.values)
    chunk = max(1, DRAWS_PER_CHUNK // units)
    deltas = []
    for start in range(0, resamples, chunk):
        picks = rng.integers(0, units, size=(min(chunk, resamples - start), units))
        weights = fp.weights[picks].sum(axis=1)
        deltas.append(quant.of(quant.values[picks].sum(axis=1), weights) - fp.of(fp.values[picks].sum(axis=1), weights))
    return np.concatenate(deltas)


def paired_metrics(
    fp: list[UnitMetric], quant: list[UnitMetric], level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> list[PairedMetric]:
    """Each metric's δ = quantized − fp, CI from a paired bootstrap over its units (percentile)."""
    if [m.name for m in fp] != [m.name for m in quant]:
        raise ValueError(f"runs are not paired: fp metrics {[m.name for m in fp]} vs {[m.name for m in quant]}")
    tail = (1 - level) / 2 * 100
    paired = []
    for f, q in zip(fp, quant, strict=True):
        _check_paired(f, q)
        if not (f.finite and q.finite):
            nan = math.nan
            paired.append(PairedMetric(f.name, f.value, q.value, nan, nan, nan, q.n))
            continue
        low, high = np.percentile(_bootstrap_deltas(f, q, resamples, seed), [tail, 100 - tail])
        paired.append(PairedMetric(f.name, f.value, q.value, q.value - f.value, float(low), float(high), q.n))
    return paired


def difference_ci(a, b) -> tuple:
    """δ_b − δ_a and its 95% interval from the two intervals (Newcombe's MOVER: each side's lower and upper
    half-widths combined in quadrature); a and b hold delta, delta_ci_low and delta_ci_high (table rows or
    columns). It treats the two δs as independent, which is conservative when they share evaluation tokens
    (their errors then correlate positively)."""
    difference = b.delta - a.delta
    low = difference - np.hypot(b.delta - b.delta_ci_low, a.delta_ci_high - a.delta)
    high = difference + np.hypot(b.delta_ci_high - b.delta, a.delta - a.delta_ci_low)
    return difference, low, high
