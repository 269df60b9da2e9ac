"""AWQ: where its scales fold (found by testing each family), what its searches promise, and its options."""

from __future__ import annotations

import pytest
import torch
from test_architectures import build, calibration

from ptq_eval.quant import QuantConfig, quantize, survey
from ptq_eval.quant.awq import InputMagnitudes, search_clip, search_scales
from ptq_eval.quant.folding import fold_targets
from ptq_eval.quant.formats import quantize_tensor

# layer 1's matrices → the module their input scales fold into, as the fold test finds them
FOLDS = {
    "llama": {  # grouped-query attention: o_proj's input mixes heads that share a value head
        "q_proj": "input_layernorm", "v_proj": "input_layernorm", "o_proj": None,
        "gate_proj": "post_attention_layernorm", "down_proj": "up_proj",
    },
    "opt": {"q_proj": "self_attn_layer_norm", "out_proj": "v_proj", "fc1": "final_layer_norm", "fc2": "fc1"},  # ReLU
    "gpt2": {"c_attn": "ln_1", "c_proj": None, "c_fc": "ln_2"},  # Conv1D; GELU stops the MLP's fold
    "gpt_neox": {"query_key_value": "input_layernorm", "dense": None, "dense_h_to_4h": "post_attention_layernorm"},
    "gemma2": {"q_proj": None, "down_proj": "up_proj"},  # its norms scale by (1 + w): no plain fold into w
    "olmo2": {"q_proj": None},  # norms after the projections: q/k/v read the residual stream itself
    "mixtral": {"q_proj": "input_layernorm"},
}  # fmt: skip


@pytest.mark.parametrize("family", list(FOLDS))
def test_each_family_folds_where_a_deployment_can(family):
    model = build(family)
    weights = survey(model).selected
    targets = fold_targets(model, weights, calibration())
    second = {name.split(".")[-1]: target for name, target in targets.items() if ".1." in name}
    for matrix, target in FOLDS[family].items():
        found = second[matrix]
        assert (found and found.split(".")[-1]) == target, (matrix, found)
    assert all(target is None for name, target in targets.items() if "experts" in name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_folds_are_found_alike_in_half_precision(dtype):
    """The test scales by powers of two, exact in every float dtype: a half-precision model folds as in float32."""
    model = build("llama")
    expected = fold_targets(model, survey(model).selected, calibration())
    half = build("llama").to(dtype)
    assert fold_targets(half, survey(half).selected, calibration()) == expected


def test_fold_tests_leave_the_model_as_it_was():
    model = build("llama")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    fold_targets(model, survey(model).selected, calibration())
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def outlier_problem(columns: int = 64, rows: int = 48):
    """A matrix whose inputs have a few channels 30× larger than the rest, as AWQ's salient channels."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, columns, generator=generator)
    x[:, :3] *= 30
    weight = torch.randn(rows, columns, generator=generator) * 0.05
    statistic = InputMagnitudes(columns)
    statistic.add(x)
    return weight, statistic


def output_error(weight, quantized, hessian) -> float:
    delta = (quantized - weight).double()
    return float(((delta @ hessian.double()) * delta).sum())


@pytest.mark.parametrize("duo", [False, True])
def test_scales_protect_salient_channels_and_never_lose_to_rounding(duo):
    weight, statistic = outlier_problem()
    config = QuantConfig(method="awq", bits=3, group_size=-1, options={"duo_scaling": duo})
    scales, alpha = search_scales([weight], statistic, config)
    rtn = quantize_tensor(weight, 3)
    awq = quantize_tensor(weight * scales, 3) / scales
    assert alpha is not None and alpha > 0 and scales[:3].min() > scales[3:].max()
    assert output_error(weight, awq, statistic.matrix) < 0.8 * output_error(weight, rtn, statistic.matrix)


def test_the_unscaled_weights_win_when_inputs_are_even():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(16, 32, generator=generator)
    statistic = InputMagnitudes(32)
    statistic.add(torch.ones(8, 32))  # every channel alike: any α gives s = 1
    config = QuantConfig(method="awq", bits=4, group_size=-1, options={"duo_scaling": False})
    scales, alpha = search_scales([weight], statistic, config)
    assert alpha is None and torch.equal(scales, torch.ones(32))


@pytest.mark.parametrize("group_size", [-1, 16, 0])
def test_clipping_loses_no_more_of_each_row_than_the_full_range(group_size):
    weight, statistic = outlier_problem()
    config = QuantConfig(method="awq", bits=3, group_size=group_size)
    clipped = search_clip(weight, statistic.matrix, config)
    assert (clipped.abs() <= weight.abs()).all() and not torch.equal(clipped, weight)
    quantized = quantize_tensor(clipped, 3, group_size)
    plain = quantize_tensor(weight, 3, group_size)
    hessian = statistic.matrix.double()
    per_row = lambda q: (((q - weight).double() @ hessian) * (q - weight).double()).sum(dim=1)  # noqa: E731
    if group_size == -1:  # one group per row: the search's objective is the row's whole output error
        assert (per_row(quantized) <= per_row(plain) * (1 + 1e-9)).all()
    assert per_row(quantized).sum() <= per_row(plain).sum() * (1 + 1e-9)


def test_unfoldable_matrices_are_skipped_by_default_and_scaled_when_asked(monkeypatch):
    """Llama's o_proj reads attention outputs, which no module's output scales fold into: its scales are
    searched only under unfoldable: scale (whether the search then keeps s = 1 depends on the weights)."""
    from ptq_eval.quant import awq

    reports, searched = {}, {}
    search = awq.search_scales
    for unfoldable in ("skip", "scale"):
        shapes = searched.setdefault(unfoldable, [])
        monkeypatch.setattr(
            awq, "search_scales", lambda weights, *rest, s=shapes: s.append(weights[0].shape) or search(weights, *rest)
        )
        model = build("llama")
        config = QuantConfig(method="awq", bits=3, group_size=-1, options={"unfoldable": unfoldable})
        reports[unfoldable] = {layer.name: layer for layer in quantize(model, config, calibration=calibration()).layers}
    o_proj, down = "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"
    assert reports["skip"][o_proj].alpha is None and reports["skip"][o_proj].folds_into is None
    o_shape = reports["skip"][o_proj].shape
    layers = model.config.num_hidden_layers
    assert searched["skip"].count(o_shape) + layers == searched["scale"].count(o_shape)
    assert reports["skip"][down].folds_into == "model.layers.1.mlp.up_proj"


def test_the_rotation_reaches_awqs_statistics():
    """With a rotation, AWQ's channel magnitudes are those of the rotated inputs R·x."""
    from ptq_eval.quant.rotation import Rotation

    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(2))
    rotation = Rotation(32, seed=0)
    rotated = InputMagnitudes(32, rotation)
    rotated.add(x)
    torch.testing.assert_close(rotated.magnitude, rotation.rotate(x).abs().mean(dim=0).float())
    torch.testing.assert_close(rotated.matrix, rotation.conjugate(2 * x.double().T @ x.double() / 64).float())


def test_full_precision_inputs_differ_from_block_by_block_only_after_the_first_block():
    weights = {}
    for sequential in ("block", "none"):
        model = build("llama")
        config = QuantConfig(method="awq", bits=3, group_size=-1, options={"sequential": sequential})
        quantize(model, config, calibration=calibration())
        weights[sequential] = {name: tensor for name, tensor in model.state_dict().items() if "proj" in name}
    first = [name for name in weights["block"] if ".layers.0." in name]
    later = [name for name in weights["block"] if ".layers.2." in name]
    assert all(torch.equal(weights["block"][name], weights["none"][name]) for name in first)
    assert not all(torch.equal(weights["block"][name], weights["none"][name]) for name in later)


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
def test_scored_by_their_own_outputs_awq_never_loses_more_of_a_set_than_rounding(family):
    """Under `objective: outputs` with clipping off, every set's output error is at most RTN's (the unscaled
    weights are a candidate); a matrix alone is one such set."""
    model = build(family)
    config = QuantConfig(method="awq", bits=3, group_size=-1, options={"objective": "outputs", "clip": False})
    report = quantize(model, config, calibration=calibration())
    for layer in report.layers:
        if layer.alpha is None:  # unscaled: exactly RTN
            assert layer.output_error == pytest.approx(layer.rtn_output_error, rel=1e-9), layer.name
    assert sum(layer.output_error for layer in report.layers) <= sum(
        layer.rtn_output_error for layer in report.layers
    ) * (1 + 1e-6)


def test_the_module_objective_records_statistics_passes_only_and_replays_without_recording():
    from ptq_eval.quant.awq_objective import ModuleObjective, ParentCalls

    model = build("llama")
    weights = survey(model).selected
    parents = ParentCalls(model, weights)
    block0 = [w for w in weights if ".layers.0." in w.name]
    with parents.hooked(), torch.no_grad():
        model(input_ids=calibration()[:2], use_cache=False)  # no pass armed: nothing recorded
        assert parents.calls == {}
        parents.pass_started(block0)
        model(input_ids=calibration()[:2], use_cache=False)
        parents.pass_ended()
        assert set(parents.calls) == {"model.layers.0.self_attn", "model.layers.0.mlp"}  # block 0's holders only
        members = [w for w in block0 if "self_attn" in w.name and "o_proj" not in w.name]
        name = parents.parent_of(members)
        objective = ModuleObjective(parents.modules[name], parents.calls[name], members, None)
        originals = [member.read().clone() for member in members]
        assert objective.error(originals) == 0
        assert objective.error([w * 1.01 for w in originals]) > 0
        assert len(parents.calls[name]) == 1  # the replays were not recorded
    assert all(torch.equal(member.read(), original) for member, original in zip(members, originals, strict=True))
