"""Round-to-nearest: every selected matrix rounded to its grid independently (its inputs rotated first when the
config asks for a rotation, `quant/rotation.py`)."""

from __future__ import annotations

import torch

from ptq_eval.quant.base import LayerReport, QuantConfig, QuantReport, WeightMatrix, register
from ptq_eval.quant.formats import number_format, quantize_tensor
from ptq_eval.quant.rotation import rotation_for
from ptq_eval.quant.shared_options import SHARED_OPTIONS, SharedOptions


class RTNOptions(SharedOptions):
    """RTN's options: only those every method shares (rotation, scale dtype)."""


def relative_error(original: torch.Tensor, quantized: torch.Tensor) -> float:
    """‖W − Ŵ‖² / ‖W‖² in float64."""
    original = original.double()
    denominator = original.pow(2).sum().item()
    return (original - quantized.double()).pow(2).sum().item() / denominator if denominator else 0.0


def onto_grid(weight: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Q(W): the [out, in] weight rounded onto the config's grid as it stands (no rotation), in its dtype."""
    return quantize_tensor(weight, config.bits, config.group_size, config.symmetric, config.format, config.scale_dtype)


def round_to_nearest(weight: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """The [out, in] weight rounded onto the config's grid, Q(W) or, rotated, Q(W·Rᵀ)·R; in the weight's dtype."""
    rotation = rotation_for(config, weight.shape[1])
    if rotation is None or number_format(config.format).kept_whole(weight.shape[1]):
        return onto_grid(weight, config)
    return rotation.restore(onto_grid(rotation.rotate(weight).to(weight.dtype), config)).to(weight.dtype)


@torch.no_grad()
def rtn_result(
    weight: WeightMatrix, config: QuantConfig, fallback: str | None = None
) -> tuple[torch.Tensor, LayerReport]:
    """One matrix rounded to nearest (not written), and its report (`fallback`: why it was, if instead of
    another method; a format that keeps a matrix of its width whole says so)."""
    original = weight.read()
    quantized = round_to_nearest(original, config)
    fallback = number_format(config.format).kept_whole(weight.shape[1]) or fallback
    return quantized, LayerReport(weight.name, weight.shape, relative_error(original, quantized), fallback=fallback)


def rtn_matrix(weight: WeightMatrix, config: QuantConfig) -> LayerReport:
    """Round one matrix in place; its report."""
    quantized, report = rtn_result(weight, config)
    weight.write(quantized)
    return report


@register("rtn", options=RTNOptions, later_options=SHARED_OPTIONS)
def quantize_rtn(model: torch.nn.Module, weights: list[WeightMatrix], config: QuantConfig, **_unused) -> QuantReport:
    return QuantReport(config, [rtn_matrix(weight, config) for weight in weights])
