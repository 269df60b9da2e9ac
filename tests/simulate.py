"""Synthetic loss results of a known law, in the `results` columns: for the fit tests, the gate tests and
tests/bench/fit_recovery.py."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ptq_eval.fit import BASE, Law, query


def simulate_results(law: Law, values: dict[str, float], sizes: Sequence[float], ratios: Sequence[float],
                     bits: Sequence[int], noise: float = 0.1, seed: int = 0, base: dict[str, float] | None = None,
                     base_noise: float = 0.005, measurement: float = 0.0,
                     phase: float = 1.0) -> pd.DataFrame:  # fmt: skip
    """Results of a law with log-normal noise σ=`noise` (the law's scatter). Without `measurement`, the CI is
    ±2σ in log space. With it, δ is also measured with additive noise (a paired eval's finite tokens) whose σ
    is `measurement` nats (times a log-normal factor of spread 0.3 per point), and the CI is δ ± 1.96 of that σ,
    so a small δ's CI reaches zero as it does in a real study. Every checkpoint is at learning-rate phase
    `phase` (decay_done; 1: annealed), which labels it when not 1."""
    rng = np.random.default_rng(seed)
    n, r, p = (a.ravel() for a in np.meshgrid(sizes, ratios, bits, indexing="ij"))
    x = query(n, n * r, p, phase)
    delta = np.exp(law.model(law.theta(values), x)[0] + rng.normal(0.0, noise, len(n)))
    low, high = delta * np.exp(-2 * noise), delta * np.exp(2 * noise)
    if measurement:
        sigma = measurement * np.exp(rng.normal(0.0, 0.3, len(n)))
        delta = delta + rng.normal(0.0, 1.0, len(n)) * sigma
        low, high = delta - 1.96 * sigma, delta + 1.96 * sigma
    ladder = "sim" if phase == 1 else f"sim-phase{phase:g}"
    checkpoint = np.array([f"{ladder}/n{a:g}/tpp{b:g}" for a, b in zip(n, r, strict=True)])
    fp = np.full(len(n), 3.0)
    if base is not None:  # one full-precision loss per checkpoint
        _, first, inverse = np.unique(checkpoint, return_index=True, return_inverse=True)
        fp = np.exp(BASE.model(BASE.theta(base), x)[0] + rng.normal(0.0, base_noise, len(n)))[first][inverse]
    return pd.DataFrame(
        {"checkpoint": checkpoint, "params": n, "nonembedding_params": n, "tokens": n * r, "tokens_per_param": r,
         "method": "sim", "bits": p.astype(int), "group_size": -1, "symmetric": True, "eval": "sim", "metric": "loss",
         "fp_value": fp, "quant_value": fp + delta, "delta": delta, "delta_ci_low": low, "delta_ci_high": high,
         "n": 0, "granularity": "channel", "decay_done": phase, "seconds": 0.0,
         "schedule": "wsd" if phase == 1 else "cosine"}
    )  # fmt: skip
