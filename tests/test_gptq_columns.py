"""GPTQ's fused column loop (Triton) against the eager reference, bit for bit, and which loop a solve takes.

Without a GPU the kernel runs through Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET); with one, on CUDA against the eager loop on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from ptq_eval.errors import UserError
from ptq_eval.quant import QuantConfig
from ptq_eval.quant import gptq_solve as solve_module
from ptq_eval.quant.formats import number_format
from ptq_eval.quant.gptq_columns import LOOP_VARIABLE, column_loop, eager_columns, fused_int_columns
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
    fused = fused_int_columns(block.clone(), hinv, scale, zero, top)
    assert torch.equal(eager[0], fused[0]) and torch.equal(eager[1], fused[1])


def test_the_kernel_rounds_ties_to_even_and_clamps_like_the_eager_loop():
    rows, width = 16, 24
    steps = torch.randint(-20, 20, (rows, width), generator=torch.Generator().manual_seed(1)).float()
    block = ((steps + 0.5) * 0.25).to(DEVICE)  # every value halfway between two levels; some past either end
    hinv = 2 * torch.eye(width, device=DEVICE)  # no error carried between columns: each tie stays a tie
    scale, zero = torch.full((rows, width), 0.25, device=DEVICE), torch.full((rows, width), 8.0, device=DEVICE)
    top = torch.full((rows, 1), 15.0, device=DEVICE)
    eager = eager_columns(block.clone(), hinv, scale, zero, top)
    fused = fused_int_columns(block.clone(), hinv, scale, zero, top)
    assert torch.equal(eager[0], fused[0]) and torch.equal(eager[1], fused[1])


CASES = {
    "per-channel": [(4, -1, True, {})],
    "groups-asymmetric": [(3, 16, False, {})],
    "act-order": [(4, 16, True, {"act_order": True})],
    "static-groups": [(3, 16, False, {"act_order": True, "static_groups": True})],
    "stacked-bit-widths": [(3, 16, True, {}), (4, 16, False, {}), (8, -1, True, {})],
    "tail-block": [(4, 32, True, {"block_size": 48})],
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_solve_through_the_fused_loop_equals_the_eager_solve(case, monkeypatch):
    weight, hessian = problem(rows=20, columns=70)
    hessian[5, :] = hessian[:, 5] = 0  # a dead input column
    parts = [
        (weight * (index + 1), QuantConfig(method="gptq", bits=bits, group_size=group, symmetric=sym, options=options))
        for index, (bits, group, sym, options) in enumerate(CASES[case])
    ]
    eager = gptq_solve(parts, hessian)
    monkeypatch.setattr(solve_module, "column_loop", lambda device, elements: ("fused", fused_int_columns))
    fused = gptq_solve(parts, hessian)
    for a, b in zip(eager, fused, strict=True):
        assert torch.equal(a.weight, b.weight)
        assert torch.equal(a.scales, b.scales) and torch.equal(a.zeros, b.zeros)


def test_the_loop_is_fused_only_for_integer_grids_on_cuda(monkeypatch):
    monkeypatch.delenv(LOOP_VARIABLE, raising=False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert column_loop(cuda, None)[0] == "fused"
    assert column_loop(cpu, None)[0] == "eager"
    assert column_loop(cuda, number_format("fp4_e2m1").elements)[0] == "eager"
    monkeypatch.setenv(LOOP_VARIABLE, "eager")
    assert column_loop(cuda, None)[0] == "eager"


def test_an_unknown_loop_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(LOOP_VARIABLE, "graph")
    with pytest.raises(UserError, match="'graph'.*auto, eager"):
        column_loop(torch.device("cuda"), None)


def test_a_fused_loop_that_disagrees_with_the_eager_one_stops_the_solve(monkeypatch):
    from ptq_eval.quant import gptq_columns, gptq_triton

    exact = gptq_triton.int_columns

    def drifting(block, hinv, scale, zero, top):  # as if a compiler contracted one step into a different result
        quantized, errors = exact(block, hinv, scale, zero, top)
        return quantized, errors * (1 + 2**-20)

    monkeypatch.setattr(gptq_triton, "int_columns", drifting)
    monkeypatch.setattr(gptq_columns, "_AGREED", set())
    block, hessian = problem(rows=16, columns=32)
    hinv = torch.linalg.cholesky(hessian + torch.eye(32, device=DEVICE), upper=True)
    grid = torch.full((16, 32), 0.1, device=DEVICE)
    with pytest.raises(RuntimeError, match=f"disagrees with the eager loop.*{LOOP_VARIABLE}=eager"):
        fused_int_columns(block, hinv, grid, grid * 0 + 8, 15)
