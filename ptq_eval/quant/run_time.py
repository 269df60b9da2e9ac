"""What a config rounds as the model runs, beside its weights: its matrices' inputs (`activation_rounding.py`)
and the keys and values attention reads (`kv_rounding.py`), installed for the time its evals score.

Order: a probe pass first (a family whose attention the KV rounding cannot reach is refused before any work),
then, for static precisions, one pass over the calibration windows with the weights already rounded and nothing
else, keeping each matrix input's and each attention layer's range; then the rounding is installed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from ptq_eval.quant.activation_rounding import input_modules, observed_inputs, rounded_inputs
from ptq_eval.quant.base import QuantConfig, QuantError, WeightMatrix
from ptq_eval.quant.kv_rounding import KVRounder, RangeObserver, attention_hooked
from ptq_eval.quant.precision import Precision

CALIBRATION_BATCH = 8  # calibration windows per forward pass of the range pass


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _cached_layers(cache: object) -> int | None:
    """How many layers of a probe pass's cache hold keys (None: no cache to count)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    return sum(isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.numel() > 0 for layer in layers)


@torch.inference_mode()
def attention_layers(model: torch.nn.Module, precision: Precision) -> int:
    """How many attention layers a probe pass hands their keys and values to the KV rounding; none, fewer than
    its cache holds, or heads the precision cannot round (`Precision.unrounded`) is an error naming the family."""
    widths: dict[int, int] = {}
    with attention_hooked(model, lambda module, key, value, added: widths.update({id(module): key.shape[-1]})):
        output = model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=_device(model)), use_cache=True)
    name = type(model).__name__
    if not widths:
        raise QuantError(
            f"{name}: its attention does not go through transformers' attention interface, so its keys and values "
            "cannot be rounded inside attention; KV-cache precision is not simulated for it"
        )
    cached = _cached_layers(getattr(output, "cache", None) or getattr(output, "past_key_values", None))
    if cached is not None and cached > len(widths):
        raise QuantError(
            f"{name}: {cached} layers keep keys and values but only {len(widths)} go through transformers' attention "
            "interface; the others could not be rounded, so KV-cache precision is not simulated for it"
        )
    for width in sorted(set(widths.values())):
        why = precision.unrounded(width)
        if why:  # llama.cpp refuses a cache its blocks do not fit when it creates the context
            raise QuantError(f"{name}: kv_cache {precision.label} cannot round heads of {width} values: {why}")
    return len(widths)


def _check_widths(weights: list[WeightMatrix], precision: Precision) -> None:
    """Inputs the precision cannot round (`Precision.unrounded`) are refused (never measured as rounded)."""
    for weight in weights:
        why = precision.unrounded(weight.shape[1])
        if why:
            raise QuantError(
                f"{weight.name}: activations {precision.label} cannot round inputs of {weight.shape[1]} values: "
                f"{why}; exclude the matrix or choose another precision"
            )


@torch.inference_mode()
def _calibrate(
    model: torch.nn.Module, modules: dict[str, torch.nn.Module], config: QuantConfig, calibration: torch.Tensor
) -> tuple[dict[str, list[torch.Tensor]], dict[int, list[torch.Tensor]] | None]:
    """Each matrix input's range and each attention layer's key and value ranges over the calibration windows."""
    static = {name: p for name, p in (("activations", config.activations), ("kv_cache", config.kv_cache))
              if p is not None and not p.dynamic}  # fmt: skip
    observer = RangeObserver(config.kv_cache) if "kv_cache" in static else None
    with ExitStack() as stack:
        inputs = stack.enter_context(observed_inputs(modules if "activations" in static else {}))
        if observer is not None:
            stack.enter_context(attention_hooked(model, observer))
        for start in range(0, len(calibration), CALIBRATION_BATCH):
            model(input_ids=calibration[start : start + CALIBRATION_BATCH].to(_device(model)), use_cache=False)
    return inputs, observer.ranges if observer is not None else None


@contextmanager
def rounding_at_run_time(
    model: torch.nn.Module, config: QuantConfig, weights: list[WeightMatrix], calibration: torch.Tensor | None
) -> Iterator[dict]:
    """Within the block the model rounds what the config says as it runs; yields what was hooked (facts kept
    with the job's report). A config of weights alone installs nothing."""
    if config.activations is None and config.kv_cache is None:
        yield {}
        return
    modules = input_modules(weights) if config.activations is not None else {}
    facts: dict = {}
    if config.kv_cache is not None:
        layers = attention_layers(model, config.kv_cache)
        facts["kv_cache"] = {"precision": config.kv_cache.label, "attention_layers": layers}
    if config.activations is not None:
        _check_widths(weights, config.activations)
        facts["activations"] = {"precision": config.activations.label, "matrices": len(modules)}
    input_ranges, kv_ranges = None, None
    if config.static_run_time:
        if calibration is None:
            raise QuantError(f"{config.method}: static activation or KV scales need the calibration windows")
        started = time.perf_counter()
        input_ranges, kv_ranges = _calibrate(model, modules, config, calibration)
        facts |= {"calibration_windows": len(calibration), "calibration_seconds": time.perf_counter() - started}
    with ExitStack() as stack:
        if config.activations is not None:
            stack.enter_context(rounded_inputs(modules, config.activations, input_ranges))
        if config.kv_cache is not None:
            stack.enter_context(attention_hooked(model, KVRounder(config.kv_cache, kv_ranges)))
        yield facts
