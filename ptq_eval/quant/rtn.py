"""Round-to-nearest: every selected matrix rounded to its grid independently."""

from __future__ import annotations

import torch

from ptq_eval.quant.base import LayerReport, QuantConfig, QuantReport, WeightMatrix, register
from ptq_eval.quant.formats import quantize_tensor


def relative_error(original: torch.Tensor, quantized: torch.Tensor) -> float:
    """‖W − Ŵ‖² / ‖W‖² in float64."""
    original = original.double()
    denominator = original.pow(2).sum().item()
    return (original - quantized.double()).pow(2).sum().item() / denominator if denominator else 0.0


@torch.no_grad()
def rtn_result(
    weight: WeightMatrix, config: QuantConfig, fallback: str | None = None
) -> tuple[torch.Tensor, LayerReport]:
    """One matrix rounded to nearest (not written), and its report."""
    original = weight.read()
    quantized = quantize_tensor(original, config.bits, config.group_size, config.symmetric, config.format)
    return quantized, LayerReport(weight.name, weight.shape, relative_error(original, quantized), fallback=fallback)


def rtn_matrix(weight: WeightMatrix, config: QuantConfig) -> LayerReport:
    """Round one matrix in place; its report."""
    quantized, report = rtn_result(weight, config)
    weight.write(quantized)
    return report


@register("rtn")
def quantize_rtn(model: torch.nn.Module, weights: list[WeightMatrix], config: QuantConfig, **_unused) -> QuantReport:
    return QuantReport(config, [rtn_matrix(weight, config) for weight in weights])
