import copy

import pytest
import torch

from ptq_eval.quant import DEFAULT_EXCLUDE, QuantConfig, quantize
from ptq_eval.quant.formats import quantize_tensor
from ptq_eval.quant.gptq_solve import gptq_weight
from ptq_eval.quant.statistics import Hessian, output_error


def correlated_problem(rows=32, columns=128, samples=2048, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / columns**0.5
    scales = torch.logspace(-1, 1, columns)[torch.randperm(columns, generator=generator)]
    x = (torch.randn(samples, columns, generator=generator) @ mixing) * scales
    weight = torch.randn(rows, columns, generator=generator)
    hessian = Hessian(columns)
    for chunk in x.split(256):
        hessian.add(chunk)
    return weight, x, hessian.matrix


def out_err(weight, quantized, x):
    return ((x @ (weight - quantized).T).pow(2).sum() / (x @ weight.T).pow(2).sum()).item()


def test_hessian_is_two_x_xt_over_n():
    _, x, hessian = correlated_problem(samples=512)
    assert torch.allclose(hessian, 2 * x.T @ x / len(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits", [3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [-1, 32])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_at_most_rtn_on_the_same_grid(bits, group_size, act_order):
    weight, x, hessian = correlated_problem()
    config = QuantConfig(method="gptq", bits=bits, group_size=group_size, options={"act_order": act_order})
    gptq = gptq_weight(weight, hessian, config).weight
    rtn = quantize_tensor(weight, bits, group_size)
    assert out_err(weight, gptq, x) <= out_err(weight, rtn, x)
    assert output_error(weight, gptq, hessian) == pytest.approx(out_err(weight, gptq, x), rel=1e-3)


def test_16_bits_reproduces_the_weights():
    weight, _, hessian = correlated_problem()
    quantized = gptq_weight(weight, hessian, QuantConfig(method="gptq", bits=16, group_size=-1)).weight
    assert torch.allclose(quantized, weight, atol=1e-3 * weight.abs().max().item())


@pytest.mark.parametrize("static_groups", [False, True])
def test_act_order_groups_stay_on_the_grid(static_groups):
    """Static groups are contiguous columns; otherwise groups run along the act-order permutation."""
    weight, _, hessian = correlated_problem()
    quantized = gptq_weight(
        weight,
        hessian,
        QuantConfig(method="gptq", bits=3, group_size=32, options={"act_order": True, "static_groups": static_groups}),
    ).weight
    columns = torch.arange(128) if static_groups else torch.argsort(torch.diag(hessian), descending=True)
    permuted = quantized[:, columns]
    for start in range(0, 128, 32):
        assert max(len(torch.unique(row)) for row in permuted[:, start : start + 32]) <= 8


def test_dead_columns_are_zeroed_and_ragged_groups_work():
    weight, x, _ = correlated_problem(columns=48)
    x[:, 5] = 0
    hessian = Hessian(48)
    hessian.add(x)
    quantized = gptq_weight(weight, hessian.matrix, QuantConfig(method="gptq", bits=4, group_size=32)).weight
    assert torch.all(quantized[:, 5] == 0) and torch.isfinite(quantized).all()


def test_deterministic():
    weight, _, hessian = correlated_problem()
    config = QuantConfig(method="gptq", bits=3, group_size=32, options={"act_order": True})
    assert torch.equal(gptq_weight(weight, hessian, config).weight, gptq_weight(weight, hessian, config).weight)


def test_gptq_beats_rtn_on_the_micro_ladder(micro_checkpoint, tmp_path):
    from ptq_eval.results import study_results
    from ptq_eval.runner import run_study
    from ptq_eval.spec import parse_study
    from ptq_eval.store import Store

    study = parse_study(
        {
            "name": "gptq-vs-rtn",
            "ladder": [str(micro_checkpoint)],
            "quant": [{"method": "rtn", "bits": [3, 4]}, {"method": "gptq", "bits": [3, 4], "act_order": True}],
            "calibration": {"samples": 64, "seq_len": 32},
            "evals": [{"kind": "perplexity", "tokens": 8192, "seq_len": 32}],
        }
    )
    with Store(tmp_path / "s.sqlite") as store:
        run_study(study, store)
        loss = study_results(study, store).query("metric == 'loss'").set_index(["method", "bits"]).delta
    for bits in (3, 4):
        assert loss[("gptq", bits)] <= loss[("rtn", bits)]
    assert loss[("rtn", 3)] > 0.01


@pytest.mark.parametrize(
    ("group_size", "act_order", "static"), [(-1, True, False), (32, False, False), (32, True, False), (32, True, True)]
)
def test_returned_grids_reproduce_the_weights_from_integer_codes(group_size, act_order, static):
    weight, _, hessian = correlated_problem()
    result = gptq_weight(
        weight,
        hessian,
        QuantConfig(
            method="gptq", bits=4, group_size=group_size, options={"act_order": act_order, "static_groups": static}
        ),
    )
    scale = result.scales[result.group_index.long()].T
    zero = result.zeros[result.group_index.long()].T
    codes = torch.round(result.weight / scale + zero)
    assert codes.min() >= 0 and codes.max() <= 15
    assert torch.allclose(scale * (codes - zero), result.weight, atol=1e-6)
    if group_size > 0 and (static or not act_order):
        assert torch.equal(result.group_index, torch.arange(128, dtype=torch.int32) // 32)


def quantized_copy(model, bits, device=None, move_model_to="cpu"):
    """GPTQ (group 16, act-order) of a copy of the model, optionally offloading blocks to `device`."""
    model = copy.deepcopy(model).to(move_model_to)
    calibration = torch.randint(0, 64, (16, 16), generator=torch.Generator().manual_seed(0))
    config = QuantConfig(method="gptq", bits=bits, group_size=16, options={"act_order": True})
    return model, quantize(model, config, DEFAULT_EXCLUDE, calibration, device=device)


def test_block_offload_to_the_models_own_device_is_bit_identical(tiny_model):
    plain, plain_report = quantized_copy(tiny_model, 3)
    offloaded, offloaded_report = quantized_copy(tiny_model, 3, device="cpu")
    weights = offloaded.state_dict()
    for name, weight in plain.state_dict().items():
        assert torch.equal(weight, weights[name]), name
    assert offloaded_report.layers == plain_report.layers
    for name, grids in plain_report.grids.items():
        assert all(torch.equal(a, b) for a, b in zip(grids, offloaded_report.grids[name], strict=True))


def _quantized_copy(model, config, calibration, cache=None):
    """The weights of a quantized copy of the model, by name."""
    copied = copy.deepcopy(model)
    quantize(copied, config, DEFAULT_EXCLUDE, calibration, cache=cache)
    return copied.state_dict()


def test_block_inputs_captured_once_per_checkpoint_give_the_same_weights(tiny_model, monkeypatch):
    from ptq_eval.quant import blocks

    recorded = []
    original = blocks._block_calls
    monkeypatch.setattr(blocks, "_block_calls", lambda *args: recorded.append(1) or original(*args))
    calibration = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    cache: dict = {}
    configs = [
        QuantConfig(method="gptq", bits=3, group_size=8, options={"act_order": True}),
        QuantConfig(method="gptq", bits=4, group_size=-1),
    ]
    shared = [_quantized_copy(tiny_model, config, calibration, cache) for config in configs]
    assert len(recorded) == 1  # the second config re-used the first one's block inputs
    fresh = [_quantized_copy(tiny_model, config, calibration) for config in configs]
    for with_cache, without in zip(shared, fresh, strict=True):
        assert all(torch.equal(with_cache[name], without[name]) for name in without)


def test_full_precision_hessians_are_exact_on_block_0_and_computed_once(tiny_model, monkeypatch):
    """sequential: none takes every Hessian from the full-precision model: block 0 sees the same inputs as in the
    sequential algorithm (bit-identical weights), later blocks do not (their inputs skip the quantization error)."""
    from ptq_eval.quant import blocks

    passes = []
    original = blocks._forward_until
    monkeypatch.setattr(blocks, "_forward_until", lambda *args: passes.append(1) or original(*args))
    calibration = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    cache: dict = {}
    shared = {"sequential": "none"}
    one_pass = [
        _quantized_copy(
            tiny_model, QuantConfig(method="gptq", bits=bits, group_size=8, options=shared), calibration, cache
        )
        for bits in (3, 4)
    ]
    assert len(passes) == 1  # one full-precision pass served both bit widths
    sequential = _quantized_copy(tiny_model, QuantConfig(method="gptq", bits=3, group_size=8), calibration)
    linear_weights = [name for name in sequential if name.endswith("weight") and "layernorm" not in name]
    block0 = [name for name in linear_weights if ".layers.0." in name]
    block1 = [name for name in linear_weights if ".layers.1." in name]
    assert all(torch.equal(one_pass[0][name], sequential[name]) for name in block0)
    assert not all(torch.equal(one_pass[0][name], sequential[name]) for name in block1)
    fresh = _quantized_copy(
        tiny_model, QuantConfig(method="gptq", bits=4, group_size=8, options={"sequential": "none"}), calibration
    )
    assert all(torch.equal(one_pass[1][name], fresh[name]) for name in fresh)  # the cached pass served it exactly
