"""The inputs of a config's matrices rounded as they pass (W8A8's activations): a forward pre-hook on each
Linear or Conv1D whose weight the config selects, rounding its input per token (dynamic) or onto the grid of the
range calibrated for it (static, per tensor). Fused expert tensors have no module call per matrix to hook and
are refused by name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ptq_eval.quant.base import QuantError, WeightMatrix
from ptq_eval.quant.precision import Precision, round_per_token, round_static


def input_modules(weights: list[WeightMatrix]) -> dict[str, torch.nn.Module]:
    """name -> the module whose input each selected matrix multiplies; refused for fused experts."""
    experts = [weight.name for weight in weights if weight.kind == "expert"]
    if experts:
        raise QuantError(
            f"activation rounding hooks each matrix's module call; fused expert tensors ({experts[0]}, ...) have "
            "none: exclude them or quantize weights only"
        )
    return {weight.name: weight.module for weight in weights}


def _first(name: str, args: tuple) -> torch.Tensor:
    if not args or not isinstance(args[0], torch.Tensor):
        raise QuantError(f"{name}: called without its input as the first argument; its input cannot be rounded")
    return args[0]


@contextmanager
def observed_inputs(modules: dict[str, torch.nn.Module]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the block, each module's input range (min, max over every value, [1, 1] each) is kept."""
    ranges: dict[str, list[torch.Tensor]] = {}

    def observer(name: str):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            x = _first(name, args).detach().float()
            low, high = x.amin().reshape(1, 1), x.amax().reshape(1, 1)
            seen = ranges.get(name)
            ranges[name] = [low, high] if seen is None else [torch.minimum(seen[0], low), torch.maximum(seen[1], high)]

        return hook

    handles = [module.register_forward_pre_hook(observer(name)) for name, module in modules.items()]
    try:
        yield ranges
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def rounded_inputs(
    modules: dict[str, torch.nn.Module], precision: Precision, ranges: dict[str, list[torch.Tensor]] | None = None
) -> Iterator[None]:
    """Within the block, each module's input is rounded before it is multiplied."""

    def rounder(name: str):
        low, high = (ranges or {}).get(name, (None, None))
        if not precision.dynamic and low is None:
            raise QuantError(f"{name}: no calibrated input range (static activations need calibration)")

        def hook(module: torch.nn.Module, args: tuple) -> tuple:
            x = _first(name, args)
            if precision.dynamic:
                rounded = round_per_token(x, precision)
            else:
                rounded = round_static(x.reshape(-1, x.shape[-1]), low.to(x.device), high.to(x.device), precision)
            return (rounded.reshape(x.shape), *args[1:])

        return hook

    handles = [module.register_forward_pre_hook(rounder(name)) for name, module in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
