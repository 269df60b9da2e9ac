"""GPTQ's column loop as one Triton kernel per block of columns, for integer grids and float formats (imported
only where used).

Rows are independent given H, so each program owns a tile of rows and runs every column of the block on it in
registers: no launch and no host sync per column. The steps are the eager loop's (`quant/gptq_columns.py`) and
each is exact in float32 the same way: IEEE division (`div_rn`, not Triton's approximate `/`), round half to
even built from floor (exact: see `_half_even`), a float format's quantum from the exponent bits (as
`FloatElements.round` builds it) and no fused multiply-add (`enable_fp_fusion=False`), so for finite weights
the result equals the eager loop's on the same device, value for value. (A zero's sign may differ: the eager
loop's k=1 matmul adds its products to +0. NaN is not promised to travel the same way: Triton compiles assuming
no NaN.) With TRITON_INTERPRET=1 set before Triton is imported, the same source runs on CPU
tensors through Triton's interpreter (numpy, slow): that is how the tests compare it with the eager loop on a
machine without a GPU (`tests/conftest.py` sets it there).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ptq_eval.quant.grid import FloatElements

ROWS_PER_PROGRAM = 16
WARPS = 4


@triton.jit
def _half_even(magnitude):
    """Round a non-negative float to the nearest integer, ties to even: floor, and the fraction magnitude − floor
    (exact: both lie within one of the magnitude)."""
    low = tl.floor(magnitude)
    fraction = magnitude - low
    odd = (low - 2.0 * tl.floor(low * 0.5)) == 1.0
    return tl.where((fraction > 0.5) | ((fraction == 0.5) & odd), low + 1.0, low)


@triton.jit
def _columns(
    W, H, S, Z, TOP, Q, E,
    rows,
    w_row, w_col, h_row, h_col, s_row, s_col, z_row, z_col, q_row, e_row,
    width: tl.constexpr, ROWS: tl.constexpr, WIDTH: tl.constexpr,
    FLOAT: tl.constexpr, MANTISSA: tl.constexpr, MIN_EXPONENT: tl.constexpr, MAX_VALUE: tl.constexpr,
):  # fmt: skip
    """One tile of rows through the block's columns: quantize column i onto its grid (scale S; integer levels
    0..TOP about the zero point Z, or with FLOAT the values of a float format), record it (Q) and its scaled error
    (E), and subtract the error times row i of H (the block of the inverse Hessian's Cholesky factor) from the
    later columns."""
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    column = tl.arange(0, WIDTH)
    live = row < rows
    inside = column < width
    w = tl.load(W + row[:, None] * w_row + column[None, :] * w_col, mask=live[:, None] & inside[None, :], other=0.0)
    top = tl.load(TOP + row, mask=live, other=1.0)
    for i in range(0, width):
        # Column i, summed as bit patterns with zeros: the value itself, whatever it is (a float sum would turn
        # −0 into +0 where the reduction starts from +0, as Triton's interpreter does).
        bits = tl.sum(tl.where(column[None, :] == i, w.to(tl.int32, bitcast=True), 0), axis=1)
        x = bits.to(tl.int32).to(tl.float32, bitcast=True)
        s = tl.load(S + row * s_row + i * s_col, mask=live, other=1.0)
        v = tl.math.div_rn(x, s)
        magnitude = tl.abs(v)
        negative = v.to(tl.int32, bitcast=True) < 0  # the sign bit: −0 too, as torch's round and copysign keep it
        if FLOAT:  # as FloatElements.round: the binade from the exponent bits, a power-of-two quantum
            binade = tl.maximum(((magnitude.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, MIN_EXPONENT)
            quantum = ((binade - MANTISSA + 127) << 23).to(tl.float32, bitcast=True)
            value = tl.minimum(_half_even(tl.math.div_rn(magnitude, quantum)) * quantum, MAX_VALUE)
            q = s * tl.where(negative, value * -1.0, value)  # × −1 flips the sign of 0 too (0 − value would not)
        else:
            z = tl.load(Z + row * z_row + i * z_col, mask=live, other=0.0)
            rounded = _half_even(magnitude)
            level = tl.where(negative, rounded * -1.0, rounded) + z
            level = tl.minimum(tl.maximum(level, 0.0), top)
            q = s * (level - z)
        error = tl.math.div_rn(x - q, tl.load(H + i * h_row + i * h_col))
        tl.store(Q + row * q_row + i, q, mask=live)
        tl.store(E + row * e_row + i, error, mask=live)
        h = tl.load(H + i * h_row + column * h_col, mask=inside & (column >= i), other=0.0)
        w = w - error[:, None] * h[None, :]


def columns(
    block: torch.Tensor,
    hinv: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    top: torch.Tensor,
    elements: FloatElements | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's quantized columns and scaled errors ([rows, width] each, float32). `scale` and `zero` give
    each row's grid per column ([rows, width], broadcast views allowed); `top` each row's highest level;
    `elements`, a float format's values instead of integer levels (then `zero` and `top` are not read)."""
    rows, width = block.shape
    hinv = hinv.contiguous()  # its rows are read whole (the solve's factor is column-major)
    quantized, errors = (torch.empty(rows, width, dtype=block.dtype, device=block.device) for _ in range(2))
    element = {"FLOAT": False, "MANTISSA": 0, "MIN_EXPONENT": 0, "MAX_VALUE": 0.0}
    if elements is not None:
        if elements.mantissa_bits < 1 or elements.min_exponent - elements.mantissa_bits < -126:
            raise ValueError(f"{elements}: the kernel builds quanta of 2^-126 and up from exponent bits")
        element = {"FLOAT": True, "MANTISSA": elements.mantissa_bits, "MIN_EXPONENT": elements.min_exponent,
                   "MAX_VALUE": float(elements.max_value)}  # fmt: skip
    # Triton launches on the current device, not the tensors': make it theirs (a solve may run on cuda:1).
    with torch.cuda.device(block.device) if block.is_cuda else contextlib.nullcontext():
        _columns[(triton.cdiv(rows, ROWS_PER_PROGRAM),)](
            block, hinv, scale, zero, top, quantized, errors,
            rows,
            *block.stride(), *hinv.stride(), *scale.stride(), *zero.stride(), quantized.stride(0), errors.stride(0),
            width=width, ROWS=ROWS_PER_PROGRAM, WIDTH=triton.next_power_of_2(width), **element,
            num_warps=WARPS, enable_fp_fusion=False,
        )  # fmt: skip
    return quantized, errors
