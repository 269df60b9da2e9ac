"""GPTQ (Frantar et al. 2022), native in torch, over the shared grid.

Per Linear: accumulate H = 2·XXᵀ/n from calibration inputs, damp it, take the upper
Cholesky factor of H⁻¹, then quantize column by column, spreading each column's
rounding error over the columns not yet quantized (lazy updates in blocks).

Over a model: calibration activations are captured at the first transformer block and
pushed through one block at a time; each block's Linears are quantized from the inputs
that block sees *after* the blocks before it were quantized. With `device`, the model
stays where it is (e.g. CPU) and only the block being quantized, the activations and its
Hessians live on `device` (e.g. CUDA): peak accelerator memory is one block + activations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ptq_eval.quant import LayerReport, QuantConfig, QuantReport, quantizable_linears
from ptq_eval.quant.grid import PER_TENSOR, Grid, check_group_size, fit_grid
from ptq_eval.quant.rtn import relative_error


class Hessian:
    """Running H = 2/n · Σ xxᵀ over the rows of every input batch a Linear sees."""

    def __init__(self, columns: int, device: torch.device):
        self.matrix = torch.zeros(columns, columns, device=device, dtype=torch.float32)
        self.samples = 0

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.reshape(-1, inputs.shape[-1]).float()
        total = self.samples + x.shape[0]
        self.matrix *= self.samples / total
        x = x * (2 / total) ** 0.5
        self.matrix += x.T @ x
        self.samples = total


@dataclass(frozen=True)
class GPTQResult:
    """De-quantized weights, plus the grids that produced them (what a packed export needs).

    `scales` and `zeros` are [groups, rows]; column j used group `group_index[j]`.
    """

    weight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    group_index: torch.Tensor


def _grid_for(weight: torch.Tensor, config: QuantConfig) -> Grid:
    if config.group_size == PER_TENSOR:
        return fit_grid(weight.reshape(1, -1), config.bits, config.symmetric)
    return fit_grid(weight, config.bits, config.symmetric)


@torch.no_grad()
def gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, config: QuantConfig) -> GPTQResult:
    """GPTQ for one Linear, given its input Hessian: de-quantized weights (float32) and their grids."""
    check_group_size(config.group_size)
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
            fit_grid(W[:, start : start + group], config.bits, config.symmetric) for start in range(0, columns, group)
        ]
    order = (
        torch.argsort(torch.diag(H), descending=True) if config.act_order else torch.arange(columns, device=W.device)
    )
    W, H = W[:, order], H[order][:, order]

    H += config.damp * torch.mean(torch.diag(H)) * torch.eye(columns, device=W.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    grid = None if group else _grid_for(W, config)
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
                    grid = fit_grid(W[:, column : column + group], config.bits, config.symmetric)
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


class _Captured(Exception):
    """Raised by the hook that records the first block's inputs, to stop the forward pass."""


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of transformer blocks: the longest ModuleList that holds Linears."""
    candidates = [
        module
        for module in model.modules()
        if isinstance(module, torch.nn.ModuleList) and any(isinstance(m, torch.nn.Linear) for m in module.modules())
    ]
    if not candidates:
        raise ValueError(f"{type(model).__name__}: no transformer blocks (ModuleList of Linears) found for GPTQ")
    return max(candidates, key=len)


@torch.no_grad()
def _first_block_inputs(model, blocks, calibration: torch.Tensor, batch_size: int) -> list[tuple[list, dict]]:
    captured = []

    def hook(module, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        if not args:
            args = [kwargs.pop("hidden_states")]
        captured.append((args, kwargs))
        raise _Captured

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for start in range(0, len(calibration), batch_size):
            try:
                model(input_ids=calibration[start : start + batch_size].to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


def _to(value, device: torch.device):
    """`value` with every tensor in it (through lists, tuples and dicts) moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list | tuple):
        return type(value)(_to(item, device) for item in value)
    if isinstance(value, dict):
        return {key: _to(item, device) for key, item in value.items()}
    return value


def _run_block(block, args: list, kwargs: dict) -> torch.Tensor:
    output = block(*args, **kwargs)
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def quantize_gptq(
    model: torch.nn.Module,
    config: QuantConfig,
    exclude: tuple[str, ...],
    calibration: torch.Tensor,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> QuantReport:
    """Quantize the model in place, block by block, with GPTQ.

    `device`: where each block is quantized (default: where the model is); the model stays where it is,
    each block moving to `device` for its turn and back after it, while the activations stay on `device`.
    """
    if calibration is None or len(calibration) == 0:
        raise ValueError("GPTQ needs calibration data (the study's calibration: section)")
    started = time.perf_counter()
    report = QuantReport(config)
    chosen = {id(module) for module in quantizable_linears(model, exclude).values()}
    blocks = transformer_blocks(model)
    home = next(model.parameters()).device
    device = home if device is None else torch.device(device)
    inputs = _to(_first_block_inputs(model, blocks, calibration, batch_size), device)
    names = {id(module): name for name, module in model.named_modules()}
    for block in blocks:
        block.to(device)
        linears = {name: m for name, m in block.named_modules() if id(m) in chosen}
        hessians = {name: Hessian(m.in_features, m.weight.device) for name, m in linears.items()}
        handles = [
            m.register_forward_hook(lambda module, args, out, h=hessians[name]: h.add(args[0]))
            for name, m in linears.items()
        ]
        for args, kwargs in inputs:
            _run_block(block, args, kwargs)
        for handle in handles:
            handle.remove()
        for name, linear in linears.items():
            weight, hessian = linear.weight, hessians[name].matrix
            layer_name = f"{names[id(block)]}.{name}"
            result = gptq_weight(weight, hessian, config)
            quantized = result.weight
            report.grids[layer_name] = (result.scales.to(home), result.zeros.to(home), result.group_index)
            report.layers.append(
                LayerReport(
                    layer_name,
                    tuple(weight.shape),
                    relative_error(weight, quantized),
                    output_error(weight, quantized, hessian),
                )
            )
            weight.copy_(quantized.to(weight.dtype))
        for args, kwargs in inputs:
            args[0] = _run_block(block, args, kwargs)
        block.to(home)
    report.seconds = time.perf_counter() - started
    return report
