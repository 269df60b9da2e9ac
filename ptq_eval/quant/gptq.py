"""GPTQ (Frantar et al. 2022) over a model: which matrices are solved together, from which Hessians.

The solve itself is `quant/gptq_solve.py`. Over a model (`quant/blocks.py`): block by block, each matrix
quantized from the inputs it sees once the blocks before it (with `sequential="layer"`, also the layers before
it in its block) are quantized. A matrix no calibration input reaches (an expert the router never chose) is
rounded to nearest instead, and its report says so. With `device`, the model stays where it is (e.g. CPU) and
only the block being quantized, the activations and its Hessians live on `device` (e.g. CUDA).

Solved together: the matrices whose Hessians are equal (they read the same input: q/k/v, gate/up) share one
column loop; and under `sequential="none"`, where every config of a checkpoint has the same Hessians, so do the
configs in `share_with` (with the same solve options): one solve serves them all, the weights of the configs not
asked for now kept (on the CPU, in the model's dtype) in the caller's per-checkpoint `cache` until they are.
Each config's weights are bit-identical to its solve alone on the CPU (tests).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from ptq_eval.errors import UserError
from ptq_eval.quant.base import LayerReport, QuantConfig, QuantReport, WeightMatrix, register
from ptq_eval.quant.blocks import calibrate, fingerprint
from ptq_eval.quant.formats import FormatError, number_format
from ptq_eval.quant.gptq_columns import loop_warnings
from ptq_eval.quant.gptq_solve import gptq_solve, solve_key
from ptq_eval.quant.rotation import rotation_for
from ptq_eval.quant.rtn import relative_error, round_to_nearest, rtn_result
from ptq_eval.quant.shared_options import SHARED_OPTIONS, SharedOptions
from ptq_eval.quant.statistics import NO_INPUT, Hessian, check_inputs_reached, equal_input_sets, output_error

SEQUENTIAL = ("block", "layer", "none")


class GPTQOptions(SharedOptions):
    """GPTQ's options and their defaults (the reference GPTQ's): act-order (columns by descending Hessian
    diagonal), static groups (grids fitted before the loop), dampening (a fraction of the mean diagonal), the
    lazy-update block, and what each matrix's inputs come from (`quant/blocks.py`); the rotation every method
    shares (solved in the rotated basis, against R·H·Rᵀ). Strict: `act_order: "yes"` is an error."""

    act_order: bool = False
    static_groups: bool = False
    damp: float = Field(default=0.01, gt=0, lt=1)
    block_size: int = Field(default=128, gt=0)
    sequential: Literal[SEQUENTIAL] = "block"


def check_groups_fit_the_format(config: QuantConfig) -> None:
    """A format with fixed blocks of consecutive columns cannot hold act-order's groups in Hessian order (checked
    when the config is made, before any calibration)."""
    fmt = number_format(config.format)
    if fmt.stored_minimum:
        raise FormatError(
            f"format {config.format} stores each block as q·d + m (a float16 minimum), a grid GPTQ's column loop "
            "does not hold; use method rtn or awq for it, or a format with a zero point (q4_0, q5_0, q8_0, int)"
        )
    if fmt.group is not None and config.act_order and not config.static_groups:
        raise FormatError(
            f"format {config.format} stores blocks of {fmt.group} consecutive columns; act_order without "
            "static_groups groups columns in Hessian order, which it cannot hold: add static_groups: true"
        )


STACK_ELEMENTS = 2**28  # rows x columns of one stacked solve (1 GiB in float32); more parts wait for another loop
Grids = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Solved = tuple[torch.Tensor, Grids | None, LayerReport]  # de-quantized weight, grids, layer report


def _rtn_fallback(weight: WeightMatrix, config: QuantConfig) -> Solved:
    quantized, layer = rtn_result(weight, config, fallback=NO_INPUT)
    return quantized, None, layer


def _chunks(
    pairs: list[tuple[QuantConfig, WeightMatrix]], columns: int
) -> list[list[tuple[QuantConfig, WeightMatrix]]]:
    """The pairs in runs whose stacked rows fit STACK_ELEMENTS (at least one pair each), in order."""
    chunks: list[list[tuple[QuantConfig, WeightMatrix]]] = [[]]
    rows = 0
    for pair in pairs:
        if chunks[-1] and (rows + pair[1].shape[0]) * columns > STACK_ELEMENTS:
            chunks.append([])
            rows = 0
        chunks[-1].append(pair)
        rows += pair[1].shape[0]
    return chunks


@torch.no_grad()
def _solve_set(
    members: list[WeightMatrix], hessian: Hessian, configs: list[QuantConfig], current: QuantConfig, home
) -> dict[QuantConfig, dict[str, Solved]]:
    """GPTQ for matrices sharing one Hessian, for every config (one column loop per set of solve options and
    stack budget). The other configs' weights move to the CPU, in the model's dtype (exact: the grid's points are
    in it), as each loop ends."""
    solved: dict[QuantConfig, dict[str, Solved]] = {config: {} for config in configs}
    stored = {weight.name: weight.read() for weight in members}

    def keep(config: QuantConfig, weight: WeightMatrix, result: Solved) -> None:
        quantized, grids, layer = result
        if config != current:
            quantized = quantized.to("cpu", stored[weight.name].dtype)
            grids = None if grids is None else tuple(t.to("cpu") for t in grids)
        solved[config][weight.name] = (quantized, grids, layer)

    columns = members[0].shape[1]
    whole = [config for config in configs if number_format(config.format).kept_whole(columns)]
    for config, weight in itertools.product(configs if hessian.samples == 0 else whole, members):
        keep(config, weight, _rtn_fallback(weight, config))  # no inputs seen, or a width the format keeps whole
    solving = [] if hessian.samples == 0 else [config for config in configs if config not in whole]
    for _, shared in itertools.groupby(sorted(solving, key=lambda c: str(_loop_key(c))), key=_loop_key):
        shared = list(shared)
        rotation = rotation_for(shared[0], hessian.matrix.shape[0])
        inputs, hessian_seen = stored, hessian.matrix
        if rotation is not None:  # solved in the rotated basis: W·Rᵀ against R·H·Rᵀ
            inputs = {name: rotation.rotate(weight).to(weight.dtype) for name, weight in stored.items()}
            hessian_seen = rotation.conjugate(hessian.matrix).float()
        for pairs in _chunks(list(itertools.product(shared, members)), hessian.matrix.shape[0]):
            results = gptq_solve([(inputs[weight.name], config) for config, weight in pairs], hessian_seen)
            for (config, weight), result in zip(pairs, results, strict=True):
                original = stored[weight.name].float()
                quantized, grids = result.weight, (result.scales.to(home), result.zeros.to(home), result.group_index)
                if rotation is not None:  # back in the model's basis; the grids hold the rotated weights
                    quantized, grids = rotation.restore(quantized).float(), None
                layer = LayerReport(
                    weight.name,
                    weight.shape,
                    relative_error(original, quantized),
                    output_error(original, quantized, hessian.matrix),
                    output_error(original, round_to_nearest(stored[weight.name], config).float(), hessian.matrix),
                    hessian.samples,
                )
                keep(config, weight, (quantized, grids, layer))
    return solved


def _loop_key(config: QuantConfig) -> tuple:
    """Configs with equal keys share a column loop: the same solve options, format and rotation."""
    return solve_key(config), config.rotation, config.rotation_seed


def _apply(weights: list[WeightMatrix], solved: dict[str, Solved], report: QuantReport) -> None:
    """Write the solved weights into the model and their grids and layer reports into the report, in order."""
    for weight in weights:
        quantized, grids, layer = solved[weight.name]
        weight.write(quantized)
        if grids is not None:
            report.grids[weight.name] = grids
        report.layers.append(layer)


@register(
    "gptq",
    options=GPTQOptions,
    needs_calibration=True,
    later_options=("sequential", *SHARED_OPTIONS),
    check=check_groups_fit_the_format,
)
def quantize_gptq(
    model: torch.nn.Module,
    weights: list[WeightMatrix],
    config: QuantConfig,
    calibration: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    cache: dict | None = None,
    share_with: Sequence[QuantConfig] = (),
) -> QuantReport:
    """Quantize these matrices of the model in place with GPTQ, block by block (see `quant/blocks.py`); under
    `sequential="none"`, solve the `share_with` configs in the same loops and keep their weights in `cache`."""
    if calibration is None or len(calibration) == 0:
        raise UserError("GPTQ needs calibration data (the study's calibration: section)")
    report = QuantReport(config)
    home = next(model.parameters()).device
    solve_device = home if device is None else torch.device(device)
    names = tuple((weight.name, weight.read().dtype) for weight in weights)
    key = ("gptq solved", names, fingerprint([calibration]), str(device), batch_size)
    kept = cache.get(key, {}) if cache is not None else {}
    if config in kept:
        report.solved_together, results = kept.pop(config)
        _apply(weights, results, report)
        report.grids = {name: grids if grids is None else tuple(t.to(home) for t in grids)
                        for name, grids in report.grids.items()}  # fmt: skip
        report.warnings = loop_warnings(solve_device, number_format(config.format).elements)
        return report
    configs = [config]
    if config.sequential == "none" and cache is not None:
        configs += [c for c in dict.fromkeys(share_with) if c.method == "gptq" and c.sequential == "none"]
        configs = list(dict.fromkeys(c for c in configs if c == config or c not in kept))

    fresh: dict[QuantConfig, tuple[int, dict[str, Solved]]] = {}  # kept only once every matrix is solved

    def process(group: list[WeightMatrix], hessians: dict[str, Hessian]) -> None:
        check_inputs_reached(group, hessians, "GPTQ")
        for members in equal_input_sets(group, hessians):
            for other, results in _solve_set(members, hessians[members[0].name], configs, config, home).items():
                if other == config:
                    _apply(members, results, report)  # written at once: the next set's loop needs the memory
                else:
                    fresh.setdefault(other, (len(configs), {}))[1].update(results)

    report.solved_together = len(configs)
    calibrate(model, weights, calibration, process, config.sequential, batch_size, device, cache)
    report.warnings = loop_warnings(solve_device, number_format(config.format).elements)
    position = {weight.name: index for index, weight in enumerate(weights)}  # the report in the weights' order
    report.layers.sort(key=lambda layer: position[layer.name])
    report.grids = dict(sorted(report.grids.items(), key=lambda item: position[item[0]]))
    if fresh and cache is not None:
        cache[key] = kept | fresh
    return report
