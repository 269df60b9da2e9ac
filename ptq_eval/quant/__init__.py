"""Quantizers behind one interface: `quantize(model, config, exclude, calibration) -> QuantReport`.

A method registers itself (`base.register`) with its options' schema; a number format is one entry of
`formats.FORMATS`. Outside `quant/`, code names neither: it reads `METHOD_OPTIONS` and `FORMATS`."""

from ptq_eval.quant import awq, gptq, keep, rtn, stored  # noqa: F401  (each registers its method)
from ptq_eval.quant.base import (
    DEFAULT_EXCLUDE,
    INT,
    METHODS,
    Coverage,
    LayerReport,
    QuantConfig,
    QuantError,
    QuantReport,
    WeightMatrix,
    embedding_weights,
    granularity,
    later_option_defaults,
    method_named,
    option_names,
    quantizable_weights,
    quantize,
    rounds_weights,
    survey,
)
from ptq_eval.quant.formats import FORMATS, number_format
from ptq_eval.quant.keep import KEEP
from ptq_eval.quant.number_format import FormatError

METHOD_OPTIONS = option_names()  # every registered method's options: results columns, fit and report keys

__all__ = [
    "DEFAULT_EXCLUDE",
    "FORMATS",
    "INT",
    "KEEP",
    "METHODS",
    "METHOD_OPTIONS",
    "Coverage",
    "FormatError",
    "LayerReport",
    "QuantConfig",
    "QuantError",
    "QuantReport",
    "WeightMatrix",
    "embedding_weights",
    "granularity",
    "later_option_defaults",
    "method_named",
    "number_format",
    "option_names",
    "quantizable_weights",
    "quantize",
    "rounds_weights",
    "survey",
]
