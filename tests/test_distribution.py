"""KLD, top-1 agreement and Δp from the compact full-precision reference, against a float64 full-vocabulary
computation from both models' logits; and what happens where the metrics cannot be computed."""

import copy

import numpy as np
import pytest
import torch
from bench.kld import Captured  # the bench's float64 reference, computed from the logits themselves
from bench.kld import same_logits as direct

import ptq_eval.evals.model_parts as model_parts
from ptq_eval.evals import distribution
from ptq_eval.evals.distribution import Comparison, Reference, unit_metrics
from ptq_eval.evals.perplexity import window_losses
from ptq_eval.evals.windows import make_windows
from ptq_eval.quant import QuantConfig, quantize


@pytest.fixture
def models(tiny_model):
    with torch.no_grad():  # peaked next-token distributions, as a trained model's are (random weights give flat ones)
        tiny_model.get_output_embeddings().weight *= 30
    quantized = copy.deepcopy(tiny_model)
    quantize(quantized, QuantConfig(method="rtn", bits=3, group_size=-1, symmetric=True))
    return tiny_model.eval(), quantized.eval()


def test_kld_top1_and_delta_p_equal_a_float64_full_vocabulary_computation(models, monkeypatch):
    fp_model, quant_model = models
    windows = make_windows(torch.randint(0, 64, (2000,), generator=torch.Generator().manual_seed(1)), seq_len=12)
    monkeypatch.setattr(model_parts, "LOGITS_PER_CHUNK", 5 * 64)  # 5 positions per chunk: many chunks
    monkeypatch.setattr(distribution, "TOP", 4)  # most of the vocabulary in the tail
    reference, fp_logits, quant_logits = Reference(), Captured(), Captured()
    fp_losses = window_losses(fp_model, windows, batch_size=7, observer=reference)
    window_losses(fp_model, windows, batch_size=7, observer=fp_logits)
    compared = Comparison(reference.finished())
    quant_losses = window_losses(quant_model, windows, batch_size=7, observer=compared)
    window_losses(quant_model, windows, batch_size=7, observer=quant_logits)
    per_token, expected = compared.per_token(), direct(fp_logits, quant_logits)
    np.testing.assert_allclose(per_token["kld"], expected["kld"], atol=1e-6, rtol=0)  # found: 2.8e-7 at most
    np.testing.assert_array_equal(per_token["top1_agree"], expected["top1_agree"])
    np.testing.assert_allclose(per_token["delta_p"], expected["delta_p"], atol=1e-6, rtol=0)
    assert expected["kld"].mean() > 1e-3  # 3-bit RTN moved the distributions: the test compares something
    assert 0.2 < per_token["top1_agree"].mean() < 1.0
    np.testing.assert_allclose(fp_losses.sums, window_losses(fp_model, windows).sums, rtol=1e-6)
    metrics = {m.name: m for m in unit_metrics(per_token, quant_losses.token_windows, quant_losses.counts)}
    assert metrics["kld"].value == pytest.approx(per_token["kld"].mean(), rel=1e-12)
    assert metrics["rms_delta_p"].value == pytest.approx(np.sqrt(np.mean(per_token["delta_p"] ** 2)), rel=1e-12)
    assert np.bincount(quant_losses.token_windows).tolist() == windows.scored.tolist()


def test_the_model_against_itself_moves_nothing(models):
    fp_model, _ = models
    windows = make_windows(torch.randint(0, 64, (500,), generator=torch.Generator().manual_seed(2)), seq_len=12)
    reference = Reference()
    window_losses(fp_model, windows, observer=reference)
    compared = Comparison(reference.finished())
    window_losses(fp_model, windows, observer=compared)
    per_token = compared.per_token()
    assert np.abs(per_token["kld"]).max() < 1e-6 and per_token["top1_agree"].min() == 1.0
    assert np.abs(per_token["delta_p"]).max() == 0.0


def test_a_quantized_head_is_said_and_no_metric_is_made_up(models):
    fp_model, _ = models
    windows = make_windows(torch.arange(200) % 64, seq_len=12)
    reference = Reference()
    window_losses(fp_model, windows, observer=reference)
    quantized = copy.deepcopy(fp_model)  # ptq-eval never rounds the head; a released artifact may have
    with torch.no_grad():
        quantized.get_output_embeddings().weight.mul_(1.001)
    compared = Comparison(reference.finished())
    window_losses(quantized, windows, observer=compared)
    assert compared.per_token() is None and "output head was changed" in compared.why_not


STUDY = """
name: dist
ladder: ["{ladder}/n7k/tpp160"]
quant: [{{method: rtn, bits: [3, 8], group_size: -1}}]
evals:
  - {{kind: perplexity, tokens: 2048, seq_len: 32}}
  - {{kind: perplexity, windows: rolling, documents: 3, seq_len: 32}}
"""


def test_a_resumed_study_compares_with_the_reference_it_scores_again(write_study, tmp_path):
    """The reference is not stored: a run that finds its baselines stored scores the full-precision model again,
    and gets the same metrics as a run that did it all at once."""
    from ptq_eval.report.study import study_report
    from ptq_eval.results import study_results
    from ptq_eval.runner import run_study
    from ptq_eval.spec import load_study
    from ptq_eval.store import Store

    study = load_study(write_study("dist", STUDY))
    with Store(tmp_path / "once.sqlite") as store:
        run_study(study, store)
        once = study_results(study, store)
        beside = next(s for s in study_report(study, store).sections if s.title.startswith("Beyond the mean"))
    spread = beside.tables[-1]
    assert [t.caption.rsplit(": beside", 1)[0] for t in beside.tables[:2]] == [e.name for e in study.evals]
    assert spread.caption.endswith("the percentiles llama.cpp prints") and len(spread.frame) == 2 * 2
    assert (spread.frame["KLD p99.9"].astype(float) >= spread.frame["KLD p50"].astype(float)).all()
    partial = study.model_copy(update={"quant": [study.quant[0].model_copy(update={"bits": 3})]})
    with Store(tmp_path / "resumed.sqlite") as store:
        run_study(partial, store)  # the baselines and 3 bits
        assert run_study(study, store).ran == 2  # 8 bits, against stored baselines
        resumed = study_results(study, store)
    columns = ["eval", "bits", "metric", "quant_value", "delta", "delta_ci_low", "delta_ci_high"]
    assert set(once.metric) >= {"kld", "top1_agree", "delta_p", "rms_delta_p"}
    assert once[columns].equals(resumed[columns])
    kld = once[once.metric == "kld"].set_index(["eval", "bits"]).quant_value
    assert (kld > 0).all() and (kld.xs(3, level="bits") > kld.xs(8, level="bits")).all()


def test_a_study_stored_before_the_metrics_is_scored_again_and_says_why(write_study, tmp_path):
    from ptq_eval.runner import run_study
    from ptq_eval.spec import load_study
    from ptq_eval.store import Store

    study = load_study(write_study("dist-stale", STUDY))
    without = study.model_copy(update={"evals": [e.model_copy(update={"distribution": False}) for e in study.evals]})
    with Store(tmp_path / "s.sqlite") as store:
        assert run_study(without, store).ran == 4
        again = run_study(study, store)
        assert again.ran == 4 and "distribution metrics (kld, top1_agree, delta_p) changed" in str(again.rescored)


@pytest.mark.parametrize(("dtype", "autocast"), [(torch.bfloat16, None), (torch.float32, "bfloat16")])
def test_in_bfloat16_kld_carries_only_the_logits_own_rounding(models, dtype, autocast):
    """A bfloat16 model (or autocast) rounds every logit; the tail term h·m does not see that rounding. Measured:
    ≤ 1.2e-5 (bf16 model) and ≤ 7.5e-5 (autocast) per token, the mean within 2e-5 of it relative."""
    fp_model, quant_model = (copy.deepcopy(m).to(dtype) for m in models)
    windows = make_windows(torch.randint(0, 64, (2000,), generator=torch.Generator().manual_seed(1)), seq_len=12)
    reference, fp_logits, quant_logits = Reference(), Captured(), Captured()
    window_losses(fp_model, windows, autocast=autocast, observer=reference)
    compared = Comparison(reference.finished())
    window_losses(quant_model, windows, autocast=autocast, observer=compared)
    window_losses(fp_model, windows, autocast=autocast, observer=fp_logits)
    window_losses(quant_model, windows, autocast=autocast, observer=quant_logits)
    ours, expected = compared.per_token()["kld"], direct(fp_logits, quant_logits)["kld"]
    np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=0)
    assert ours.mean() == pytest.approx(expected.mean(), rel=1e-4)


def test_a_model_without_a_separate_head_gets_no_distribution_metrics_and_says_why(models, monkeypatch):
    """The losses still pair; the distribution metrics are left out of both sides with the reason in the details."""
    import torch.nn

    import ptq_eval.evals.perplexity as perplexity
    from ptq_eval.evals.kinds import PerplexityEval
    from ptq_eval.evals.kinds.perplexity import PerplexityEvaluator
    from ptq_eval.evals.model_parts import ModelParts
    from ptq_eval.evals.paired import paired_metrics

    def unsplit(model, device):  # as for a model whose logits are not head(last hidden state)
        def whole(ids, **kwargs):
            return model(input_ids=ids, use_cache=False)

        return ModelParts(whole, torch.nn.Identity(), split=False, cache_argument="past_key_values")

    monkeypatch.setattr(perplexity, "model_parts", unsplit)
    fp_model, quant_model = models
    windows = make_windows(torch.randint(0, 64, (600,), generator=torch.Generator().manual_seed(3)), seq_len=12)
    evaluation = PerplexityEval(kind="perplexity", tokens=512, seq_len=12)
    evaluator = PerplexityEvaluator(evaluation, windows, {})
    fp = evaluator.score(fp_model)
    quant = evaluator.score(quant_model, fp)
    assert set(quant.not_computed) == {"kld", "top1_agree", "delta_p", "rms_delta_p"}
    assert "not a linear map" in quant.details["distribution"]["not_computed"]
    kept = [m for m in fp.metrics if m.name not in quant.not_computed]
    assert [m.metric for m in paired_metrics(kept, quant.metrics)] == ["loss", "perplexity"]
