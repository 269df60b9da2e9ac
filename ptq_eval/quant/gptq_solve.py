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

import itertools
from dataclasses import dataclass, field

import torch

from ptq_eval.quant.base import QuantConfig
from ptq_eval.quant.formats import number_format
from ptq_eval.quant.gptq_columns import column_loop
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
    static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # group per position, scales, zeros
    grids: list[Grid] = field(default_factory=list)
    group_of_position: list[int] = field(default_factory=list)

    def fit(self, weight: torch.Tensor) -> Grid:
        config, fmt = self.config, number_format(self.config.format, self.config.scale_dtype)
        if config.group_size == PER_TENSOR:
            weight = weight.reshape(1, -1)
        return fmt.fit(weight, config.bits, config.symmetric, self.dtype, self.tensor_scale)

    def block_grids(self, W: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's scale and zero point for the columns start..end ([rows, end − start]). A dynamic group
        starting here is fitted now, as the reference GPTQ does: on the weights as they stood before this
        block's updates (the eager loop fitted it at its first column; nothing writes W within a block)."""
        width = end - start
        if self.static is not None:
            group, scales, zeros = self.static
            return scales[:, group[start:end]], zeros[:, group[start:end]]
        rows = self.rows.stop - self.rows.start
        if not self.group:
            grid = self.grids[0]
            return grid.scale.expand(rows, width), grid.zero.expand(rows, width)
        for column in range(start, end):
            if column % self.group == 0:
                self.grids.append(self.fit(W[self.rows, column : column + self.group]))
            self.group_of_position.append(len(self.grids) - 1)
        runs = itertools.groupby(self.group_of_position[start:end])
        spans = [(self.grids[index], len(list(members))) for index, members in runs]
        scale = torch.cat([grid.scale.expand(rows, count) for grid, count in spans], dim=1)
        zero = torch.cat([grid.zero.expand(rows, count) for grid, count in spans], dim=1)
        return scale, zero


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
        if part.group and part.config.static_groups:  # fitted on the columns in their own order
            part.grids = [part.fit(W[part.rows, s : s + part.group]) for s in range(0, columns, part.group)]
    order = (
        torch.argsort(torch.diag(H), descending=True) if config.act_order else torch.arange(columns, device=W.device)
    )
    order_on_host = order.tolist()  # one sync here, none in the loop
    W, H = W[:, order], H[order][:, order]
    H += config.damp * torch.mean(torch.diag(H)) * torch.eye(columns, device=W.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    maxq = torch.empty(W.shape[0], 1, device=W.device)  # each row's top level (parts may differ)
    for part in state:
        _set_rows(maxq, part.rows, torch.tensor(2**part.config.bits - 1.0, device=W.device))
        if not part.group:
            part.grids.append(part.fit(W[part.rows]))
        elif part.grids:  # static groups: each position's group, on the device as one index
            part.group_of_position = [column // part.group for column in order_on_host]
            position_group = torch.tensor(part.group_of_position, device=W.device)
            scales, zeros = (torch.cat([getattr(g, name) for g in part.grids], dim=1) for name in ("scale", "zero"))
            part.static = (position_group, scales, zeros)
    bits = {part.config.bits for part in state}
    top = 2 ** bits.pop() - 1 if len(bits) == 1 else maxq
    elements = number_format(config.format).elements  # None: integer levels
    _, run_columns = column_loop(W.device, elements)
    Q = torch.zeros_like(W)
    for start in range(0, columns, config.block_size):
        end = min(start + config.block_size, columns)
        grids = [part.block_grids(W, start, end) for part in state]
        scale, zero = grids[0] if len(grids) == 1 else (torch.cat(g, dim=0) for g in zip(*grids, strict=True))
        block = W[:, start:end].clone()
        Q[:, start:end], errors = run_columns(block, Hinv[start:end, start:end], scale, zero, top, elements)
        W[:, end:] -= errors @ Hinv[start:end, end:]
    inverse = torch.argsort(order)
    return [_result(part, Q[part.rows][:, inverse], inverse.cpu()) for part in state]


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
