"""Where a per-input-channel scale of a matrix's input can be folded away in a deployment, as AWQ's scales are:
into the norm whose output the matrix reads (its weight, and bias, times 1/s), or into the rows of a linear whose
output reaches the matrix channel by channel (v_proj for o_proj where no key/value head is shared, up_proj for
down_proj in a gated MLP).

Found by testing the model rather than by its class name: a producer P (a norm module, or a Linear or Conv1D of
the same block) folds the scales of a matrix M when multiplying P's output channels by a seeded s of powers of
two (its weight's rows and its bias; exact in every float dtype) multiplies M's input by s on a short window of
calibration tokens. Norms are tried where M reads the norm's output tensor itself; linears of M's block
whose output width is M's input width otherwise. Experts (fused or in a ModuleList) are never folded: their
scales differ per expert, and one norm feeds them all (and the router).
"""

from __future__ import annotations

import torch
from transformers.pytorch_utils import Conv1D

from ptq_eval.quant.base import WeightMatrix
from ptq_eval.quant.blocks import transformer_blocks
from ptq_eval.quant.statistics import watch_inputs

FOLD_TOKENS = 64  # tokens of the first calibration window that the tests run on
TOLERANCE = 1e-4  # relative to the input's largest magnitude


class _Captured(Exception):
    """Ends a forward pass once the input it was run for is recorded."""


def _is_norm(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return "norm" in type(module).__name__.lower() and isinstance(weight, torch.Tensor) and weight.ndim == 1


def _scaled_tensors(module: torch.nn.Module) -> list[tuple[torch.Tensor, int]]:
    """The tensors whose output channels a producer's scale multiplies, and along which axis."""
    found = [(module.weight, 1 if isinstance(module, Conv1D) else 0)]  # Conv1D stores [in, out]
    bias = getattr(module, "bias", None)
    return found + ([(bias, 0)] if isinstance(bias, torch.Tensor) else [])


@torch.no_grad()
def _input_of(model: torch.nn.Module, weight: WeightMatrix, tokens: torch.Tensor) -> torch.Tensor:
    """The rows the matrix multiplies on these tokens (the forward pass stops there)."""
    seen: list[torch.Tensor] = []

    def sink(_, rows: torch.Tensor) -> None:
        seen.append(rows.detach().clone())
        raise _Captured

    try:
        with watch_inputs([weight], sink):
            model(input_ids=tokens, use_cache=False)
    except _Captured:
        pass
    return seen[0]


@torch.no_grad()
def _folds(model, producer: torch.nn.Module, weight: WeightMatrix, tokens, reference: torch.Tensor) -> bool:
    """Whether scaling the producer's output channels by a seeded s scales the matrix's input by exactly s."""
    tensors = _scaled_tensors(producer)
    width = tensors[0][0].shape[tensors[0][1]]
    if width != reference.shape[-1]:
        return False
    generator = torch.Generator().manual_seed(width)
    powers = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)  # exact scalings in any float dtype
    scales = powers[torch.randint(0, len(powers), (width,), generator=generator)].to(reference.device)
    saved = [tensor.detach().clone() for tensor, _ in tensors]
    try:
        for tensor, axis in tensors:
            shape = [-1 if dim == axis else 1 for dim in range(tensor.ndim)]
            tensor.mul_(scales.to(tensor.dtype).reshape(shape))
        found = _input_of(model, weight, tokens).double()
    finally:
        for (tensor, _), original in zip(tensors, saved, strict=True):
            tensor.copy_(original)
    expected = reference.double() * scales
    scale = reference.abs().max().double().clamp_min(1e-30)
    return found.shape == expected.shape and bool(((found - expected).abs().max() / scale) <= TOLERANCE)


@torch.no_grad()
def fold_targets(model: torch.nn.Module, weights: list[WeightMatrix], tokens: torch.Tensor) -> dict[str, str | None]:
    """For each matrix, the module its input scales would fold into (None: nowhere; the scale stays explicit)."""
    tokens = tokens[:1, :FOLD_TOKENS].to(next(model.parameters()).device)
    norm_outputs: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # outputs held so their ids stay theirs
    modules = dict(model.named_modules())
    names = {id(module): name for name, module in modules.items()}
    norms = [module for module in model.modules() if _is_norm(module)]

    def note(module, args, output) -> None:
        if isinstance(output, torch.Tensor):
            keep.append(output)
            norm_outputs[id(output)] = names[id(module)]

    inputs: dict[str, torch.Tensor] = {}

    def first(weight: WeightMatrix, rows: torch.Tensor) -> None:
        inputs.setdefault(weight.name, rows)

    handles = [module.register_forward_hook(note) for module in norms]
    try:
        with watch_inputs([weight for weight in weights if weight.kind != "expert"], first):
            model(input_ids=tokens, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    blocks = transformer_blocks(model, weights)
    block_of = {id(m): index for index, block in enumerate(blocks or []) for m in block.modules()}
    targets: dict[str, str | None] = {}
    by_input: dict[int, str | None] = {}  # matrices reading one input share its answer
    for weight in weights:
        targets[weight.name] = None
        rows = inputs.get(weight.name)
        if rows is None or weight.expert_family is not None:
            continue
        if id(rows) in by_input:
            targets[weight.name] = by_input[id(rows)]
            continue
        candidates = [norm_outputs[id(rows)]] if id(rows) in norm_outputs else []
        if not candidates and id(weight.module) in block_of:
            candidates = [other.name for other in weights if other.kind != "expert" and other is not weight
                          and block_of.get(id(other.module)) == block_of[id(weight.module)]
                          and other.shape[0] == weight.shape[1]]  # fmt: skip
        reference = rows.detach().clone()
        for name in candidates:
            if _folds(model, modules[name], weight, tokens, reference):
                targets[weight.name] = name
                break
        by_input[id(rows)] = targets[weight.name]
    return targets
