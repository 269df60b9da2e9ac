"""GPTQ's fused column loop (Triton) against the eager reference, value for value, and which loop a solve takes.

Equal values: the sign of a zero may differ (the eager loop's k=1 matmul turns a −0 product into +0 on the CPU;
whether cuBLAS does is not pinned), which nothing downstream can tell.

Without a GPU the kernel runs through Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET); with one, on CUDA against the eager loop on CUDA.
"""

from __future__ import annotations

import math

import pytest
import torch

from ptq_eval.errors import UserError
from ptq_eval.quant import QuantConfig
from ptq_eval.quant import gptq_solve as solve_module
from ptq_eval.quant.formats import number_format
from ptq_eval.quant.gptq_columns import LOOP_VARIABLE, column_loop, eager_columns, fused_columns
from ptq_eval.quant.gptq_solve import gptq_solve

pytest.importorskip("triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def problem(rows, columns, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, columns, generator=generator) @ torch.randn(columns, columns, generator=generator)
    return torch.randn(rows, columns, generator=generator).to(DEVICE), (2 * x.T @ x / 256).to(DEVICE)


def test_the_kernel_gives_the_eager_columns_for_one_block():
    rows, width = 21, 37  # neither a multiple of the kernel's tiles
    block, _ = problem(rows, width)
    factor = torch.randn(width, width, device=DEVICE)
    hinv = torch.linalg.cholesky(factor @ factor.T + torch.eye(width, device=DEVICE), upper=True)  # column-major
    scale = torch.rand(rows, width, device=DEVICE) * 0.3 + 0.05
    zero = torch.randint(0, 8, (rows, width), device=DEVICE).float()
    top = torch.randint(3, 16, (rows, 1), device=DEVICE).float()  # a top level per row, as stacked bit widths give
    eager = eager_columns(block.clone(), hinv, scale, zero, top)
    fused = fused_columns(block.clone(), hinv, scale, zero, top)
    assert torch.equal(eager[0], fused[0]) and torch.equal(eager[1], fused[1])


def test_the_kernel_rounds_ties_to_even_and_clamps_like_the_eager_loop():
    rows, width = 16, 24
    steps = torch.randint(-20, 20, (rows, width), generator=torch.Generator().manual_seed(1)).float()
    block = ((steps + 0.5) * 0.25).to(DEVICE)  # every value halfway between two levels; some past either end
    hinv = 2 * torch.eye(width, device=DEVICE)  # no error carried between columns: each tie stays a tie
    scale, zero = torch.full((rows, width), 0.25, device=DEVICE), torch.full((rows, width), 8.0, device=DEVICE)
    top = torch.full((rows, 1), 15.0, device=DEVICE)
    eager = eager_columns(block.clone(), hinv, scale, zero, top)
    fused = fused_columns(block.clone(), hinv, scale, zero, top)
    assert torch.equal(eager[0], fused[0]) and torch.equal(eager[1], fused[1])


def gptq(bits, group, symmetric=True, format="int", **options):
    return QuantConfig(method="gptq", format=format, bits=bits, group_size=group, symmetric=symmetric, options=options)


CASES = {
    "per-channel": [gptq(4, -1)],
    "groups-asymmetric": [gptq(3, 16, symmetric=False)],
    "act-order": [gptq(4, 16, act_order=True)],
    "static-groups": [gptq(3, 16, symmetric=False, act_order=True, static_groups=True)],
    "stacked-bit-widths": [gptq(3, 16), gptq(4, 16, symmetric=False), gptq(8, -1)],
    "tail-block": [gptq(4, 32, block_size=48)],
    "fp4-e2m1": [gptq(4, 32, format="fp4_e2m1", act_order=True)],
    "nvfp4": [gptq(4, 16, format="nvfp4")],
    "mxfp4-static": [gptq(4, 32, format="mxfp4", act_order=True, static_groups=True)],
    "fp8-e4m3": [gptq(8, -1, format="fp8_e4m3", block_size=48)],
    "fp8-e5m2": [gptq(8, -1, format="fp8_e5m2")],
    "mxint8": [gptq(8, 32, format="mxint8")],
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_solve_through_the_fused_loop_equals_the_eager_solve(case, monkeypatch):
    weight, hessian = problem(rows=20, columns=70)
    hessian[5, :] = hessian[:, 5] = 0  # a dead input column
    parts = [(weight * (index + 1), config) for index, config in enumerate(CASES[case])]
    eager = gptq_solve(parts, hessian)
    monkeypatch.setattr(solve_module, "column_loop", lambda device, elements: ("fused", fused_columns))
    fused = gptq_solve(parts, hessian)
    for a, b in zip(eager, fused, strict=True):
        assert torch.equal(a.weight, b.weight)
        assert torch.equal(a.scales, b.scales) and torch.equal(a.zeros, b.zeros)


@pytest.mark.parametrize("scale", [0.25, 0.37])
@pytest.mark.parametrize("format", ["fp4_e2m1", "fp8_e4m3", "fp8_e5m2"])
def test_the_kernel_rounds_float_elements_like_the_eager_loop(format, scale):
    """Every element of the format, the midpoints between neighbours (ties), values just past the largest and far
    past it, zero and tiny values of either sign; at a power-of-two scale (ties stay ties) and another."""
    elements = number_format(format).elements
    dense = torch.logspace(math.log2(elements.smallest) - 2, math.log2(elements.max_value) + 1, 3000, base=2)
    points = torch.unique(elements.round(dense))  # the format's positive values and zero
    beyond = points[-1] * (1 + 2.0 ** -torch.arange(1.0, 8.0))
    values = torch.cat([points, (points[1:] + points[:-1]) / 2, beyond, dense[-5:], torch.tensor([0.0, 1e-30])])
    values = torch.cat([values, -values]) * scale
    width = 128
    rows = -(-len(values) // width)
    block = torch.zeros(rows * width).index_copy(0, torch.arange(len(values)), values).reshape(rows, width).to(DEVICE)
    hinv = 2 * torch.eye(width, device=DEVICE)  # no error carried between columns
    grid = torch.full((rows, width), scale, device=DEVICE)
    eager = eager_columns(block.clone(), hinv, grid, grid * 0, 0, elements)
    fused = fused_columns(block.clone(), hinv, grid, grid * 0, 0, elements)
    assert torch.equal(eager[0], fused[0]) and torch.equal(eager[1], fused[1])


def test_the_loop_is_fused_on_cuda_for_every_format(monkeypatch):
    from ptq_eval.quant import gptq_columns

    monkeypatch.delenv(LOOP_VARIABLE, raising=False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(gptq_columns, "_fused_runs_on", lambda device: device.type == "cuda")
    fp4 = number_format("fp4_e2m1").elements
    monkeypatch.setattr(gptq_columns, "_CHECKED", {(cuda, None): None, (cuda, fp4): None})  # as if agreed
    assert column_loop(cuda, None)[0] == "fused"
    assert column_loop(cuda, number_format("fp4_e2m1").elements)[0] == "fused"
    assert column_loop(cpu, None)[0] == "eager"
    monkeypatch.setenv(LOOP_VARIABLE, "eager")
    assert column_loop(cuda, None)[0] == "eager"


def test_an_unknown_loop_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(LOOP_VARIABLE, "graph")
    with pytest.raises(UserError, match="'graph'.*auto, eager"):
        column_loop(torch.device("cuda"), None)


def test_a_fused_loop_that_disagrees_with_the_eager_one_gives_way_to_it_and_the_report_says_so(monkeypatch):
    """A drifting kernel (as if a compiler changed one step's rounding) fails the seeded check: the solve runs the
    eager loop, its weights are the eager loop's, and the job's quant report says why (the study goes on)."""
    from test_architectures import build, calibration

    from ptq_eval.quant import gptq_columns, gptq_triton, quantize

    exact = gptq_triton.columns

    def drifting(block, hinv, scale, zero, top, elements):
        quantized, errors = exact(block, hinv, scale, zero, top, elements)
        return quantized, errors * (1 + 2**-20)

    config = QuantConfig(method="gptq", bits=4, group_size=16)
    monkeypatch.setenv(LOOP_VARIABLE, "eager")
    eager_model = build("llama").to(DEVICE)
    assert quantize(eager_model, config, calibration=calibration().to(DEVICE)).warnings == []
    monkeypatch.delenv(LOOP_VARIABLE)
    monkeypatch.setattr(gptq_triton, "columns", drifting)
    monkeypatch.setattr(gptq_columns, "_fused_runs_on", lambda device: True)  # on a CPU: Triton's interpreter
    monkeypatch.setattr(gptq_columns, "_CHECKED", {})
    model = build("llama").to(DEVICE)
    report = quantize(model, config, calibration=calibration().to(DEVICE))
    (warning,) = report.warnings
    assert f"disagrees with the eager loop on {DEVICE.type}" in warning and "the eager loop ran instead" in warning
    for (name, found), expected in zip(model.state_dict().items(), eager_model.state_dict().values(), strict=True):
        assert torch.equal(found, expected), name
    other_format = QuantConfig(method="gptq", bits=4, group_size=16, format="fp4_e2m1")
    assert gptq_columns.loop_warnings(DEVICE, number_format(other_format.format).elements) == []
    other_device = torch.device("cpu" if DEVICE.type == "cuda" else "cuda")
    assert gptq_columns.loop_warnings(other_device, None) == []  # a job on another device carries none of it
