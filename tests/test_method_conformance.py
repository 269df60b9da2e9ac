"""Every registered method through the same checks, as scikit-learn's check_estimator runs every estimator:
every architecture family of the suite, every number format, rotated and not; job keys that hold; bad options
refused by name; the same weights from the same inputs on the CPU. A new method registered in `quant/` is
checked here without a line of its own."""

from __future__ import annotations

import pytest
import torch
from test_architectures import CONFIGS, assert_every_weight_quantized, build, calibration, weight_slices

from ptq_eval.quant import FORMATS, METHODS, FormatError, QuantConfig, QuantError, quantize
from ptq_eval.quant.rotation import ROTATION_OPTIONS, Rotation

ROTATIONS = ("none", "hadamard")


def run(model: torch.nn.Module, config: QuantConfig):
    return quantize(model, config, calibration=calibration() if config.needs_calibration else None)


SIMULATED = [name for name, m in METHODS.items() if m.rounds_weights and not m.reads_file]  # files: test_artifacts.py


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("method", SIMULATED)
def test_every_method_quantizes_every_weight_of_every_family(method, rotation, family):
    model = build(family)
    before = weight_slices(model)
    config = QuantConfig(method=method, bits=3, group_size=-1, options={"rotation": rotation})
    report = run(model, config)
    assert_every_weight_quantized(family, model, before, report)
    if config.needs_calibration:  # every matrix saw calibration rows and says what it lost on them
        assert all(layer.fallback is None and layer.samples > 0 for layer in report.layers)
        assert all(layer.output_error >= 0 and layer.rtn_output_error > 0 for layer in report.layers)


# grids a method cannot round onto: llama.cpp's q·d + m blocks are no grid of GPTQ's column loop
REFUSED_FORMATS = {("gptq", "q4_1"), ("gptq", "q5_1")}


def format_config(method: str, name: str, rotation: str) -> QuantConfig:
    fmt = FORMATS[name]
    return QuantConfig(
        method=method, bits=fmt.bits or 4, group_size=fmt.group or 16, format=name, options={"rotation": rotation}
    )


@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("name", [name for name, fmt in FORMATS.items() if not fmt.read_only])
@pytest.mark.parametrize("method", SIMULATED)
def test_every_method_rounds_onto_every_format_and_repeats_itself(method, name, rotation):
    if (method, name) in REFUSED_FORMATS:  # refused by name when the config is made, before any work
        with pytest.raises(FormatError, match=f"format {name} .* GPTQ's column loop does not hold"):
            format_config(method, name, rotation)
        return
    config = format_config(method, name, rotation)
    weights = []
    for _ in range(2):
        model = build("llama")
        before = weight_slices(model)
        report = run(model, config)
        assert_every_weight_quantized("llama", model, before, report)
        weights.append(weight_slices(model))
        assert all(torch.isfinite(tensor).all() for tensor in weights[-1].values())
        assert 0 < report.mean_relative_error < 0.2
    assert weights[0].keys() == weights[1].keys()
    for key, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][key]), key


@pytest.mark.parametrize("method", SIMULATED)
def test_every_method_keeps_its_keys_at_defaults_and_a_rotation_enters_them(method):
    plain = QuantConfig(method=method, bits=4)
    spelled = QuantConfig(method=method, bits=4, options={"rotation": "none", "rotation_seed": 0})
    assert plain.as_dict() == spelled.as_dict()
    assert not set(ROTATION_OPTIONS) & set(plain.as_dict())
    rotated = QuantConfig(method=method, bits=4, options={"rotation": "hadamard", "rotation_seed": 2})
    assert rotated.as_dict() == plain.as_dict() | {"rotation": "hadamard", "rotation_seed": 2}
    assert set(plain.as_dict()) == {"method", "bits", "group_size", "symmetric"} | {
        option for option, _ in plain.options if option not in METHODS[method].later_options
    }


@pytest.mark.parametrize("method", SIMULATED)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": "red"}, r"colour is not an option of method \w+ \(its options: .*rotation"),
        ({"rotation": "random"}, r"rotation: Input should be 'none' or 'hadamard'"),
        ({"rotation_seed": 3}, r"rotation_seed=3 means nothing without rotation: hadamard"),
        ({"rotation": "hadamard", "rotation_seed": "3"}, r"rotation_seed: Input should be a valid integer"),
    ],
)
def test_every_method_refuses_bad_options_by_name(method, options, message):
    with pytest.raises(QuantError, match=message):
        QuantConfig(method=method, bits=4, options=options)


def test_rotated_weights_are_the_rounded_rotation_undone():
    """RTN under a rotation is exactly Q(W·Rᵀ)·R: rotating the result back lands every row on the format's grid."""
    model = build("llama")
    config = QuantConfig(method="rtn", bits=3, group_size=-1, options={"rotation": "hadamard"})
    weight = model.model.layers[0].mlp.down_proj.weight.detach().clone()  # 40 columns: 8 × a random 5 × 5
    run(model, config)
    rotation = Rotation(40, seed=0)
    back = rotation.rotate(model.model.layers[0].mlp.down_proj.weight.detach())
    levels = [torch.unique(row.round(decimals=5)).numel() for row in back]
    assert max(levels) <= 2**3
    assert not torch.allclose(back.float(), weight)


@pytest.mark.parametrize("width", [32, 40, 48, 20, 7])
def test_rotations_are_orthogonal_at_widths_that_are_not_powers_of_two(width):
    for block in (None, 16):
        rotation = Rotation(width, seed=1, block=block)
        identity = torch.eye(width, dtype=torch.float64)
        matrix = rotation.rotate(identity)
        torch.testing.assert_close(matrix @ matrix.T, identity, atol=1e-12, rtol=0)
        torch.testing.assert_close(rotation.restore(matrix), identity, atol=1e-12, rtol=0)
        if block is not None and width > block:  # block-diagonal: no weight leaves its format block
            assert torch.count_nonzero(matrix[:block, block:]) == 0
