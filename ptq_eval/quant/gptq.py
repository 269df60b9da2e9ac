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

import hashlib
import itertools
from collections.abc import Sequence

import torch

from ptq_eval.errors import UserError
from ptq_eval.quant.base import LayerReport, QuantConfig, QuantError, QuantReport, WeightMatrix, register
from ptq_eval.quant.blocks import calibrate
from ptq_eval.quant.gptq_solve import gptq_solve, solve_key
from ptq_eval.quant.grid import quantize_tensor
from ptq_eval.quant.hessians import Hessian
from ptq_eval.quant.rtn import relative_error

NO_INPUT = "rtn: the router sent it no calibration token"
Grids = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Solved = tuple[torch.Tensor, Grids | None, LayerReport]  # de-quantized weight, grids, layer report


def output_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """‖WX − ŴX‖² / ‖WX‖², from the Hessian (XXᵀ up to a factor that cancels)."""
    delta = (weight.double() - quantized.double()) @ hessian.double()
    numerator = (delta * (weight.double() - quantized.double())).sum().item()
    denominator = ((weight.double() @ hessian.double()) * weight.double()).sum().item()
    return numerator / denominator if denominator else 0.0


def _rtn_fallback(weight: WeightMatrix, config: QuantConfig) -> Solved:
    stored = weight.read()
    quantized = quantize_tensor(stored, config.bits, config.group_size, config.symmetric)
    return quantized, None, LayerReport(weight.name, weight.shape, relative_error(stored, quantized), fallback=NO_INPUT)


def equal_input_sets(group: list[WeightMatrix], hessians: dict[str, Hessian]) -> list[list[WeightMatrix]]:
    """The group's matrices in sets with equal Hessians (they read the same input), in the group's order."""
    sets: list[list[WeightMatrix]] = []
    for weight in group:
        mine = hessians[weight.name]
        for members in sets:
            theirs = hessians[members[0].name]
            if mine.samples and theirs.samples == mine.samples and theirs.matrix.shape == mine.matrix.shape:
                if torch.equal(theirs.matrix, mine.matrix):
                    members.append(weight)
                    break
        else:
            sets.append([weight])
    return sets


@torch.no_grad()
def _solve_set(
    members: list[WeightMatrix], hessian: Hessian, configs: list[QuantConfig], home
) -> dict[QuantConfig, dict[str, Solved]]:
    """GPTQ for matrices sharing one Hessian, for every config (one column loop per set of solve options)."""
    solved: dict[QuantConfig, dict[str, Solved]] = {config: {} for config in configs}
    if hessian.samples == 0:
        for config, weight in itertools.product(configs, members):
            solved[config][weight.name] = _rtn_fallback(weight, config)
        return solved
    stored = {weight.name: weight.read() for weight in members}
    for _, shared in itertools.groupby(sorted(configs, key=lambda c: str(solve_key(c))), key=solve_key):
        pairs = list(itertools.product(list(shared), members))
        results = gptq_solve([(stored[weight.name], config) for config, weight in pairs], hessian.matrix)
        for (config, weight), result in zip(pairs, results, strict=True):
            original = stored[weight.name].float()
            rtn = quantize_tensor(stored[weight.name], config.bits, config.group_size, config.symmetric).float()
            layer = LayerReport(
                weight.name,
                weight.shape,
                relative_error(original, result.weight),
                output_error(original, result.weight, hessian.matrix),
                output_error(original, rtn, hessian.matrix),
                hessian.samples,
            )
            grids = (result.scales.to(home), result.zeros.to(home), result.group_index)
            solved[config][weight.name] = (result.weight, grids, layer)
    return solved


def _apply(weights: list[WeightMatrix], solved: dict[str, Solved], report: QuantReport) -> None:
    """Write the solved weights into the model and their grids and layer reports into the report, in order."""
    for weight in weights:
        quantized, grids, layer = solved[weight.name]
        weight.write(quantized)
        if grids is not None:
            report.grids[weight.name] = grids
        report.layers.append(layer)


def _kept(solved: dict[str, Solved], weights: list[WeightMatrix]) -> dict[str, Solved]:
    """Results for a later call: weights on the CPU in the model's dtype (exact: the grid's points are in it)."""
    dtypes = {weight.name: weight.read().dtype for weight in weights}
    return {name: (w.to("cpu", dtypes[name]), grids, layer) for name, (w, grids, layer) in solved.items()}


def _calibration_digest(calibration: torch.Tensor) -> str:
    return hashlib.sha256(str(tuple(calibration.shape)).encode() + calibration.cpu().numpy().tobytes()).hexdigest()


def check_inputs_reached(group: list[WeightMatrix], hessians: dict[str, Hessian]) -> None:
    """Only an expert may see no calibration input, and only when others of its tensor saw some (the router
    chose them): anything else means its inputs were not captured, which must not pass as a rounding."""
    reached = {w.expert_family for w in group if w.expert_family is not None and hessians[w.name].samples}
    for weight in group:
        if hessians[weight.name].samples == 0 and weight.expert_family not in reached:
            raise QuantError(
                f"GPTQ saw no calibration input reach {weight.name} ({type(weight.module).__name__}); "
                "ptq-eval cannot see how the model uses it: exclude it or use method rtn"
            )


@register("gptq")
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
    key = ("gptq solved", tuple(weight.name for weight in weights), _calibration_digest(calibration))
    kept = cache.get(key, {}) if cache is not None else {}
    if config in kept:
        _apply(weights, kept.pop(config), report)
        return report
    configs = [config]
    if config.sequential == "none" and cache is not None:
        configs += [c for c in dict.fromkeys(share_with) if c.method == "gptq" and c.sequential == "none"]
        configs = list(dict.fromkeys(c for c in configs if c == config or c not in kept))

    def process(group: list[WeightMatrix], hessians: dict[str, Hessian]) -> None:
        check_inputs_reached(group, hessians)
        solved: dict[QuantConfig, dict[str, Solved]] = {c: {} for c in configs}
        for members in equal_input_sets(group, hessians):
            for c, results in _solve_set(members, hessians[members[0].name], configs, home).items():
                solved[c].update(results)
        _apply(group, solved.pop(config), report)
        for other, results in solved.items():
            kept.setdefault(other, {}).update(_kept(results, group))

    calibrate(model, weights, calibration, process, config.sequential, batch_size, device, cache)
    if kept and cache is not None:
        cache[key] = kept
    return report
