"""GPTQ (Frantar et al. 2022), native in torch, over the shared grid.

Per Linear: accumulate H = 2·XXᵀ/n from calibration inputs, damp it, take the upper
Cholesky factor of H⁻¹, then quantize column by column, spreading each column's
rounding error over the columns not yet quantized (lazy updates in blocks).

Over a model (`quant/blocks.py`): block by block, each matrix quantized from the inputs it sees once
the blocks before it (with `sequential="layer"`, also the layers before it in its block) are
quantized. A matrix no calibration input reaches (an expert the router never chose) is rounded to
nearest instead, and its report says so. With `device`, the model stays where it is (e.g. CPU) and
only the block being quantized, the activations and its Hessians live on `device` (e.g. CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptq_eval.errors import UserError
from ptq_eval.quant.base import LayerReport, QuantConfig, QuantError, QuantReport, WeightMatrix, register
from ptq_eval.quant.blocks import calibrate
from ptq_eval.quant.grid import PER_TENSOR, Grid, check_group_size, fit_grid, quantize_tensor
from ptq_eval.quant.hessians import Hessian
from ptq_eval.quant.rtn import relative_error, rtn_matrix

NO_INPUT = "rtn: the router sent it no calibration token"


@dataclass(frozen=True)
class GPTQResult:
    """De-quantized weights, plus the grids that produced them (what a packed export needs).

    `scales` and `zeros` are [groups, rows]; column j used group `group_index[j]`.
    """

    weight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    group_index: torch.Tensor


def _grid_for(weight: torch.Tensor, config: QuantConfig, dtype: torch.dtype) -> Grid:
    if config.group_size == PER_TENSOR:
        return fit_grid(weight.reshape(1, -1), config.bits, config.symmetric, dtype)
    return fit_grid(weight, config.bits, config.symmetric, dtype)


@torch.no_grad()
def gptq_weight(
    weight: torch.Tensor, hessian: torch.Tensor, config: QuantConfig, dtype: torch.dtype | None = None
) -> GPTQResult:
    """GPTQ for one Linear, given its input Hessian: de-quantized weights (float32) and their grids, whose points
    are exact in `dtype` (default: the weight's; see `quant/grid.py`)."""
    check_group_size(config.group_size)
    dtype = weight.dtype if dtype is None else dtype
    W = weight.float().clone()
    H = hessian.clone()
    rows, columns = W.shape
    group = config.group_size if config.group_size > 0 else 0
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    static = None
    if group and config.static_groups:
        static = [
            fit_grid(W[:, start : start + group], config.bits, config.symmetric, dtype)
            for start in range(0, columns, group)
        ]
    order = (
        torch.argsort(torch.diag(H), descending=True) if config.act_order else torch.arange(columns, device=W.device)
    )
    W, H = W[:, order], H[order][:, order]

    H += config.damp * torch.mean(torch.diag(H)) * torch.eye(columns, device=W.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    grid = None if group else _grid_for(W, config, dtype)
    grids = [] if group and static is None else (static or [grid])
    group_of_position = torch.zeros(columns, dtype=torch.int32)
    Q = torch.zeros_like(W)
    for start in range(0, columns, config.block_size):
        end = min(start + config.block_size, columns)
        W1, Hinv1 = W[:, start:end].clone(), Hinv[start:end, start:end]
        errors = torch.zeros_like(W1)
        for i in range(end - start):
            column = start + i
            if static is not None:
                group_of_position[column] = int(order[column]) // group
                grid = static[group_of_position[column]]
            elif group:
                if column % group == 0:
                    # As the reference GPTQ does: fitted on the weights as they stood before this block's updates.
                    grid = fit_grid(W[:, column : column + group], config.bits, config.symmetric, dtype)
                    grids.append(grid)
                group_of_position[column] = len(grids) - 1
            q = grid.fake_quantize(W1[:, i : i + 1]).flatten()
            Q[:, column] = q
            error = (W1[:, i] - q) / Hinv1[i, i]
            W1[:, i:] -= error[:, None] @ Hinv1[i : i + 1, i:]
            errors[:, i] = error
        W[:, end:] -= errors @ Hinv[start:end, end:]
    inverse = torch.argsort(order)
    scales = torch.cat([g.scale.expand(rows, 1) for g in grids], dim=1).T
    zeros = torch.cat([g.zero.expand(rows, 1) for g in grids], dim=1).T
    return GPTQResult(Q[:, inverse], scales, zeros, group_of_position[inverse.cpu()])


def output_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """‖WX − ŴX‖² / ‖WX‖², from the Hessian (XXᵀ up to a factor that cancels)."""
    delta = (weight.double() - quantized.double()) @ hessian.double()
    numerator = (delta * (weight.double() - quantized.double())).sum().item()
    denominator = ((weight.double() @ hessian.double()) * weight.double()).sum().item()
    return numerator / denominator if denominator else 0.0


@torch.no_grad()
def _gptq_matrix(weight: WeightMatrix, hessian: Hessian, config: QuantConfig, report: QuantReport, home) -> None:
    """GPTQ one matrix in place (RTN when no input reached it), adding its layer report and grids."""
    if hessian.samples == 0:
        report.layers.append(rtn_matrix(weight, config, fallback=NO_INPUT))
        return
    stored, matrix = weight.read(), hessian.matrix
    original = stored.float()
    result = gptq_weight(original, matrix, config, stored.dtype)
    rtn = quantize_tensor(stored, config.bits, config.group_size, config.symmetric).float()
    report.grids[weight.name] = (result.scales.to(home), result.zeros.to(home), result.group_index)
    report.layers.append(
        LayerReport(
            weight.name,
            weight.shape,
            relative_error(original, result.weight),
            output_error(original, result.weight, matrix),
            output_error(original, rtn, matrix),
            hessian.samples,
        )
    )
    weight.write(result.weight)


def check_inputs_reached(group: list[WeightMatrix], hessians: dict[str, Hessian]) -> None:
    """Only an expert may see no calibration input, and only when others of its tensor saw some (the router
    chose them): anything else means its inputs were not captured, which must not pass as a rounding."""
    reached = {w.expert_family for w in group if w.expert_family is not None and hessians[w.name].samples}
    for weight in group:
        if hessians[weight.name].samples == 0 and weight.expert_family not in reached:
            raise QuantError(
                f"GPTQ saw no calibration input reach {weight.name} ({type(weight.module).__name__}); "
                "ptq-eval cannot see how the model uses it: exclude it or use method rtn"
            )


@register("gptq")
def quantize_gptq(
    model: torch.nn.Module,
    weights: list[WeightMatrix],
    config: QuantConfig,
    calibration: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    cache: dict | None = None,
) -> QuantReport:
    """Quantize these matrices of the model in place with GPTQ, block by block (see `quant/blocks.py`)."""
    if calibration is None or len(calibration) == 0:
        raise UserError("GPTQ needs calibration data (the study's calibration: section)")
    report = QuantReport(config)
    home = next(model.parameters()).device

    def process(group: list[WeightMatrix], hessians: dict[str, Hessian]) -> None:
        check_inputs_reached(group, hessians)
        for weight in group:
            _gptq_matrix(weight, hessians[weight.name], config, report, home)

    calibrate(model, weights, calibration, process, config.sequential, batch_size, device, cache)
    return report
