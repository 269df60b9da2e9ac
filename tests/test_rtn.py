import torch

from ptq_eval.quant import QuantConfig, QuantError, quantizable_weights, quantize
from ptq_eval.quant.formats import quantize_tensor


def test_head_and_embeddings_are_not_quantized_by_default(tiny_model):
    names = {weight.name for weight in quantizable_weights(tiny_model)}
    assert names and not any("lm_head" in n or "embed" in n for n in names)
    assert len(names) == 2 * 4  # qkv, dense, h_to_4h, 4h_to_h per layer


def test_exclude_patterns_skip_layers(tiny_model):
    names = {weight.name for weight in quantizable_weights(tiny_model, ("lm_head", "*mlp*"))}
    assert names and not any("mlp" in n for n in names)


def test_rtn_rounds_every_chosen_weight_and_reports_errors(tiny_model):
    model = tiny_model
    head = model.get_output_embeddings().weight.detach().clone()
    before = {w.name: w.read().detach().clone() for w in quantizable_weights(model)}
    report = quantize(model, QuantConfig(method="rtn", bits=3, group_size=16, symmetric=False))
    after = {w.name: w.read() for w in quantizable_weights(model)}
    for name, weight in before.items():
        assert torch.equal(after[name], quantize_tensor(weight, 3, 16, False))
    assert torch.equal(model.get_output_embeddings().weight, head)
    assert len(report.layers) == len(before)
    assert all(0 < layer.relative_error < 1 for layer in report.layers)


def test_unknown_method_is_a_clear_error(tiny_model):
    import pytest

    with pytest.raises(
        QuantError, match=r"unknown quantization method 'smoothquant'; accepted: (?=.*rtn)(?=.*gptq)(?=.*awq)"
    ):
        quantize(tiny_model, QuantConfig(method="smoothquant", bits=4))
