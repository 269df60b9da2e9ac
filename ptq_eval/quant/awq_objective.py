"""AWQ's module objective (`objective: module`, as llm-awq and llm-compressor score their candidates): a set of
matrices reading one input is scored by how far the smallest module holding them all (self_attn for q/k/v, the
MLP for gate/up) moves its output, with the candidate weights, from its output with the weights it had, over the
calls that module received in the calibration pass; a matrix alone is scored by its own output (the Hessian).

The calls are recorded only during the statistics passes of the block walker (`pass_started` / `pass_ended`,
called by `statistics_of`), and only for the modules directly holding that pass's matrices: one block's worth
under `sequential: block`; the whole model's under `none`. The method replays them, recording nothing, and
forgets them once used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ptq_eval.quant.base import WeightMatrix
from ptq_eval.quant.rotation import Rotation

Call = tuple[tuple, dict]


def _holder(weight: WeightMatrix) -> str:
    return weight.name.rsplit(".", 1)[0]


class ParentCalls:
    """The calls that the direct holders of the matrices being measured receive during a statistics pass."""

    def __init__(self, model: torch.nn.Module, weights: list[WeightMatrix]):
        self.modules = dict(model.named_modules())
        self.holders = {_holder(weight) for weight in weights if weight.kind != "expert"} & set(self.modules)
        self.calls: dict[str, list[Call]] = {}
        self.armed: set[str] = set()

    @contextmanager
    def hooked(self) -> Iterator[ParentCalls]:
        """Hooks on every holder for the method's run (they record only what a pass arms)."""

        def note(name: str):
            def hook(module, args, kwargs) -> None:
                if name in self.armed:
                    self.calls.setdefault(name, []).append((args, kwargs))

            return hook

        handles = [self.modules[name].register_forward_pre_hook(note(name), with_kwargs=True) for name in self.holders]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.armed.clear()
            self.calls.clear()

    def pass_started(self, weights: list[WeightMatrix]) -> None:
        self.armed = {_holder(weight) for weight in weights} & self.holders

    def pass_ended(self) -> None:
        self.armed = set()

    def parent_of(self, members: list[WeightMatrix]) -> str | None:
        """The smallest recorded module holding every member (None for a matrix alone, or none recorded)."""
        if len(members) < 2:
            return None
        parts = [member.name.split(".") for member in members]
        common = []
        for pieces in zip(*parts, strict=False):
            if len(set(pieces)) > 1:
                break
            common.append(pieces[0])
        name = ".".join(common)
        return name if self.calls.get(name) else None

    def forget(self) -> None:
        """Drop the calls of the pass just used."""
        self.calls.clear()


def _output(result) -> torch.Tensor:
    return result if isinstance(result, torch.Tensor) else next(t for t in result if isinstance(t, torch.Tensor))


class ModuleObjective:
    """One set's module objective: Σ over the module's recorded calls of ‖output(candidate) − output(original)‖²."""

    def __init__(
        self, module: torch.nn.Module, calls: list[Call], members: list[WeightMatrix], rotation: Rotation | None
    ):
        self.module, self.calls, self.members, self.rotation = module, calls, members, rotation
        self.originals = [member.read().detach().clone() for member in members]
        self.reference = [_output(module(*args, **kwargs)).detach().double() for args, kwargs in calls]

    @torch.no_grad()
    def error(self, candidates: list[torch.Tensor]) -> float:
        """The objective for these weights (in the rotated basis when the set is rotated; float32, [out, in])."""
        try:
            for member, candidate in zip(self.members, candidates, strict=True):
                member.write(candidate if self.rotation is None else self.rotation.restore(candidate))
            total = 0.0
            for (args, kwargs), reference in zip(self.calls, self.reference, strict=True):
                total += float((_output(self.module(*args, **kwargs)).double() - reference).pow(2).sum())
            return total
        finally:
            for member, original in zip(self.members, self.originals, strict=True):
                member.write(original)
