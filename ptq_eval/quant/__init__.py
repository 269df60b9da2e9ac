"""Quantizers behind one interface: `quantize(model, config) -> QuantReport`."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field

import torch

from ptq_eval.quant.grid import PER_CHANNEL, PER_TENSOR

METHODS = ("rtn",)
DEFAULT_EXCLUDE = ("lm_head", "embed_out")


@dataclass(frozen=True)
class QuantConfig:
    """One point of the quantization grid of a study."""

    method: str
    bits: int
    group_size: int = PER_CHANNEL
    symmetric: bool = True

    @property
    def granularity(self) -> str:
        if self.group_size == PER_CHANNEL:
            return "channel"
        if self.group_size == PER_TENSOR:
            return "tensor"
        return f"group{self.group_size}"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LayerReport:
    name: str
    shape: tuple[int, int]
    relative_error: float


@dataclass
class QuantReport:
    """Per-layer weight errors ‖W − Ŵ‖² / ‖W‖² and the time quantization took."""

    config: QuantConfig
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean_relative_error(self) -> float:
        return sum(layer.relative_error for layer in self.layers) / max(1, len(self.layers))


def quantizable_linears(
    model: torch.nn.Module, exclude: tuple[str, ...] = DEFAULT_EXCLUDE
) -> dict[str, torch.nn.Linear]:
    """Every Linear except the output head and names matching an exclude pattern (fnmatch)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    chosen = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        if any(
            fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name.rsplit(".", 1)[-1], pattern) for pattern in exclude
        ):
            continue
        chosen[name] = module
    return chosen


def quantize(model: torch.nn.Module, config: QuantConfig, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> QuantReport:
    """Quantize the model's weights in place with the configured method."""
    if config.method == "rtn":
        from ptq_eval.quant.rtn import quantize_rtn

        return quantize_rtn(model, config, exclude)
    raise ValueError(f"unknown quantization method {config.method!r}; accepted: {', '.join(METHODS)}")
