import math

import numpy as np
import pytest

from ptq_eval.evals.paired import UnitMetric, paired_metrics
from ptq_eval.evals.perplexity import WindowLosses, loss_metrics


def paired_loss_metrics(fp, quant, **options):
    return paired_metrics(loss_metrics(fp), loss_metrics(quant), **options)


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
    assert ppl.delta == pytest.approx(math.exp(loss_metrics(quant)[0].value) - math.exp(loss_metrics(fp)[0].value))
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
    assert math.isnan(loss_metrics(quant)[0].value) and not math.isnan(loss_metrics(fp)[0].value)
    loss = by_metric(paired_loss_metrics(fp, quant))["loss"]
    assert math.isnan(loss.delta) and math.isnan(loss.ci_low)


def test_unpaired_runs_are_refused():
    with pytest.raises(ValueError, match="not paired"):
        paired_loss_metrics(losses([1.0, 2.0]), losses([1.0, 2.0, 3.0]))


def accuracy(correct, ids=None):
    correct = np.asarray(correct, dtype=float)
    return UnitMetric("acc", correct, np.ones_like(correct), None, len(correct), ids)


def test_accuracy_delta_and_ci_come_from_the_paired_documents():
    """fp right on 700 of 1000 documents; quantized loses 60 of them and gains 20 others.

    δacc = −40/1000 exactly. Paired, the per-document differences d ∈ {−1, 0, +1} have
    sd = sqrt(80/1000 − 0.04²)·sqrt(1000/999), so the 95% CI half-width is ≈ 1.96·sd/√1000 = 0.0173;
    two independent binomial stderrs would give ≈ 0.0405, more than twice as wide.
    """
    fp = np.zeros(1000)
    fp[:700] = 1
    quant = fp.copy()
    quant[:60] = 0
    quant[900:920] = 1
    (acc,) = paired_metrics([accuracy(fp)], [accuracy(quant)], resamples=4000)
    assert (acc.fp_value, acc.quant_value, acc.n) == (0.7, 0.66, 1000)
    assert acc.delta == pytest.approx(-0.04, abs=1e-12)
    differences = quant - fp
    half_width = 1.96 * differences.std(ddof=1) / math.sqrt(1000)
    assert half_width == pytest.approx(0.0173, abs=1e-4)
    assert (acc.ci_high - acc.ci_low) / 2 == pytest.approx(half_width, rel=0.1)
    assert acc.ci_low < -0.04 < acc.ci_high < 0


def test_weighted_perplexity_pairs_by_document_ratio_of_sums():
    """lm-eval's word perplexity: exp(−Σ log-likelihood / Σ words), documents resampled in pairs."""
    words = np.array([10.0, 30.0, 60.0])
    fp_ll = np.array([-20.0, -60.0, -120.0])
    quant_ll = fp_ll * 1.1  # every document 10% worse: the ratio, so δ, is the same in every resample
    neg_exp = lambda x: np.exp(-x)  # noqa: E731
    fp = UnitMetric("word_perplexity", fp_ll, words, neg_exp, 100)
    quant = UnitMetric("word_perplexity", quant_ll, words, neg_exp, 100)
    (ppl,) = paired_metrics([fp], [quant])
    assert ppl.fp_value == pytest.approx(math.exp(2.0)) and ppl.quant_value == pytest.approx(math.exp(2.2))
    assert ppl.ci_low == pytest.approx(ppl.delta) and ppl.ci_high == pytest.approx(ppl.delta)


def test_documents_must_be_the_same_ones():
    with pytest.raises(ValueError, match="different units"):
        paired_metrics([accuracy([1, 0], ids=np.array([0, 1]))], [accuracy([1, 0], ids=np.array([0, 2]))])


def test_bootstrap_draws_do_not_depend_on_chunking(monkeypatch):
    import ptq_eval.evals.paired as paired

    rng = np.random.default_rng(5)
    fp, quant = losses(rng.uniform(20, 40, 64)), losses(rng.uniform(20, 40, 64))
    whole = paired_loss_metrics(fp, quant)
    monkeypatch.setattr(paired, "DRAWS_PER_CHUNK", 64 * 7)
    assert paired_loss_metrics(fp, quant) == whole
