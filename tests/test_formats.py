"""Number formats: the values each can hold, how its scales are chosen, what it costs per weight, what it refuses;
RTN and GPTQ onto its grid."""

from __future__ import annotations

import pytest
import torch

from ptq_eval.errors import UserError
from ptq_eval.export import check_packable_format
from ptq_eval.quant import FORMATS, FormatError, QuantConfig
from ptq_eval.quant.formats import E2M1, E4M3, E5M2, number_format, quantize_tensor
from ptq_eval.quant.ggml_formats import GGML_FORMATS
from ptq_eval.quant.gptq_solve import gptq_solve, gptq_weight
from ptq_eval.quant.statistics import output_error
from ptq_eval.spec import StudyError, parse_study

E2M1_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
GGML = {fmt.name for fmt in GGML_FORMATS}  # llama.cpp's own rounding: tests/test_ggml_formats.py
FLOAT_FORMATS = [name for name, fmt in FORMATS.items() if name != "int" and name not in GGML and not fmt.read_only]


def weights(rows=24, columns=96, seed=0, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, columns, generator=generator) * 0.02
    w[3, 7] = 0.3  # an outlier, so blocks differ in scale
    w[5, :32] = 0  # an all-zero block
    return w.to(dtype)


def config_of(name: str, method: str = "rtn", **options) -> QuantConfig:
    fmt = number_format(name)
    return QuantConfig(method=method, format=name, bits=fmt.bits or 4, group_size=fmt.group or 32, options=options)


def test_e2m1_holds_its_eight_magnitudes_rounds_ties_to_even_and_saturates():
    x = torch.linspace(-8, 8, 641)
    assert sorted(set(E2M1.round(x).abs().tolist())) == E2M1_VALUES
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -5.0])
    assert E2M1.round(ties).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -4.0]


@pytest.mark.parametrize(("elements", "dtype"), [(E4M3, torch.float8_e4m3fn), (E5M2, torch.float8_e5m2)], ids=str)
def test_fp8_elements_equal_torch_s_own_casts(elements, dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=generator) * torch.logspace(-14, 5, 200_000)
    x = x.clamp(-elements.max_value, elements.max_value)
    assert torch.equal(elements.round(x), x.to(dtype).float())
    assert elements.round(torch.tensor([1e9, -1e9])).tolist() == [elements.max_value, -elements.max_value]


def _blocks(q: torch.Tensor, size: int) -> torch.Tensor:
    return q.reshape(-1, size)


def test_mxfp4_blocks_share_a_power_of_two_scale_from_their_largest_exponent():
    w = weights()
    q = quantize_tensor(w, 4, 32, True, "mxfp4")
    for block, original in zip(_blocks(q, 32), _blocks(w, 32), strict=True):
        amax = original.abs().max()
        if amax == 0:
            assert not block.any()
            continue
        scale = 2.0 ** (torch.floor(torch.log2(amax)) - 2)  # OCP MX v1.0: ⌊log2 amax⌋ − emax(e2m1)
        assert set((block / scale).abs().tolist()) <= set(E2M1_VALUES)
        assert torch.equal(block, E2M1.round(original / scale) * scale)


def test_nvfp4_has_e4m3_block_scales_under_one_float32_scale_per_matrix():
    w = weights()
    q = quantize_tensor(w, 4, 16, True, "nvfp4")
    tensor_scale = w.abs().max() / (448 * 6)
    for block, original in zip(_blocks(q, 16), _blocks(w, 16), strict=True):
        wanted = torch.clamp(original.abs().max() / 6 / tensor_scale, min=2.0**-6)
        block_scale = wanted.to(torch.float8_e4m3fn).float()  # e4m3, round to nearest even
        scale = block_scale * tensor_scale
        assert torch.equal(block, E2M1.round(original / scale) * scale)


def test_mxint8_holds_int8_sixty_fourths_on_a_power_of_two():
    w = weights()
    q = quantize_tensor(w, 8, 32, True, "mxint8")
    for block, original in zip(_blocks(q, 32), _blocks(w, 32), strict=True):
        amax = original.abs().max()
        if amax == 0:
            continue
        step = 2.0 ** (torch.floor(torch.log2(amax)) - 6)
        levels = block / step
        assert torch.equal(levels, levels.round()) and levels.min() >= -128 and levels.max() <= 127
        assert torch.equal(levels, torch.clamp(torch.round(original / step), -128, 127))


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_float_formats_are_exact_in_bfloat16_without_a_second_rounding(name):
    config = config_of(name)
    w = weights(dtype=torch.bfloat16)
    fmt = number_format(name)
    tensor_scale = fmt.tensor_scale(w, torch.bfloat16)
    rows = w.reshape(-1, config.group_size)
    grid = fmt.fit(rows, config.bits, True, torch.bfloat16, tensor_scale)
    exact = grid.fake_quantize(rows)
    assert torch.equal(exact.bfloat16().float(), exact)  # every point representable: the cast changes nothing
    q = quantize_tensor(w, config.bits, config.group_size, True, name)
    assert torch.equal(q.float().reshape(-1, config.group_size), exact)


@pytest.mark.parametrize(
    ("name", "bits", "group_size", "expected"),
    [
        ("int", 4, -1, 4.0),
        ("int", 4, 128, 4.125),
        ("int", 3, 32, 3.5),
        ("fp8_e4m3", 8, -1, 8.0),
        ("fp4_e2m1", 4, 32, 4.5),
        ("mxfp4", 4, 32, 4.25),
        ("nvfp4", 4, 16, 4.5),
        ("mxint8", 8, 32, 8.25),
    ],
)
def test_bits_per_weight_count_the_scales(name, bits, group_size, expected):
    config = QuantConfig(method="rtn", format=name, bits=bits, group_size=group_size)
    assert config.bits_per_weight == expected
    asymmetric = QuantConfig(method="rtn", bits=4, group_size=128, symmetric=False)
    assert asymmetric.bits_per_weight == 4 + (16 + 4) / 128  # its zero point too


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format": "nvfp4", "bits": 8, "group_size": 16}, "format nvfp4 holds 4-bit elements; bits=8 means nothing"),
        ({"format": "mxfp4", "bits": 4, "group_size": 16}, "format mxfp4 fixes its blocks at 32 weights"),
        ({"format": "fp8_e4m3", "bits": 8, "symmetric": False}, "format fp8_e4m3 is symmetric"),
        ({"format": "fp5", "bits": 5}, "format 'fp5' is not known; accepted: int, fp8_e4m3"),
    ],
)
def test_combinations_that_mean_nothing_are_refused_by_name(fields, message):
    with pytest.raises(FormatError, match=message):
        QuantConfig(method="rtn", **fields)


def test_float_formats_refuse_float16_and_act_order_groups_they_cannot_store():
    with pytest.raises(FormatError, match="float16.*use dtype bfloat16 or float32"):
        quantize_tensor(weights(dtype=torch.float16), 4, 16, True, "nvfp4")
    w = weights()
    with pytest.raises(FormatError, match="mxfp4 stores blocks of 32 consecutive columns.*static_groups: true"):
        gptq_weight(w, torch.eye(w.shape[1]), config_of("mxfp4", "gptq", act_order=True))


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"method": "rtn", "format": ["int", "nvfp4"], "bits": 4, "group_size": 32}, "nvfp4 fixes its blocks at 16"),
        ({"method": "rtn", "format": "int"}, "format int needs bits"),
        ({"method": "rtn", "format": "fp16"}, "'fp16' is not a number format; accepted: int, fp8_e4m3"),
        ({"method": "gptq", "format": "mxfp4", "act_order": True}, "mxfp4 stores blocks of 32 consecutive columns"),
    ],
)
def test_a_study_names_the_grid_entry_that_means_nothing(grid, message):
    study = {"name": "s", "ladder": ["a/b@step1"], "quant": [grid], "evals": [{"kind": "perplexity"}]}
    with pytest.raises(StudyError, match=message):
        parse_study(study)


def test_a_study_grid_takes_formats_as_a_list_and_leaves_fixed_fields_to_them():
    study = {
        "name": "s",
        "ladder": ["a/b@step1"],
        "quant": [
            {"method": "rtn", "format": ["int", "nvfp4"], "bits": 4, "group_size": 16},
            {"method": "rtn", "format": "mxfp4"},
        ],
        "evals": [{"kind": "perplexity"}],
    }
    configs = [config for grid in parse_study(study).quant for config in grid.configs()]
    assert [(c.format, c.bits, c.group_size) for c in configs] == [("int", 4, 16), ("nvfp4", 4, 16), ("mxfp4", 4, 32)]


def test_export_refuses_formats_it_cannot_pack_before_any_work():
    with pytest.raises(UserError, match="packed integer .GPTQ. checkpoints only; format nvfp4"):
        check_packable_format("nvfp4")


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_gptq_under_an_identity_hessian_is_rtn_onto_the_format(name):
    w = weights()
    result = gptq_weight(w, torch.eye(w.shape[1]), config_of(name, "gptq"))
    config = config_of(name)
    assert torch.equal(result.weight, quantize_tensor(w, config.bits, config.group_size, True, name))


@pytest.mark.parametrize("name", FLOAT_FORMATS)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lands_on_the_format_s_grid_and_beats_rtn_on_its_inputs(name, act_order):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(512, 96, generator=generator) @ torch.randn(96, 96, generator=generator)
    hessian = 2 * x.T @ x / 512
    w = weights()
    config = config_of(name, "gptq", act_order=act_order, static_groups=True)
    result = gptq_weight(w, hessian, config)
    # Every value is the format's: rounding it again onto the grids GPTQ used changes nothing.
    scales = result.scales.T[:, result.group_index.long()]
    fmt = number_format(name)
    if fmt.elements is not None:
        assert torch.equal(fmt.elements.round(result.weight / scales) * scales, result.weight)
    rtn = quantize_tensor(w, config.bits, config.group_size, True, name)
    assert output_error(w, result.weight, hessian) < output_error(w, rtn, hessian)


def test_a_stacked_solve_of_a_float_format_gives_each_part_its_own_solve_bit_for_bit():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(256, 64, generator=generator)
    hessian = 2 * x.T @ x / 256
    parts = [(weights(24, 64, seed), config_of(name, "gptq")) for seed in (0, 1) for name in ("nvfp4",)]
    for (weight, config), result in zip(parts, gptq_solve(parts, hessian), strict=True):
        alone = gptq_weight(weight, hessian, config)
        assert torch.equal(result.weight, alone.weight) and torch.equal(result.scales, alone.scales)
    with pytest.raises(ValueError, match="one solve needs the same"):
        gptq_solve(
            [(weights(24, 64), config_of("nvfp4", "gptq")), (weights(24, 64), config_of("mxfp4", "gptq"))], hessian
        )
