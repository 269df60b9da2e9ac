"""The same quantization gives the same weights whatever path or device it takes.

On every machine: a model and its copy quantized on the CPU by different paths (in place, blocks offloaded to
the model's own device, calibration inputs cached across configs, half precision) are bit-identical.
With CUDA (skipped elsewhere; `make gpu-check` runs them): RTN is bit-identical to the CPU's in every dtype,
GPTQ moves a weight to another grid level for at most `LEVEL_SHARE` of the weights, and AWQ and the rotations
keep each layer's error within `OUTPUT_ERROR_SHARE` of the CPU's. That bound comes from GPTQ's
own sensitivity, measured on the CPU: Hessians perturbed by 1e-6 relative noise (about what cuBLAS and a CPU
BLAS differ by when they sum 2048 products in float32) moved 0.04% (4-bit, groups of 32) and 0.07% (8-bit) of a
1024 x 512 matrix's weights by a level, and 1e-5 moved a micro study's δ by at most 9e-5.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from ptq_eval.quant import DEFAULT_EXCLUDE, QuantConfig, quantizable_weights, quantize

LEVEL_SHARE = 0.01
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
RTN_CONFIGS = [
    QuantConfig(method="rtn", bits=3, group_size=32),
    QuantConfig(method="rtn", bits=3, group_size=-1),
    QuantConfig(method="rtn", bits=4, group_size=-1),
    QuantConfig(method="rtn", bits=8, group_size=32),
    QuantConfig(method="rtn", bits=4, group_size=16, symmetric=False),
]
FORMAT_CONFIGS = [
    QuantConfig(method="rtn", format="fp8_e4m3", bits=8),
    QuantConfig(method="rtn", format="fp8_e5m2", bits=8, group_size=0),
    QuantConfig(method="rtn", format="fp4_e2m1", bits=4, group_size=32),
    QuantConfig(method="rtn", format="mxfp4", bits=4, group_size=32),
    QuantConfig(method="rtn", format="nvfp4", bits=4, group_size=16),
    QuantConfig(method="rtn", format="mxint8", bits=8, group_size=32),
]
GPTQ_CONFIGS = [
    QuantConfig(method="gptq", bits=4, group_size=16, options={"act_order": True}),
    QuantConfig(method="gptq", bits=3, group_size=-1),
]
# AWQ and rotations: a choice between near-equal candidates (AWQ's α, a clip) may go the other way on another
# device, moving a whole set's weights for the same loss; their bound is on each layer's output error instead.
OTHER_CALIBRATED = [
    QuantConfig(method="awq", bits=4, group_size=16),
    QuantConfig(method="awq", bits=3, group_size=-1, options={"rotation": "hadamard"}),
    QuantConfig(method="gptq", bits=4, group_size=16, options={"rotation": "hadamard"}),
]
ROTATED_RTN = [
    QuantConfig(method="rtn", bits=3, group_size=32, options={"rotation": "hadamard"}),
    QuantConfig(method="rtn", format="mxfp4", bits=4, group_size=32, options={"rotation": "hadamard"}),
]
OUTPUT_ERROR_SHARE = 0.05  # relative difference of a layer's output error between devices


def llama() -> transformers.LlamaForCausalLM:
    """A seeded Llama shaped like stories260K (grouped KV heads, tied embeddings), smaller."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(config).eval()


def calibration(vocabulary: int) -> torch.Tensor:
    return torch.randint(0, vocabulary, (8, 32), generator=torch.Generator().manual_seed(0))


def quantized(model, config, home="cpu", dtype=torch.float32, **options):
    """The quantized matrices of a copy of the model (held on `home`, in `dtype`), on the CPU, and the report;
    `options` go to `quantize` (`device`: where GPTQ runs each block; `cache`)."""
    model = copy.deepcopy(model).to(device=home, dtype=dtype)
    tokens = calibration(model.config.vocab_size) if config.needs_calibration else None
    report = quantize(model, config, DEFAULT_EXCLUDE, tokens, **options)
    return {weight.name: weight.read().detach().cpu() for weight in quantizable_weights(model)}, report


def assert_identical(mine: dict, theirs: dict) -> None:
    different = {name: int((mine[name] != theirs[name]).sum()) for name in theirs}
    assert not any(different.values()), {name: count for name, count in different.items() if count}


def levels_moved(mine: dict, theirs: dict, report) -> float:
    """Share of weights a grid level or more apart (|Δ| ≥ half the step of the weight's group in `report`)."""
    moved = total = 0
    for name, reference in theirs.items():
        scales, _, group_index = report.grids[name]
        step = scales.cpu()[group_index.long()].T
        moved += int(((mine[name] - reference).abs() >= step / 2).sum())
        total += reference.numel()
    return moved / total


@pytest.mark.parametrize("config", GPTQ_CONFIGS + OTHER_CALIBRATED, ids=str)
def test_calibrated_methods_on_the_cpu_are_bit_identical_in_place_offloaded_and_from_cached_inputs(config):
    model = llama()
    plain, report = quantized(model, config)
    offloaded, offloaded_report = quantized(model, config, device="cpu")  # blocks "offloaded" to their own device
    assert_identical(offloaded, plain)
    cache: dict = {}
    quantized(
        model, QuantConfig(method="gptq", bits=5, group_size=-1), cache=cache
    )  # fills the cache with this checkpoint's inputs
    cached, _ = quantized(model, config, cache=cache)
    assert_identical(cached, plain)
    assert offloaded_report.layers == report.layers


# Every RTN config in every dtype; the float formats in the dtypes that hold them (they refuse float16).
ROUNDING_CASES = [
    pytest.param(config, dtype, id=f"{config.format}-{config.bits}-{config.group_size}-{config.symmetric}-{dtype}")
    for config in RTN_CONFIGS + FORMAT_CONFIGS + ROTATED_RTN
    for dtype in (torch.float32, torch.bfloat16, torch.float16)
    if config.format == "int" or dtype != torch.float16
]


@pytest.mark.parametrize(("config", "dtype"), ROUNDING_CASES)
def test_rtn_of_a_model_and_of_its_copy_is_bit_identical(config, dtype):
    model = llama()
    first, _ = quantized(model, config, dtype=dtype)
    second, _ = quantized(copy.deepcopy(model), config, dtype=dtype)
    assert_identical(second, first)


@cuda
@pytest.mark.parametrize(("config", "dtype"), [case for case in ROUNDING_CASES if case.values[0] not in ROTATED_RTN])
def test_rtn_on_cuda_is_bit_identical_to_the_cpu(config, dtype):
    model = llama()
    on_cpu, _ = quantized(model, config, dtype=dtype)
    on_cuda, _ = quantized(model, config, home="cuda", dtype=dtype)
    assert_identical(on_cuda, on_cpu)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("where", ["model on cuda", "blocks offloaded to cuda"])
@pytest.mark.parametrize("config", GPTQ_CONFIGS, ids=str)
def test_gptq_on_cuda_moves_few_weights_to_another_level(config, where, dtype):
    model = llama()
    on_cpu, report = quantized(model, config, dtype=dtype)
    options = {"home": "cuda"} if where == "model on cuda" else {"device": "cuda"}
    torch.cuda.reset_peak_memory_stats()
    on_cuda, cuda_report = quantized(model, config, dtype=dtype, **options)
    assert torch.cuda.max_memory_allocated() > 0  # the blocks were quantized there
    home = "cuda" if where == "model on cuda" else "cpu"  # offloading leaves the model and its grids at home
    assert all(t.device.type == home for grids in cuda_report.grids.values() for t in grids[:2])
    assert levels_moved(on_cuda, on_cpu, report) <= LEVEL_SHARE


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_inputs_on_cuda_give_a_hessian_within_float32_summation_error(dtype, monkeypatch):
    """Half inputs take the tensor cores (exact products, float32 sums): every entry within n·2u of the exact
    sum of |products| (float32's worst case for n terms, doubled for adders that truncate); sums kept in half
    precision would miss it by orders of magnitude."""
    from ptq_eval.quant.statistics import Hessian

    products = []
    multiply = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *args, **kwargs: products.append(kwargs) or multiply(*args, **kwargs))
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2048, 256, generator=generator) * 3 + 1).to(dtype) for _ in range(2)]
    hessian = Hessian(256)
    for batch in batches:
        hessian.add(batch.cuda())
    assert [kwargs.get("out_dtype") for kwargs in products] == [torch.float32] * 2  # the tensor-core path ran
    exact = sum(b.double().T @ b.double() for b in batches) * 2 / 4096
    magnitude = sum(b.double().abs().T @ b.double().abs() for b in batches) * 2 / 4096
    error = (hessian.matrix.cpu().double() - exact).abs()
    assert (error <= (4096 * 2**-23 + 2**-20) * magnitude).all(), float((error / magnitude).max())


@cuda
@pytest.mark.parametrize("config", OTHER_CALIBRATED + ROTATED_RTN, ids=str)
def test_awq_and_rotations_on_cuda_lose_what_they_lose_on_the_cpu(config):
    """A rotation is applied in float64 on either device (its float32 result may differ in a last bit, moving a
    rare weight to the next level); AWQ's searches may pick another of two near-equal candidates. Each layer's
    output error on the calibration inputs stays within OUTPUT_ERROR_SHARE of the CPU's."""
    model = llama()
    _, report = quantized(model, config)
    _, cuda_report = quantized(model, config, home="cuda")
    for mine, theirs in zip(cuda_report.layers, report.layers, strict=True):
        if theirs.output_error is None:  # RTN: its weight error
            assert mine.relative_error == pytest.approx(theirs.relative_error, rel=OUTPUT_ERROR_SHARE), mine.name
        else:
            assert mine.output_error == pytest.approx(theirs.output_error, rel=OUTPUT_ERROR_SHARE), mine.name
