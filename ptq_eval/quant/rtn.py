"""Round-to-nearest: every chosen Linear's weight rounded to its grid independently."""

from __future__ import annotations

import time

import torch

from ptq_eval.quant import LayerReport, QuantConfig, QuantReport, quantizable_linears
from ptq_eval.quant.grid import quantize_tensor


def relative_error(original: torch.Tensor, quantized: torch.Tensor) -> float:
    """‖W − Ŵ‖² / ‖W‖² in float64."""
    original = original.double()
    denominator = original.pow(2).sum().item()
    return (original - quantized.double()).pow(2).sum().item() / denominator if denominator else 0.0


@torch.no_grad()
def quantize_rtn(model: torch.nn.Module, config: QuantConfig, exclude: tuple[str, ...]) -> QuantReport:
    started = time.perf_counter()
    report = QuantReport(config)
    for name, linear in quantizable_linears(model, exclude).items():
        weight = linear.weight
        quantized = quantize_tensor(weight, config.bits, config.group_size, config.symmetric)
        report.layers.append(LayerReport(name, tuple(weight.shape), relative_error(weight, quantized)))
        weight.copy_(quantized)
    report.seconds = time.perf_counter() - started
    return report
