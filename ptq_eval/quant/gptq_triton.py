"""GPTQ's column loop for integer grids as one Triton kernel per block of columns (imported only where used).

Rows are independent given H, so each program owns a tile of rows and runs every column of the block on it in
registers: no launch and no host sync per column. The steps are the eager loop's (`quant/gptq_columns.py`) and
each is exact in float32 the same way: IEEE division (`div_rn`, not Triton's approximate `/`), round half to
even built from floor (exact: see `_int_columns`) and no fused multiply-add (`enable_fp_fusion=False`), so for
finite weights the result equals the eager loop's on the same device. (NaN is not promised to travel the same
way: Triton compiles assuming no NaN.) With TRITON_INTERPRET=1 set before
Triton is imported, the same source runs on CPU tensors through Triton's interpreter (numpy, slow): that is how
the tests compare it with the eager loop on a machine without a GPU (`tests/conftest.py` sets it there).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

ROWS_PER_PROGRAM = 16
WARPS = 4


@triton.jit
def _int_columns(
    W, H, S, Z, TOP, Q, E,
    rows,
    w_row, w_col, h_row, h_col, s_row, s_col, z_row, z_col, q_row, e_row,
    width: tl.constexpr, ROWS: tl.constexpr, WIDTH: tl.constexpr,
):  # fmt: skip
    """One tile of rows through the block's columns: quantize column i onto its grid (scale S, zero Z, levels
    0..TOP), record it (Q) and its scaled error (E), and subtract the error times row i of H (the block of the
    inverse Hessian's Cholesky factor) from the later columns."""
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    column = tl.arange(0, WIDTH)
    live = row < rows
    inside = column < width
    w = tl.load(W + row[:, None] * w_row + column[None, :] * w_col, mask=live[:, None] & inside[None, :], other=0.0)
    top = tl.load(TOP + row, mask=live, other=1.0)
    for i in range(0, width):
        x = tl.sum(tl.where(column[None, :] == i, w, 0.0), axis=1)  # one term plus zeros: exact
        s = tl.load(S + row * s_row + i * s_col, mask=live, other=1.0)
        z = tl.load(Z + row * z_row + i * z_col, mask=live, other=0.0)
        v = tl.math.div_rn(x, s)
        # Round half to even on |v|: floor, and the fraction |v| − floor (exact: both lie within one of |v|).
        magnitude = tl.abs(v)
        low = tl.floor(magnitude)
        fraction = magnitude - low
        odd = (low - 2.0 * tl.floor(low * 0.5)) == 1.0
        up = (fraction > 0.5) | ((fraction == 0.5) & odd)
        rounded = tl.where(up, low + 1.0, low)
        level = tl.where(v < 0, -rounded, rounded) + z
        level = tl.maximum(level, 0.0, propagate_nan=tl.PropagateNan.ALL)
        level = tl.minimum(level, top, propagate_nan=tl.PropagateNan.ALL)
        q = s * (level - z)
        error = tl.math.div_rn(x - q, tl.load(H + i * h_row + i * h_col))
        tl.store(Q + row * q_row + i, q, mask=live)
        tl.store(E + row * e_row + i, error, mask=live)
        h = tl.load(H + i * h_row + column * h_col, mask=inside & (column >= i), other=0.0)
        w = w - error[:, None] * h[None, :]


def int_columns(
    block: torch.Tensor, hinv: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, top: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's quantized columns and scaled errors ([rows, width] each, float32). `scale` and `zero` give
    each row's grid per column ([rows, width], broadcast views allowed); `top` each row's highest level."""
    rows, width = block.shape
    hinv = hinv.contiguous()  # its rows are read whole (the solve's factor is column-major)
    quantized, errors = (torch.empty(rows, width, dtype=block.dtype, device=block.device) for _ in range(2))
    # Triton launches on the current device, not the tensors': make it theirs (a solve may run on cuda:1).
    with torch.cuda.device(block.device) if block.is_cuda else contextlib.nullcontext():
        _int_columns[(triton.cdiv(rows, ROWS_PER_PROGRAM),)](
            block, hinv, scale, zero, top, quantized, errors,
            rows,
            *block.stride(), *hinv.stride(), *scale.stride(), *zero.stride(), quantized.stride(0), errors.stride(0),
            width=width, ROWS=ROWS_PER_PROGRAM, WIDTH=triton.next_power_of_2(width),
            num_warps=WARPS, enable_fp_fusion=False,
        )  # fmt: skip
    return quantized, errors
