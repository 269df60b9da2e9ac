"""GPTQ's solve (Frantar et al. 2022) for everything that shares one input Hessian, in one column loop.

Given H = 2·XXᵀ/n, damp it, take the upper Cholesky factor of H⁻¹, then quantize column by column, spreading
each column's rounding error over the columns not yet quantized (lazy updates in blocks of columns).

GPTQ treats the rows of a weight matrix independently given H, so matrices reading the same input (q/k/v,
gate/up) and several configs of one matrix (bit widths, group sizes, symmetry) can share one loop with their
rows stacked, each part of the rows on its own grid. What shapes the loop itself must be shared: act-order,
static groups, damping and block size (`SOLVE_OPTIONS`). Every row sees the same arithmetic as in a solve of
its part alone (elementwise steps per row; the lazy update's product leaves a row's sums to that row), so on
the CPU a stacked solve gives each part bit-identical weights to its own solve (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptq_eval.quant.base import QuantConfig
from ptq_eval.quant.formats import number_format
from ptq_eval.quant.grid import PER_TENSOR, Grid

SOLVE_OPTIONS = ("act_order", "static_groups", "damp", "block_size")


@dataclass(frozen=True)
class GPTQResult:
    """De-quantized weights, plus the grids that produced them (what a packed export needs).

    `scales` and `zeros` are [groups, rows]; column j used group `group_index[j]`.
    """

    weight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    group_index: torch.Tensor


@dataclass
class _Part:
    """One (matrix, config) of a stacked solve: its rows, grid rule and the grids it used."""

    config: QuantConfig
    rows: slice
    dtype: torch.dtype
    group: int
    tensor_scale: torch.Tensor | None = None
    static: list[Grid] | None = None
    grids: list[Grid] = field(default_factory=list)
    group_of_position: list[int] = field(default_factory=list)

    def fit(self, weight: torch.Tensor) -> Grid:
        config, fmt = self.config, number_format(self.config.format)
        if config.group_size == PER_TENSOR:
            weight = weight.reshape(1, -1)
        return fmt.fit(weight, config.bits, config.symmetric, self.dtype, self.tensor_scale)


def solve_key(config: QuantConfig) -> tuple:
    """Configs with equal keys can share a column loop: the same solve options and number format."""
    return (*(getattr(config, option) for option in SOLVE_OPTIONS), config.format)


def _set_rows(target: torch.Tensor, rows: slice, value: torch.Tensor) -> None:
    target[rows] = value.expand(rows.stop - rows.start, 1)


@torch.no_grad()
def gptq_solve(
    parts: list[tuple[torch.Tensor, QuantConfig]], hessian: torch.Tensor, dtype: torch.dtype | None = None
) -> list[GPTQResult]:
    """GPTQ for matrices ([out, in], all with H's columns) sharing the input Hessian H, each with its config;
    de-quantized weights (float32) and grids per part, their points exact in `dtype` (default: each weight's)."""
    if len({solve_key(config) for _, config in parts}) != 1:
        raise ValueError(f"one solve needs the same {', '.join(SOLVE_OPTIONS)} for every part")
    config = parts[0][1]
    for weight, part_config in parts:  # the format's own rules were checked when the config was made
        fmt = number_format(part_config.format)
        fmt.check_dtype(part_config.bits, part_config.symmetric, weight.dtype if dtype is None else dtype)
    H = hessian.clone()
    columns = H.shape[0]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W = torch.cat([weight.float() for weight, _ in parts])
    W[:, dead] = 0
    state, start = [], 0
    for weight, part_config in parts:
        group = part_config.group_size if part_config.group_size > 0 else 0
        rows = slice(start, start + weight.shape[0])
        part_dtype = weight.dtype if dtype is None else dtype
        tensor_scale = number_format(part_config.format).tensor_scale(weight, part_dtype)
        state.append(_Part(part_config, rows, part_dtype, group, tensor_scale))
        start = rows.stop
    for part in state:
        if part.group and part.config.static_groups:
            part.static = [part.fit(W[part.rows, s : s + part.group]) for s in range(0, columns, part.group)]
    order = (
        torch.argsort(torch.diag(H), descending=True) if config.act_order else torch.arange(columns, device=W.device)
    )
    order_on_host = order.tolist()  # one sync here, none in the loop
    W, H = W[:, order], H[order][:, order]
    H += config.damp * torch.mean(torch.diag(H)) * torch.eye(columns, device=W.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    # Each row's grid as the loop stands: scale, zero point and top level (per row, so parts may differ).
    scale, zero, maxq = (torch.empty(W.shape[0], 1, device=W.device) for _ in range(3))
    for part in state:
        _set_rows(maxq, part.rows, torch.tensor(2**part.config.bits - 1.0, device=W.device))
        if not part.group:
            part.grids.append(part.fit(W[part.rows]))
            _set_rows(scale, part.rows, part.grids[0].scale)
            _set_rows(zero, part.rows, part.grids[0].zero)
        elif part.static is not None:
            part.grids = part.static
    bits = {part.config.bits for part in state}
    floor, top = (0, 2 ** bits.pop() - 1) if len(bits) == 1 else (torch.zeros_like(maxq), maxq)
    elements = number_format(config.format).elements  # None: integer levels
    Q = torch.zeros_like(W)
    for start in range(0, columns, config.block_size):
        end = min(start + config.block_size, columns)
        W1, Hinv1 = W[:, start:end].clone(), Hinv[start:end, start:end]
        errors = torch.zeros_like(W1)
        for i in range(end - start):
            column = start + i
            for part in state:
                _next_grid(part, column, order_on_host[column], W, scale, zero)
            x = W1[:, i : i + 1]
            if elements is None:
                q = (scale * (torch.clamp(torch.round(x / scale) + zero, floor, top) - zero)).flatten()
            else:
                q = (scale * elements.round(x / scale)).flatten()
            Q[:, column] = q
            error = (W1[:, i] - q) / Hinv1[i, i]
            W1[:, i:] -= error[:, None] @ Hinv1[i : i + 1, i:]
            errors[:, i] = error
        W[:, end:] -= errors @ Hinv[start:end, end:]
    inverse = torch.argsort(order)
    return [_result(part, Q[part.rows][:, inverse], inverse.cpu()) for part in state]


def _next_grid(part: _Part, column: int, original_column: int, W, scale, zero) -> None:
    """Point the part's rows at the grid of this column (a fresh one where a dynamic group starts)."""
    if part.static is not None:
        index = original_column // part.group
        grid = part.static[index]
    elif part.group:
        if column % part.group:
            part.group_of_position.append(len(part.grids) - 1)
            return
        # As the reference GPTQ does: fitted on the weights as they stood before this block's updates.
        grid = part.fit(W[part.rows, column : column + part.group])
        part.grids.append(grid)
        index = len(part.grids) - 1
    else:
        return
    part.group_of_position.append(index)
    _set_rows(scale, part.rows, grid.scale)
    _set_rows(zero, part.rows, grid.zero)


def _result(part: _Part, weight: torch.Tensor, inverse: torch.Tensor) -> GPTQResult:
    rows = weight.shape[0]
    positions = part.group_of_position or [0] * weight.shape[1]
    group_index = torch.tensor(positions, dtype=torch.int32)[inverse]
    scales = torch.cat([g.scale.expand(rows, 1) for g in part.grids], dim=1).T
    zeros = torch.cat([g.zero.expand(rows, 1) for g in part.grids], dim=1).T
    return GPTQResult(weight, scales, zeros, group_index)


def gptq_weight(
    weight: torch.Tensor, hessian: torch.Tensor, config: QuantConfig, dtype: torch.dtype | None = None
) -> GPTQResult:
    """GPTQ for one Linear, given its input Hessian: de-quantized weights (float32) and their grids, whose points
    are exact in `dtype` (default: the weight's; see `quant/grid.py`)."""
    return gptq_solve([(weight, config)], hessian, dtype)[0]
