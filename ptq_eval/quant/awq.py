"""AWQ (Lin et al., MLSys 2024): per-input-channel scales from the activations, then a weight-clipping search.

Block by block (`quant/blocks.py`, each block's inputs from the blocks before it, quantized; with `sequential:
none`, from one pass over the full-precision model, as AutoAWQ and llm-compressor), for each set of matrices
reading one input (q/k/v, gate/up; any other matrix alone), with x̄ each input channel's mean |x|
over the calibration tokens:
1. scales s = x̄^α (`duo_scaling`, the default of AutoAWQ and llm-compressor: x̄^α / (w̄^(1−α) + 1e-4), w̄ each
   column's mean |w| relative to its group's largest), at least 1e-4 and divided by √(max s · min s), for α in
   0, 1/(grid − 1), …, 1, and the unscaled weights (s = 1, RTN); the candidate whose rounded weights move the
   output of the module holding the set (self_attn for q/k/v, the MLP for gate/up; a matrix alone: its own
   output) least on the calibration tokens is kept (the first of equals), as llm-awq and llm-compressor score
   them (`quant/awq_objective.py`); `objective: outputs` scores by the set's own output error Σ ‖(Ŵ − W)X‖²
   instead, read from the Hessian (no forward pass; it lost more in 10 of the 12 demo-Llama rows of
   `reports/bench/awq.md`, by up to 0.013 nats/token);
2. clipping (`clip`): for every row and group of the scaled weight W·diag(s), the largest |w| shrunk by
   1 − i/clip_grid, i < max_shrink · clip_grid; the shrink whose group gives the least error of its share of the
   output is kept.
The simulated weight is Q(clip(W·diag(s)))·diag(s)⁻¹: what a deployment computes once diag(s)⁻¹ is folded into
the op before (a norm's weight, or the previous linear's rows), equal in exact arithmetic. Which matrices have
such an op is found by testing the model (`quant/folding.py`; e.g. Llama: q/k/v and gate/up into their norms,
down_proj into up_proj, o_proj nowhere under grouped-query attention). `unfoldable: skip` (the default, as
AutoAWQ and llm-compressor) rounds the others without scales (clipping still searched); `unfoldable: scale`
scales them too, as a deployment could only with an explicit multiply before the matrix.

The clipping search reads its error from the Hessian (‖ΔW·X‖² = tr(ΔW·H·ΔWᵀ) up to a factor). With `rotation`,
everything happens in the rotated basis (W·Rᵀ, inputs R·x) and the weight comes back as Ŵ_R·R. An expert the
router sent no calibration token is rounded to nearest, as under GPTQ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field

from ptq_eval.errors import UserError
from ptq_eval.quant.awq_objective import ModuleObjective, ParentCalls
from ptq_eval.quant.base import LayerReport, QuantConfig, QuantReport, WeightMatrix, register
from ptq_eval.quant.blocks import calibrate
from ptq_eval.quant.folding import fold_targets
from ptq_eval.quant.formats import number_format
from ptq_eval.quant.grid import PER_CHANNEL, PER_TENSOR
from ptq_eval.quant.rotation import Rotation, rotation_for
from ptq_eval.quant.rtn import onto_grid, relative_error, rtn_result
from ptq_eval.quant.shared_options import SHARED_OPTIONS, SharedOptions
from ptq_eval.quant.statistics import NO_INPUT, Hessian, check_inputs_reached, equal_input_sets, output_error

SMALLEST_SCALE = 1e-4


class AWQOptions(SharedOptions):
    """AWQ's options and their defaults: how many α in [0, 1], duo scaling (on, as AutoAWQ and llm-compressor),
    where the inputs come from (`sequential`: block, each block's from the quantized blocks before it, as GPTQ;
    none, one pass over the full-precision model, as AutoAWQ and llm-compressor), what scores a candidate
    (`objective`: module, the output of the module holding the set, as llm-awq and llm-compressor; outputs, the
    set's own outputs from the Hessian, no forward pass), what becomes of matrices whose
    scales fold nowhere, the clipping search of llm-awq and AutoAWQ (on; llm-compressor has none) and its grid,
    and the rotation every method shares."""

    grid: int = Field(default=20, ge=2)
    duo_scaling: bool = True
    sequential: Literal["block", "none"] = "block"
    objective: Literal["module", "outputs"] = "module"
    unfoldable: Literal["skip", "scale"] = "skip"
    clip: bool = True
    clip_grid: int = Field(default=20, ge=1)
    max_shrink: float = Field(default=0.5, ge=0, lt=1)


class InputMagnitudes(Hessian):
    """The Hessian of a matrix's inputs and each input channel's mean |x| (float64), of the rotated inputs R·x
    when a rotation is given."""

    def __init__(self, columns: int, rotation: Rotation | None = None):
        super().__init__(columns)
        self.rotation = rotation
        self.magnitude_sum: torch.Tensor | None = None

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.reshape(-1, inputs.shape[-1])
        if self.rotation is not None:
            x = self.rotation.rotate(x).float()
        magnitudes = x.abs().sum(dim=0, dtype=torch.float64)
        self.magnitude_sum = magnitudes if self.magnitude_sum is None else self.magnitude_sum + magnitudes
        super().add(x)

    @property
    def magnitude(self) -> torch.Tensor:
        """Each input channel's mean |x| (float32)."""
        return (self.magnitude_sum / max(1, self.samples)).float()


@dataclass(frozen=True)
class Magnitudes:
    """Builds each matrix's InputMagnitudes under the config's rotation (equal for equal configs), and tells the
    module objective's recorder (if any) when a statistics pass starts and ends."""

    config: QuantConfig
    parents: ParentCalls | None = field(default=None, compare=False, hash=False)

    def __call__(self, columns: int) -> InputMagnitudes:
        return InputMagnitudes(columns, rotation_for(self.config, columns))

    def pass_started(self, weights: list[WeightMatrix]) -> None:
        if self.parents is not None:
            self.parents.pass_started(weights)

    def pass_ended(self) -> None:
        if self.parents is not None:
            self.parents.pass_ended()


def _spans(columns: int, config: QuantConfig) -> list[slice]:
    """The column spans that share a scale in a row, as `quantize_tensor` groups them."""
    if config.group_size in (PER_CHANNEL, PER_TENSOR):
        return [slice(0, columns)]
    return [slice(start, min(start + config.group_size, columns)) for start in range(0, columns, config.group_size)]


def _column_magnitude(weights: list[torch.Tensor], config: QuantConfig) -> torch.Tensor:
    """Each input column's mean |w| over the set's rows, each |w| relative to its group's largest (duo scaling)."""
    rows = torch.cat(weights).abs()
    relative = torch.cat([rows[:, span] / (rows[:, span].amax(dim=1, keepdim=True) + 1e-6)
                          for span in _spans(rows.shape[1], config)], dim=1)  # fmt: skip
    return relative.mean(dim=0)


def _scales(magnitude: torch.Tensor, column: torch.Tensor | None, alpha: float) -> torch.Tensor:
    scales = magnitude.pow(alpha)
    if column is not None:
        scales = scales / (column.pow(1 - alpha) + SMALLEST_SCALE)
    scales = scales.clamp_min(SMALLEST_SCALE)
    return scales / (scales.max() * scales.min()).sqrt()


def _error(delta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """tr(Δ·H·Δᵀ): the output error's share of the inputs H describes (up to a constant)."""
    return ((delta @ hessian) * delta).sum()


@torch.no_grad()
def search_scales(
    weights: list[torch.Tensor],
    statistic: InputMagnitudes,
    config: QuantConfig,
    error_of: Callable[[list[torch.Tensor]], float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float | None]:
    """The set's per-input-channel scales and the α that chose them (None: the unscaled weights won), for float32
    weights ([out, in] each) rounded as the model's `dtype` holds them; a candidate's error is the set's output
    error from the Hessian, or `error_of` its rounded weights."""
    hessian, magnitude = statistic.matrix.float(), statistic.magnitude.to(statistic.matrix.device)
    column = _column_magnitude(weights, config) if config.duo_scaling else None
    candidates = [(None, torch.ones_like(magnitude))]
    candidates += [(step / (config.grid - 1), None) for step in range(config.grid)]
    best = (None, None, None)
    for alpha, scales in candidates:
        scales = _scales(magnitude, column, alpha) if scales is None else scales
        rounded = [onto_grid((w * scales).to(dtype), config).float() / scales for w in weights]
        if error_of is None:
            error = sum(_error(candidate - w, hessian) for candidate, w in zip(rounded, weights, strict=True))
        else:
            error = error_of(rounded)
        if best[0] is None or error < best[0]:
            best = (error, alpha, scales)
    return best[2], best[1]


def _clamped(scaled: torch.Tensor, ratios: torch.Tensor, spans: list[slice], per_tensor: bool) -> torch.Tensor:
    """Each row's groups clamped to ± ratio × their largest |w| (ratios [rows, groups]); per tensor, to ± ratio ×
    the matrix's largest |w|, as its one scale is fitted."""
    parts = []
    for index, span in enumerate(spans):
        largest = scaled.abs().amax() if per_tensor else scaled[:, span].abs().amax(dim=1, keepdim=True)
        limit = largest * ratios[:, index : index + 1]
        parts.append(torch.maximum(torch.minimum(scaled[:, span], limit), -limit))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def search_clip(
    scaled: torch.Tensor, hessian: torch.Tensor, config: QuantConfig, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per row and group (one for the whole matrix per tensor), the shrink of the largest |w| whose rounding (in
    the model's `dtype`) loses the least of that group's output; `hessian` is that of the scaled weight's
    inputs."""
    spans = _spans(scaled.shape[1], config)
    rows = scaled.shape[0]
    best_ratio = torch.ones(rows, len(spans), device=scaled.device)
    best_error = torch.full((rows, len(spans)), float("inf"), device=scaled.device)
    per_tensor = config.group_size == PER_TENSOR
    for step in range(math.floor(config.max_shrink * config.clip_grid + 1e-9)):
        ratio = 1 - step / config.clip_grid
        clamped = _clamped(scaled, torch.full_like(best_ratio, ratio), spans, per_tensor)
        delta = onto_grid(clamped.to(dtype), config).float() - scaled
        error = torch.stack([((delta[:, span] @ hessian[span, span]) * delta[:, span]).sum(dim=1)
                             for span in spans], dim=1)  # fmt: skip
        if per_tensor:
            error = error.sum().expand_as(error)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return _clamped(scaled, best_ratio, spans, per_tensor)


def _searched(config: QuantConfig, fold: str | None) -> bool:
    """Whether a set's scales are searched: where they fold, or everywhere under `unfoldable: scale`."""
    return fold is not None or config.unfoldable == "scale"


@torch.no_grad()
def _quantize_set(
    members: list[WeightMatrix],
    statistic: InputMagnitudes,
    config: QuantConfig,
    fold: str | None,
    objective: ModuleObjective | None = None,
) -> list[LayerReport]:
    """AWQ for matrices reading one input: one α and one set of scales for all (none where the scales fold
    nowhere and `unfoldable` is skip; scored by `objective` where given), clipping per matrix."""
    rotation = statistic.rotation
    stored = [weight.read() for weight in members]
    weights = [(w if rotation is None else rotation.rotate(w)).to(w.dtype).to(torch.float32, copy=True) for w in stored]
    hessian = statistic.matrix.float()
    if not _searched(config, fold):
        scales, alpha = torch.ones(hessian.shape[0], device=hessian.device), None
    else:
        error_of = None if objective is None else objective.error
        scales, alpha = search_scales(weights, statistic, config, error_of, stored[0].dtype)
    scaled_hessian = hessian / scales[:, None] / scales[None, :]
    layers = []
    for weight, original, w in zip(members, stored, weights, strict=True):
        scaled = (w * scales).to(original.dtype).float()
        if config.clip:
            scaled = search_clip(scaled, scaled_hessian, config, original.dtype)
        quantized = onto_grid(scaled.to(original.dtype), config).float() / scales
        rtn = onto_grid(w.to(original.dtype), config).float()
        restored = quantized if rotation is None else rotation.restore(quantized).float()
        weight.write(restored)
        layers.append(
            LayerReport(
                weight.name,
                weight.shape,
                relative_error(w, quantized),
                output_error(w, quantized, hessian),
                output_error(w, rtn, hessian),
                statistic.samples,
                alpha=alpha,
                folds_into=fold,
            )
        )
    return layers


@register("awq", options=AWQOptions, needs_calibration=True, later_options=SHARED_OPTIONS)
def quantize_awq(
    model: torch.nn.Module,
    weights: list[WeightMatrix],
    config: QuantConfig,
    calibration: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    cache: dict | None = None,
    **_unused,
) -> QuantReport:
    """Quantize these matrices of the model in place with AWQ, block by block (see `quant/blocks.py`)."""
    if calibration is None or len(calibration) == 0:
        raise UserError("AWQ needs calibration data (the study's calibration: section)")
    report = QuantReport(config)
    folds = fold_targets(model, weights, calibration)
    parents = ParentCalls(model, weights)

    def process(group: list[WeightMatrix], statistics: dict[str, InputMagnitudes]) -> None:
        check_inputs_reached(group, statistics, "AWQ")
        quantize_group(group, statistics)
        parents.forget()

    def quantize_group(group: list[WeightMatrix], statistics: dict[str, InputMagnitudes]) -> None:
        for members in equal_input_sets(group, statistics):
            statistic = statistics[members[0].name]
            if statistic.samples == 0 or number_format(config.format).kept_whole(members[0].shape[1]):
                for weight in members:
                    quantized, layer = rtn_result(weight, config, fallback=NO_INPUT)
                    weight.write(quantized)
                    report.layers.append(layer)
                continue
            parent = parents.parent_of(members)
            objective = None
            if parent is not None and _searched(config, folds[members[0].name]):
                calls = parents.calls[parent]
                objective = ModuleObjective(parents.modules[parent], calls, members, statistic.rotation)
            report.layers.extend(_quantize_set(members, statistic, config, folds[members[0].name], objective))

    module = config.objective == "module"
    if module and config.sequential == "none":
        cache = None  # statistics kept from another call would skip the pass that records the modules' calls
    with parents.hooked() if module else nullcontext():
        calibrate(model, weights, calibration, process, config.sequential, batch_size, device, cache,
                  Magnitudes(config, parents if module else None))  # fmt: skip
    position = {weight.name: index for index, weight in enumerate(weights)}
    report.layers.sort(key=lambda layer: position[layer.name])
    return report
