"""Quantizers behind one interface: `quantize(model, config) -> QuantReport`."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field

import torch

from ptq_eval.quant.grid import PER_CHANNEL, PER_TENSOR

METHODS = ("rtn", "gptq")
GPTQ_OPTIONS = ("act_order", "static_groups", "damp", "block_size")
DEFAULT_EXCLUDE = ("lm_head", "embed_out")


@dataclass(frozen=True)
class QuantConfig:
    """One point of the quantization grid of a study."""

    method: str
    bits: int
    group_size: int = PER_CHANNEL
    symmetric: bool = True
    act_order: bool = False
    static_groups: bool = False
    damp: float = 0.01
    block_size: int = 128

    @property
    def granularity(self) -> str:
        if self.group_size == PER_CHANNEL:
            return "channel"
        if self.group_size == PER_TENSOR:
            return "tensor"
        return f"group{self.group_size}"

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq"

    def as_dict(self) -> dict:
        """The config's fields; GPTQ's options only for GPTQ (so RTN job keys do not depend on them)."""
        fields = asdict(self)
        if self.method != "gptq":
            for option in GPTQ_OPTIONS:
                fields.pop(option)
        return fields


@dataclass(frozen=True)
class LayerReport:
    """Weight error ‖W − Ŵ‖² / ‖W‖², and for GPTQ the output error ‖WX − ŴX‖² / ‖WX‖² on calibration."""

    name: str
    shape: tuple[int, int]
    relative_error: float
    output_error: float | None = None


@dataclass
class QuantReport:
    """Per-layer weight errors ‖W − Ŵ‖² / ‖W‖² and the time quantization took."""

    config: QuantConfig
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0
    grids: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)

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


def quantize(
    model: torch.nn.Module,
    config: QuantConfig,
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    calibration: torch.Tensor | None = None,
    device: str | torch.device | None = None,
) -> QuantReport:
    """Quantize the model's weights in place with the configured method.

    `device` (GPTQ only; not part of the config, so job keys do not depend on it): where each
    transformer block is quantized while the rest of the model stays where it is.
    """
    if config.method == "rtn":
        from ptq_eval.quant.rtn import quantize_rtn

        return quantize_rtn(model, config, exclude)
    if config.method == "gptq":
        from ptq_eval.quant.gptq import quantize_gptq

        return quantize_gptq(model, config, exclude, calibration, device=device)
    raise ValueError(f"unknown quantization method {config.method!r}; accepted: {', '.join(METHODS)}")
