"""Quantizers behind one interface: `quantize(model, config, exclude, calibration) -> QuantReport`."""

from ptq_eval.quant import gptq, rtn  # noqa: F401  (each registers its method)
from ptq_eval.quant.base import (
    DEFAULT_EXCLUDE,
    GPTQ_OPTIONS,
    METHODS,
    SEQUENTIAL,
    Coverage,
    LayerReport,
    QuantConfig,
    QuantError,
    QuantReport,
    WeightMatrix,
    embedding_weights,
    quantizable_weights,
    quantize,
    survey,
)

__all__ = [
    "DEFAULT_EXCLUDE",
    "GPTQ_OPTIONS",
    "METHODS",
    "SEQUENTIAL",
    "Coverage",
    "LayerReport",
    "QuantConfig",
    "QuantError",
    "QuantReport",
    "WeightMatrix",
    "embedding_weights",
    "quantizable_weights",
    "quantize",
    "survey",
]
