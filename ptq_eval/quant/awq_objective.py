"""AWQ's module objective (`objective: module`, as llm-awq and llm-compressor score their candidates): a set of
matrices reading one input is scored by how far the smallest module holding them all (self_attn for q/k/v, the
MLP for gate/up) moves its output, with the candidate weights, from its output with the weights it had, over the
calls that module received in the calibration pass; a matrix alone is scored by its own output (the Hessian).

The calls are recorded by hooks on every module that directly holds a quantizable matrix, from the moment the
recorder opens; a method clears them once it has used a block's (so one block's worth is held under `sequential:
block`; under `none`, one pass over the whole model records every block's).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ptq_eval.quant.base import WeightMatrix
from ptq_eval.quant.rotation import Rotation

Call = tuple[tuple, dict]


class ParentCalls:
    """The calls each direct holder of a quantizable matrix receives while the recorder is open."""

    def __init__(self, model: torch.nn.Module, weights: list[WeightMatrix]):
        self.modules = dict(model.named_modules())
        self.holders = {weight.name.rsplit(".", 1)[0] for weight in weights if weight.kind != "expert"}
        self.calls: dict[str, list[Call]] = {}
        self.paused = False

    @contextmanager
    def recording(self) -> Iterator[ParentCalls]:
        def note(name: str):
            def hook(module, args, kwargs) -> None:
                if not self.paused:
                    self.calls.setdefault(name, []).append((args, kwargs))

            return hook

        handles = [self.modules[name].register_forward_pre_hook(note(name), with_kwargs=True)
                   for name in self.holders if name in self.modules]  # fmt: skip
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.calls.clear()

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

    @contextmanager
    def using(self) -> Iterator[ParentCalls]:
        """Record nothing while the recorded calls are replayed (the objective runs the modules), and forget
        them after."""
        self.paused = True
        try:
            yield self
        finally:
            self.paused = False
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
