"""Paired degradation: quantized minus full precision on the same windows, with bootstrap CIs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptq_eval.evaluate.perplexity import WindowLosses

RESAMPLES = 2000


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


def _check_paired(fp: WindowLosses, quant: WindowLosses) -> None:
    if len(fp.counts) != len(quant.counts) or not np.array_equal(fp.counts, quant.counts):
        raise ValueError(f"runs are not paired: {len(fp.counts)} fp windows vs {len(quant.counts)} quantized windows")


def paired_loss_metrics(
    fp: WindowLosses, quant: WindowLosses, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> list[PairedMetric]:
    """Loss (nats/token) and perplexity deltas; CIs from a bootstrap over windows, resampled in pairs."""
    _check_paired(fp, quant)
    n = quant.tokens
    if fp.nonfinite or quant.nonfinite:
        nan = math.nan
        return [PairedMetric(m, fp.mean_loss, quant.mean_loss, nan, nan, nan, n) for m in ("loss", "perplexity")]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(fp.counts), size=(resamples, len(fp.counts)))
    tokens = fp.counts[picks].sum(axis=1)
    fp_means = fp.sums[picks].sum(axis=1) / tokens
    quant_means = quant.sums[picks].sum(axis=1) / tokens
    tail = (1 - level) / 2 * 100
    metrics = []
    for name, transform in (("loss", lambda x: x), ("perplexity", np.exp)):
        fp_value, quant_value = float(transform(fp.mean_loss)), float(transform(quant.mean_loss))
        low, high = np.percentile(transform(quant_means) - transform(fp_means), [tail, 100 - tail])
        metrics.append(PairedMetric(name, fp_value, quant_value, quant_value - fp_value, float(low), float(high), n))
    return metrics
