"""llama.cpp's legacy block formats: the weights a GGUF file of the type holds (the `gguf` package's quantizer,
a port of llama.cpp's reference one, read back by its de-quantizer), bit for bit; their costs, refusals, and
GPTQ onto the points the file can store."""

from __future__ import annotations

import pytest
import torch

from ptq_eval.quant import FormatError, QuantConfig
from ptq_eval.quant.formats import number_format, quantize_tensor
from ptq_eval.quant.ggml_formats import GGML_FORMATS
from ptq_eval.quant.gptq_solve import gptq_weight

NAMES = [fmt.name for fmt in GGML_FORMATS]


def weights(rows=48, columns=256, seed=0) -> torch.Tensor:
    """Random rows with the cases the rules single out: an outlier, a zero block, a block whose largest weights
    are ±equal (the first decides d's sign), a negative-only block, levels on exact ties, a tiny block."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, columns, generator=generator) * 0.02
    w[3, 7] = 0.3
    w[5, :32] = 0
    w[7, 32:64] = torch.linspace(-0.05, 0.05, 32)
    w[7, 33], w[7, 40] = 0.05, -0.05
    w[9, 64:96] = -w[9, 64:96].abs()
    w[11, :32] = torch.randint(-8, 8, (32,), generator=generator).float() / 64
    w[13, 96:128] *= 1e-6
    return w


@pytest.mark.parametrize("name", NAMES)
def test_simulation_equals_the_gguf_package_s_quantizer_read_back_bit_for_bit(name):
    gguf = pytest.importorskip("gguf")
    kind = gguf.GGMLQuantizationType[name.upper()]
    for seed in range(3):
        w = weights(seed=seed)
        reference = torch.from_numpy(gguf.dequantize(gguf.quantize(w.numpy(), kind), kind))
        simulated = quantize_tensor(w, number_format(name).bits, 32, True, name)
        assert torch.equal(simulated, reference), (name, seed, (simulated - reference).abs().max().item())


@pytest.mark.parametrize("name", NAMES)
def test_bits_per_weight_are_the_file_s_bytes(name):
    gguf = pytest.importorskip("gguf")
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
    fmt = number_format(name)
    assert fmt.bits_per_weight(fmt.bits, fmt.group, True) == size * 8 / block


def test_q4_0_keeps_eight_levels_on_the_largest_weight_s_side_and_its_scale_in_float16():
    w = torch.zeros(2, 32)
    w[0, :4] = torch.tensor([0.8, -0.7, 0.05, 0.3])  # d = 0.8 / −8 = −0.1: levels −0.7..0.8
    w[1, :4] = torch.tensor([-0.8, 0.75, 0.05, 0.3])  # d = +0.1: levels −0.8..0.7, so 0.75 falls to 0.7
    q = quantize_tensor(w, 4, 32, True, "q4_0")
    d = torch.tensor(0.1).half().float()
    assert q[0, 0] == 8 * d and q[0, 1] == -7 * d
    assert q[1, 0] == -8 * d and q[1, 1] == 7 * d
    assert q[0, 2] == 0 * d or q[0, 2] == -1 * d  # 0.05 = half a step: trunc(x/d + 8.5) decides, not ties-to-even
    assert not q[:, 4:].any()


def test_q8_0_rounds_halves_away_from_zero():
    w = torch.zeros(1, 32)
    w[0, 0] = 127.0
    w[0, 1:5] = torch.tensor([0.5, -0.5, 2.5, -2.5])  # d = 1: ties-to-even would give 0, 0, 2, −2
    assert quantize_tensor(w, 8, 32, True, "q8_0")[0, 1:5].tolist() == [1.0, -1.0, 3.0, -3.0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format": "q4_0", "bits": 4, "group_size": 64}, "format q4_0 fixes its blocks at 32 weights"),
        ({"format": "q8_0", "bits": 4, "group_size": 32}, "format q8_0 holds 8-bit elements"),
        ({"format": "q4_1", "bits": 4, "group_size": 32, "symmetric": False}, "q4_1 fixes its own grid"),
        ({"format": "q5_1", "bits": 5, "group_size": 32, "method": "gptq"}, "q5_1 stores each block as q·d \\+ m"),
    ],
)
def test_what_means_nothing_is_refused_by_name(fields, message):
    with pytest.raises(FormatError, match=message):
        QuantConfig(**({"method": "rtn"} | fields))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_cannot_hold_the_file_s_weights(dtype):
    with pytest.raises(FormatError, match="q4_0 is llama.cpp's: .* use dtype float32"):
        quantize_tensor(weights().to(dtype), 4, 32, True, "q4_0")


@pytest.mark.parametrize("name", ["q4_0", "q5_0", "q8_0"])
def test_gptq_lands_on_points_the_file_stores(name):
    """GPTQ's grid is the levels times the stored float16 d: every block of its result is the file's
    de-quantization of some levels, and under an identity Hessian it agrees with llama.cpp's rounding except
    where the float32 d that picks the levels and the float16 d that the file stores disagree about a level."""
    fmt = number_format(name)
    config = QuantConfig(method="gptq", format=name, bits=fmt.bits, group_size=32)
    w = weights()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(512, w.shape[1], generator=generator)
    solved = gptq_weight(w.clone(), x.T @ x, config)
    scales, zeros = solved.scales[solved.group_index].T, solved.zeros[solved.group_index].T  # per weight
    levels = solved.weight / scales + zeros
    assert torch.equal(levels, levels.round()) and levels.min() >= 0 and levels.max() <= 2**fmt.bits - 1
    assert torch.equal(scales, scales.half().float())  # the scale the file stores: a float16 d
    identity = gptq_weight(w.clone(), torch.eye(w.shape[1]), config).weight
    simulated = quantize_tensor(w, fmt.bits, 32, True, name)
    assert (identity != simulated).float().mean() < 0.01


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_a_width_without_blocks_of_32_is_kept_in_float16_as_llama_cpp_keeps_it(method):
    """The demo Llama's 88-wide down projection has no blocks of 32: llama.cpp stores it in F16; so does every
    method, and its layer report says why."""
    import transformers

    from ptq_eval.quant import quantize

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    downs = {name: module.weight.detach().clone() for name, module in model.named_modules()
             if name.endswith("down_proj")}  # fmt: skip
    quant = QuantConfig(method=method, format="q4_0", bits=4, group_size=32)
    calibration = torch.randint(0, config.vocab_size, (8, 32), generator=torch.Generator().manual_seed(0))
    report = quantize(model, quant, calibration=None if method == "rtn" else calibration)
    layers = {layer.name: layer for layer in report.layers}
    modules = dict(model.named_modules())
    for name, original in downs.items():
        assert torch.equal(modules[name].weight, original.half().float())
        assert layers[name].fallback == "kept in F16, as llama.cpp stores it: width 88 is no multiple of 32"
    assert all(layers[name].fallback is None for name in layers if name not in downs)


def test_scale_dtype_stores_an_integer_grid_s_scales_as_packs_do_and_nothing_else():
    w = weights()
    for name in ("float16", "bfloat16"):
        dtype = getattr(torch, name)
        for symmetric in (True, False):
            grid = number_format("int", name).fit(w.reshape(-1, 32), 4, symmetric, torch.float32, None)
            assert torch.equal(grid.scale, grid.scale.to(dtype).float()) and (grid.scale > 0).all()
            levels = quantize_tensor(w, 4, 32, symmetric, "int", name).reshape(-1, 32) / grid.scale + grid.zero
            assert torch.equal(levels, levels.round())  # the weights lie on the stored scale's grid
    assert not torch.equal(quantize_tensor(w, 4, 32, True, "int", "float16"), quantize_tensor(w, 4, 32, True, "int"))
    with pytest.raises(FormatError, match="format q4_0 fixes how its scales are stored; scale_dtype=float16"):
        QuantConfig(method="rtn", format="q4_0", bits=4, group_size=32, options={"scale_dtype": "float16"})
    plain = QuantConfig(method="gptq", bits=4, group_size=32)
    assert "scale_dtype" not in plain.as_dict()  # keys of earlier studies hold
    packed = QuantConfig(method="gptq", bits=4, group_size=32, options={"scale_dtype": "float16"})
    assert packed.as_dict() == plain.as_dict() | {"scale_dtype": "float16"}
