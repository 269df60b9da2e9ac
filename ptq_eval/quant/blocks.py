"""Calibration block by block: each matrix's calibration statistic (the one its method asks for: GPTQ's Hessian,
AWQ's Hessian and channel magnitudes; `quant/statistics.py`) from the inputs it sees once the blocks before it
(and, with `sequential="layer"`, the layers before it in its own block) are quantized.

1. Matrices outside the block stack that run before the first block (e.g. OPT's `project_in`) are
   processed first, from one forward pass stopped at the first block.
2. One pass records what *every* block is called with (attention masks and rotary tables differ by layer
   type: sliding-window vs full attention). Only block 0 runs; each later block echoes its input, so the
   pass costs one block, not the model.
3. Block by block: the block's matrices are processed from the propagated hidden states and the block's
   own arguments, then the block's outputs become the next block's inputs.
4. Matrices outside the stack that run after it (e.g. OPT's `project_out`) are processed from one
   forward pass of the quantized model.

`sequential="none"` instead takes every matrix's statistic from one pass over the full-precision model: not
the sequential GPTQ algorithm (no matrix sees the error of those quantized before it), but one pass serves
every GPTQ config of a checkpoint. A `cache` dict kept by the caller for one checkpoint and one calibration
set holds what is exact to re-use across configs: those full-precision statistics, and the inputs of every
block recorded in step 2 (unless a matrix before the stack was quantized, which changes them).

`process(weights, statistics)` does the work (a method quantizes; a test only records).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from ptq_eval.quant.base import QuantError, WeightMatrix
from ptq_eval.quant.statistics import Hessian, MakeStatistic, Statistic, eager_experts, statistics_of, watch_inputs

Process = Callable[[list[WeightMatrix], dict[str, Statistic]], None]
Call = tuple[list, dict]


class _Stop(Exception):
    """Raised to end a forward pass once what it was run for is recorded."""


def transformer_blocks(model: torch.nn.Module, weights: list[WeightMatrix]) -> torch.nn.ModuleList | None:
    """The model's stack of blocks: the longest outermost ModuleList holding a selected matrix (a ModuleList of
    experts inside a block is never taken for the stack), or None if there is none."""
    owners = {id(weight.module) for weight in weights}
    candidates = [
        module
        for module in model.modules()
        if isinstance(module, torch.nn.ModuleList) and any(id(m) in owners for m in module.modules())
    ]
    nested = {id(inner) for outer in candidates for inner in outer.modules() if inner is not outer}
    outermost = [module for module in candidates if id(module) not in nested]
    return max(outermost, key=len) if outermost else None


def _to(value, device: torch.device, moved: dict, copy: bool = False):
    """`value` with every tensor in it moved (or, with `copy`, copied) to `device`; a tensor shared by several
    calls is moved once."""
    if isinstance(value, torch.Tensor):
        if id(value) not in moved:
            moved[id(value)] = (value, value.to(device, copy=copy))
        return moved[id(value)][1]
    if isinstance(value, list | tuple):
        return type(value)(_to(item, device, moved, copy) for item in value)
    if isinstance(value, dict):
        return {key: _to(item, device, moved, copy) for key, item in value.items()}
    return value


def _hidden(output) -> torch.Tensor:
    """The hidden states a block returns (alone, first of a tuple, or first field of a ModelOutput)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def _run_block(block: torch.nn.Module, hidden: torch.Tensor, call: Call) -> torch.Tensor:
    args, kwargs = call
    return _hidden(block(hidden, *args[1:], **kwargs))


def _batches(calibration: torch.Tensor, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    return [calibration[start : start + batch_size].to(device) for start in range(0, len(calibration), batch_size)]


@torch.no_grad()
def _forward_until(model: torch.nn.Module, batches: list[torch.Tensor], stop_at: torch.nn.Module | None) -> None:
    """Run the model on every batch, stopping each pass where `stop_at` would start (None: the whole model)."""

    def stop(module, args, kwargs):
        raise _Stop

    handle = stop_at.register_forward_pre_hook(stop, with_kwargs=True) if stop_at is not None else None
    try:
        for batch in batches:
            try:
                model(input_ids=batch, use_cache=False)
            except _Stop:
                pass
    finally:
        if handle is not None:
            handle.remove()


@torch.no_grad()
def _block_calls(model: torch.nn.Module, blocks: torch.nn.ModuleList, batches: list[torch.Tensor]) -> list[list[Call]]:
    """calls[i][b]: the (args, kwargs) block i receives on batch b; args[0] is real for block 0 only.

    Block 0 runs; each later block returns its input in block 0's output form. That is exact only when the
    model hands each block's hidden states to the next unchanged, which is checked: a model whose loop
    transforms them between blocks is refused rather than calibrated on the wrong inputs.
    """
    calls: list[list[Call]] = [[] for _ in blocks]
    handed: list = [None, None]  # the hidden states the last block returned, and block 0's output form

    def recorder(index: int, forward):
        def record(*args, **kwargs):
            args = list(args)
            if not args:
                if "hidden_states" not in kwargs:
                    raise QuantError(f"{type(blocks[index]).__name__} gets no hidden states as its first argument "
                                     "or `hidden_states=`; block-by-block calibration cannot follow it")  # fmt: skip
                args = [kwargs.pop("hidden_states")]
            if index > 0 and args[0] is not handed[0]:
                raise QuantError(f"{type(model).__name__} changes the hidden states between blocks {index - 1} and "
                                 f"{index}; block-by-block calibration would use the wrong inputs")  # fmt: skip
            calls[index].append((args, kwargs))
            if index == len(blocks) - 1:
                raise _Stop
            if index == 0:
                output = forward(*args, **kwargs)
                handed[:] = [_hidden(output), output]
                return output
            form = handed[1]
            return args[0] if isinstance(form, torch.Tensor) else (args[0], *form[1:])

        return record

    own = [block.__dict__.get("forward") for block in blocks]  # a forward set on the instance (hooks, patches)
    try:
        for index, block in enumerate(blocks):
            block.forward = recorder(index, block.forward)
        _forward_until(model, batches, None)
    finally:
        for block, forward in zip(blocks, own, strict=True):
            if forward is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = forward
    return calls


def _sequential_groups(
    block, weights: list[WeightMatrix], hidden: torch.Tensor, call: Call
) -> list[list[WeightMatrix]]:
    """The block's matrices in the order the block runs them, grouped by shared input (q, k, v; gate, up)."""
    first: dict[str, torch.Tensor] = {}

    def note(weight: WeightMatrix, rows: torch.Tensor) -> None:
        first.setdefault(weight.name, rows)  # holding the rows keeps their id from being reused

    with watch_inputs(weights, note):
        _run_block(block, hidden, call)
    groups: dict[object, list[WeightMatrix]] = {}
    by_name = {weight.name: weight for weight in weights}
    for name, rows in first.items():  # experts group by tensor (each sees other rows); the rest by shared input
        groups.setdefault(by_name[name].expert_family or id(rows), []).append(by_name[name])
    for weight in weights:
        if weight.name not in first:  # no input in the first batch: with its experts, or last
            groups.setdefault(weight.expert_family or "unseen", []).append(weight)
    return list(groups.values())


@torch.no_grad()
def _process_block(
    block,
    weights: list[WeightMatrix],
    hidden: list,
    calls: list[Call],
    process: Process,
    sequential: str,
    statistic: MakeStatistic,
) -> list:
    groups = _sequential_groups(block, weights, hidden[0], calls[0]) if sequential == "layer" else [weights]
    for group in groups:
        with statistics_of(group, statistic) as found:
            for states, call in zip(hidden, calls, strict=True):
                _run_block(block, states, call)
        process(group, found)
    return [_run_block(block, states, call) for states, call in zip(hidden, calls, strict=True)]


@torch.no_grad()
def _process_outside(
    model, weights: list[WeightMatrix], batches, stop_at, process: Process, statistic: MakeStatistic
) -> list[WeightMatrix]:
    """Process the outside matrices that a forward pass (up to `stop_at`) reaches; returns the others."""
    if not weights:
        return []
    with statistics_of(weights, statistic) as found:
        _forward_until(model, batches, stop_at)
    reached = [weight for weight in weights if found[weight.name].samples]
    if stop_at is None:
        reached = weights  # the last pass: what no input reached goes too (methods refuse it unless an expert)
    if reached:
        process(reached, {weight.name: found[weight.name] for weight in reached})
    return [weight for weight in weights if weight not in reached]


@torch.no_grad()
def fingerprint(batches: list[torch.Tensor]) -> str:
    """The calibration batches' shapes and content: cached calibration is re-used for the very same tokens only."""
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(str(tuple(batch.shape)).encode() + batch.cpu().numpy().tobytes())
    return digest.hexdigest()


def _full_precision_statistics(
    model, weights: list[WeightMatrix], batches, cache: dict, statistic: MakeStatistic
) -> dict[str, Statistic]:
    """Every matrix's statistic from one pass over the (full-precision) model; computed once per cache (and kind
    of statistic: `statistic` is part of the key, so it must compare equal only to the same rule)."""
    key = ("statistics", statistic, tuple(weight.name for weight in weights), fingerprint(batches))
    if key not in cache:
        with eager_experts(model), statistics_of(weights, statistic) as found:
            _forward_until(model, batches, None)
        cache[key] = found
    return cache[key]


def _recorded_calls(model, blocks, batches, device: torch.device, cache: dict) -> list[list[Call]]:
    """What every block is called with (step 2), on `device`, as a copy: the cache keeps its own on the CPU."""
    key = ("calls", fingerprint(batches))
    if key not in cache:
        cache[key] = _to(_block_calls(model, blocks, batches), torch.device("cpu"), {})
    return _to(cache[key], device, {}, copy=True)


@torch.no_grad()
def calibrate(
    model: torch.nn.Module,
    weights: list[WeightMatrix],
    calibration: torch.Tensor,
    process: Process,
    sequential: str = "block",
    batch_size: int = 8,
    device: str | torch.device | None = None,
    cache: dict | None = None,
    statistic: MakeStatistic = Hessian,
) -> None:
    """Hand every matrix, with its statistic (`statistic(input width)`, fed every input row), to `process`, in
    the order described in the module docstring.

    `device`: where each block runs (default: where the model is); the model stays where it is, each block
    moving to `device` for its turn and back after it, while the activations stay on `device`. `cache`: kept
    by the caller across the configs of one checkpoint and one calibration set (see the module docstring).
    """
    cache = {} if cache is None else cache
    home = next(model.parameters()).device
    device = home if device is None else torch.device(device)
    if sequential == "none":
        found = _full_precision_statistics(model, weights, _batches(calibration, batch_size, home), cache, statistic)
        process(weights, found)
        return
    blocks = transformer_blocks(model, weights)
    members = {id(m): index for index, block in enumerate(blocks or []) for m in block.modules()}
    per_block: list[list[WeightMatrix]] = [[] for _ in blocks or []]
    outside = []
    for weight in weights:
        (per_block[members[id(weight.module)]] if id(weight.module) in members else outside).append(weight)
    batches = _batches(calibration, batch_size, home)
    with eager_experts(model):
        if blocks is not None:
            before = len(outside)
            outside = _process_outside(model, outside, batches, blocks[0], process, statistic)
            if len(outside) == before:  # nothing before the stack changed: block inputs are the full-precision ones
                calls = _recorded_calls(model, blocks, batches, device, cache)
            else:
                calls = _to(_block_calls(model, blocks, batches), device, {})
            hidden = [call[0][0] for call in calls[0]]
            for block, block_weights, block_calls in zip(blocks, per_block, calls, strict=True):
                block.to(device)
                if block_weights:
                    hidden = _process_block(block, block_weights, hidden, block_calls, process, sequential, statistic)
                else:
                    hidden = [_run_block(block, states, call) for states, call in zip(hidden, block_calls, strict=True)]
                block.to(home)
        _process_outside(model, outside, batches, None, process, statistic)
