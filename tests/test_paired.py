import math

import numpy as np
import pytest
import torch

from ptq_eval.evaluate.paired import paired_loss_metrics
from ptq_eval.evaluate.perplexity import WindowLosses, make_windows


def losses(sums, counts=None, nonfinite=0):
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.full(len(sums), 10, dtype=np.int64) if counts is None else np.asarray(counts)
    return WindowLosses(sums, counts, nonfinite)


def by_metric(metrics):
    return {m.metric: m for m in metrics}


def test_identical_runs_have_zero_delta_and_zero_width_ci():
    rng = np.random.default_rng(1)
    fp = losses(rng.uniform(20, 40, 50))
    loss = by_metric(paired_loss_metrics(fp, fp))["loss"]
    assert loss.delta == 0 and loss.ci_low == 0 and loss.ci_high == 0 and loss.n == 500


def test_constant_per_token_shift_is_recovered_exactly():
    """Every token 0.05 nats worse: δ = 0.05 and, paired, the CI has no width at all."""
    rng = np.random.default_rng(2)
    fp = losses(rng.uniform(20, 40, 50))
    quant = losses(fp.sums + 0.05 * fp.counts)
    metrics = by_metric(paired_loss_metrics(fp, quant))
    assert metrics["loss"].delta == pytest.approx(0.05)
    assert metrics["loss"].ci_low == pytest.approx(0.05) and metrics["loss"].ci_high == pytest.approx(0.05)
    ppl = metrics["perplexity"]
    assert ppl.delta == pytest.approx(math.exp(quant.mean_loss) - math.exp(fp.mean_loss))
    assert ppl.ci_low <= ppl.delta <= ppl.ci_high


def test_ci_matches_the_normal_theory_width_for_noisy_differences():
    rng = np.random.default_rng(3)
    n = 400
    fp = losses(rng.uniform(20, 40, n))
    differences = rng.normal(0.2, 1.0, n)  # per-window summed differences, 10 tokens each
    quant = losses(fp.sums + differences)
    loss = by_metric(paired_loss_metrics(fp, quant, resamples=4000))["loss"]
    assert loss.delta == pytest.approx(differences.mean() / 10)
    half_width = 1.96 * differences.std(ddof=1) / math.sqrt(n) / 10
    assert (loss.ci_high - loss.ci_low) / 2 == pytest.approx(half_width, rel=0.1)


def test_nonfinite_losses_give_nan_never_an_average():
    fp = losses([10.0, 12.0])
    quant = losses([10.0, math.inf], nonfinite=1)
    assert math.isnan(quant.mean_loss)
    loss = by_metric(paired_loss_metrics(fp, quant))["loss"]
    assert math.isnan(loss.delta) and math.isnan(loss.ci_low)


def test_unpaired_runs_are_refused():
    with pytest.raises(ValueError, match="not paired"):
        paired_loss_metrics(losses([1.0, 2.0]), losses([1.0, 2.0, 3.0]))


def test_windows_are_spread_over_the_stream_and_overlap_by_one_token():
    stream = torch.arange(1001)
    windows = make_windows(stream, seq_len=10)
    assert windows.shape == (100, 11)
    assert torch.equal(windows[1, 0], windows[0, -1])
    spread = make_windows(stream, seq_len=10, tokens=50)
    assert spread.shape == (5, 11) and spread[-1, 0] >= 800
    with pytest.raises(ValueError, match="fewer than one window"):
        make_windows(torch.arange(5), seq_len=10)
