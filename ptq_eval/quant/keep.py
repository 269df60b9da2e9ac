"""Method `fp`: the weights kept as they are, for a config that rounds activations or the KV cache alone."""

from __future__ import annotations

import torch

from ptq_eval.quant.base import QuantConfig, QuantReport, WeightMatrix, register

KEEP = "fp"


@register(KEEP, rounds_weights=False)
def keep_weights(model: torch.nn.Module, weights: list[WeightMatrix], config: QuantConfig, **_unused) -> QuantReport:
    return QuantReport(config)
