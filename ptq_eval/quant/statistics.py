"""What each quantizable matrix sees: its inputs, gathered while the model (or one block) runs, and the
calibration statistics methods keep of them (GPTQ: the Hessian; AWQ: the Hessian and each input channel's mean
magnitude). A statistic is anything built from a matrix's input width with `add(rows)` and `samples`.

Linears and Conv1Ds are hooked as modules. A fused expert tensor is one parameter holding every
expert, so its inputs are found at the functional level: while active, a torch function mode
notes each slice `param[e]` taken of a tracked expert tensor and, when that slice is the weight of a
`linear` (layout [out, in]) or the right operand of a `matmul` (layout [in, out]), hands the rows to
expert e. Only the tokens the router sends to an expert reach it. Experts are switched to their
eager (per-expert loop) implementation while inputs are gathered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Protocol

import torch
from torch.overrides import TorchFunctionMode

from ptq_eval.quant.base import QuantError, WeightMatrix, is_fused_experts

InputSink = Callable[[WeightMatrix, torch.Tensor], None]
_LINEAR, _MATMUL = {"linear"}, {"matmul", "__matmul__", "mm"}
_PRODUCTS = _LINEAR | _MATMUL


_HALF = (torch.bfloat16, torch.float16)


class Statistic(Protocol):
    """What a method keeps of one matrix's calibration inputs (built from the input width)."""

    samples: int

    def add(self, inputs: torch.Tensor) -> None: ...


MakeStatistic = Callable[[int], Statistic]


class Hessian:
    """Running H = 2/n · Σ xxᵀ over the rows of every input batch a matrix sees (created on the first input),
    in float32.

    Half-precision inputs on CUDA are multiplied on the tensor cores with float32 output (`mm` with `out_dtype`):
    a product of two bf16 or fp16 numbers is exact in float32 and the sums are kept in float32 (the tensor cores'
    adders may truncate where float32 rounds: within float32 summation's own error bound, which a CUDA test
    holds), at a fraction of the time (a 1.4b model's Hessians are ~1 PFLOP at 128 × 2048 tokens). Everywhere
    else the inputs are converted to float32 first."""

    def __init__(self, columns: int):
        self.columns = columns
        self.matrix: torch.Tensor | None = None
        self.samples = 0

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.reshape(-1, inputs.shape[-1])
        if self.matrix is None:
            self.matrix = torch.zeros(self.columns, self.columns, device=x.device, dtype=torch.float32)
        total = self.samples + x.shape[0]
        if total == 0:
            return
        self.matrix *= self.samples / total
        if x.is_cuda and x.dtype in _HALF:
            self.matrix += torch.mm(x.T, x, out_dtype=torch.float32) * (2 / total)
        else:
            x = x.float() * (2 / total) ** 0.5
            self.matrix += x.T @ x
        self.samples = total


def _expert_index(index) -> int | None:
    if isinstance(index, int):
        return index
    if isinstance(index, torch.Tensor) and index.ndim == 0 and not index.is_floating_point():
        return int(index)
    return None


class _ExpertInputs(TorchFunctionMode):
    """Routes the rows each expert slice multiplies to that expert's sink."""

    def __init__(self, experts: dict[int, dict[int, WeightMatrix]], sink: InputSink):
        super().__init__()
        self.experts, self.sink = experts, sink
        self.slices: dict[int, tuple[torch.Tensor, WeightMatrix]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "__getitem__" and id(args[0]) in self.experts:
            weight = self.experts[id(args[0])].get(_expert_index(args[1]))
            if weight is not None:
                self.slices[id(result)] = (result, weight)  # the reference keeps the id from being reused
        elif name in _PRODUCTS and len(args) >= 2 and id(args[1]) in self.slices:
            weight = self.slices[id(args[1])][1]
            if weight.transposed != (name in _MATMUL):
                raise RuntimeError(f"{weight.name}: used as {name}, which contradicts its layout flag")
            self.sink(weight, args[0])
        return result


@contextmanager
def eager_experts(model: torch.nn.Module) -> Iterator[None]:
    """Fused experts run their per-expert eager loop (what the input capture reads) inside the block."""
    configs = {
        id(m.config): m.config
        for m in model.modules()
        if is_fused_experts(m) and hasattr(getattr(m, "config", None), "_experts_implementation")
    }
    saved = {key: config._experts_implementation for key, config in configs.items()}
    for config in configs.values():
        config._experts_implementation = "eager"
    try:
        yield
    finally:
        for key, config in configs.items():
            config._experts_implementation = saved[key]


def _input_hook(weight: WeightMatrix, sink: InputSink):
    """A forward hook handing the module's input rows to `sink` (returning None: the output stays the module's)."""

    def hook(module, args, output) -> None:
        sink(weight, args[0])

    return hook


@contextmanager
def watch_inputs(weights: list[WeightMatrix], sink: InputSink) -> Iterator[None]:
    """While active, every input row any of these matrices multiplies goes to `sink(weight, rows)`."""
    experts: dict[int, dict[int, WeightMatrix]] = {}
    with ExitStack() as stack:
        for weight in weights:
            if weight.kind == "expert":
                experts.setdefault(id(getattr(weight.module, weight.parameter)), {})[weight.expert] = weight
            else:
                handle = weight.module.register_forward_hook(_input_hook(weight, sink))
                stack.callback(handle.remove)
        if experts:
            stack.enter_context(_ExpertInputs(experts, sink))
        yield


@contextmanager
def statistics_of(weights: list[WeightMatrix], make: MakeStatistic = Hessian) -> Iterator[dict[str, Statistic]]:
    """One statistic per matrix (`make(input width)`), fed every input row of each forward run while open. A
    factory with `pass_started(weights)` / `pass_ended()` is told when such a pass begins and ends."""
    found = {weight.name: make(weight.shape[1]) for weight in weights}
    getattr(make, "pass_started", lambda weights: None)(weights)
    try:
        with watch_inputs(weights, lambda weight, rows: found[weight.name].add(rows)):
            yield found
    finally:
        getattr(make, "pass_ended", lambda: None)()


def _fingerprint(statistic: Hessian) -> tuple:
    """A cheap summary that equal Hessians share (one host sync per matrix), so few pairs need a full compare."""
    if not statistic.samples:
        return (0,)
    return statistic.samples, tuple(statistic.matrix.shape), float(statistic.matrix.diagonal().sum())


def equal_input_sets(group: list[WeightMatrix], statistics: dict[str, Hessian]) -> list[list[WeightMatrix]]:
    """The group's matrices in sets with equal Hessians (they read the same input: q/k/v, gate/up), in order."""
    sets: list[list[WeightMatrix]] = []
    by_fingerprint: dict[tuple, list[list[WeightMatrix]]] = {}
    for weight in group:
        mine = statistics[weight.name]
        key = _fingerprint(mine)
        for members in by_fingerprint.get(key, []) if mine.samples else []:
            if torch.equal(statistics[members[0].name].matrix, mine.matrix):
                members.append(weight)
                break
        else:
            sets.append([weight])
            by_fingerprint.setdefault(key, []).append(sets[-1])
    return sets


def output_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """‖WX − ŴX‖² / ‖WX‖², from the Hessian (XXᵀ up to a factor that cancels)."""
    delta = (weight.double() - quantized.double()) @ hessian.double()
    numerator = (delta * (weight.double() - quantized.double())).sum().item()
    denominator = ((weight.double() @ hessian.double()) * weight.double()).sum().item()
    return numerator / denominator if denominator else 0.0


NO_INPUT = "rtn: the router sent it no calibration token"


def check_inputs_reached(group: list[WeightMatrix], statistics: dict[str, Statistic], method: str) -> None:
    """Only an expert may see no calibration input, and only when others of its tensor saw some (the router
    chose them; it is then rounded to nearest, its report saying NO_INPUT): anything else means its inputs were
    not captured, which must not pass as a rounding."""
    reached = {w.expert_family for w in group if w.expert_family is not None and statistics[w.name].samples}
    for weight in group:
        if statistics[weight.name].samples == 0 and weight.expert_family not in reached:
            raise QuantError(
                f"{method} saw no calibration input reach {weight.name} ({type(weight.module).__name__}); "
                "ptq-eval cannot see how the model uses it: exclude it or use method rtn"
            )
