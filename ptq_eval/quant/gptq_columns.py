"""GPTQ's inner loop over one block of columns, and which implementation runs it.

Each column is rounded onto its row's grid, and its error, scaled by the inverse Hessian factor's diagonal, is
subtracted from the block's later columns (`quant/gptq_solve.py` does the lazy update between blocks).

- `eager_columns`: torch operations column by column; every device and format. It is the reference.
- the fused loop (`quant/gptq_triton.py`): one Triton kernel per block on CUDA, integer grids and float formats,
  with the same arithmetic step for step, so the same weights as the eager loop on that device (tested through
  Triton's interpreter on the CPU; `make gpu-check` compares the two on CUDA; each process checks it once per
  device and format before its first solve there, and where the two disagree runs the eager loop instead and
  says why in every affected job's quant report: `loop_warnings`).

`PTQ_EVAL_GPTQ_LOOP=eager` forces the eager loop (a check, or a GPU where Triton fails); `auto`, the default,
takes the fused loop where it applies.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch

from ptq_eval.errors import UserError
from ptq_eval.quant.grid import FloatElements

LOOP_VARIABLE = "PTQ_EVAL_GPTQ_LOOP"
LOOPS = ("auto", "eager")
Columns = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def eager_columns(
    block: torch.Tensor,
    hinv: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    top: torch.Tensor | int,
    elements: FloatElements | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's quantized columns and scaled errors, column by column (the block is updated in place).
    `scale`, `zero`: each row's grid per column ([rows, width]); `top`: the highest level (one for all rows, or
    per row [rows, 1]); `elements`: a float format's values instead of integer levels."""
    quantized, errors = torch.zeros_like(block), torch.zeros_like(block)
    floor = 0 if isinstance(top, int) else torch.zeros_like(top)
    scales, zeros = (grid.T.unsqueeze(-1).unbind(0) for grid in (scale, zero))  # each column's [rows, 1], at once
    for i, (s, z) in enumerate(zip(scales, zeros, strict=True)):
        x = block[:, i : i + 1]
        if elements is None:
            q = (s * (torch.clamp(torch.round(x / s) + z, floor, top) - z)).flatten()
        else:
            q = (s * elements.round(x / s)).flatten()
        quantized[:, i] = q
        error = (block[:, i] - q) / hinv[i, i]
        block[:, i:] -= error[:, None] @ hinv[i : i + 1, i:]
        errors[:, i] = error
    return quantized, errors


def fused_columns(
    block: torch.Tensor,
    hinv: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    top: torch.Tensor | int,
    elements: FloatElements | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused loop, with `eager_columns`' arguments (`column_loop` hands it out only where it agreed with the
    eager loop). Triton is imported only where the fused loop runs."""
    return _launch(block, hinv, scale, zero, top, elements)


def _launch(block, hinv, scale, zero, top, elements) -> tuple[torch.Tensor, torch.Tensor]:
    from ptq_eval.quant import gptq_triton

    top = torch.full((block.shape[0],), float(top), device=block.device) if isinstance(top, int) else top.flatten()
    return gptq_triton.columns(block, hinv, scale, zero, top.contiguous(), elements)


# (device, float elements or None) → None where the fused loop gave the eager loop's columns, else why not
_CHECKED: dict[tuple[torch.device, FloatElements | None], str | None] = {}


def loop_warnings(device: torch.device, elements: FloatElements | None) -> list[str]:
    """Why solves of this format (`elements`; None: integer grids) on devices of `device`'s type ran the eager
    loop where the fused one was chosen, one line per device where the fused loop failed its check in this
    process."""
    return [why for (on, checked), why in _CHECKED.items() if on.type == device.type and checked == elements and why]


def _check_agreement(device: torch.device, elements: FloatElements | None) -> str | None:
    """Seeded blocks of this format (`elements`; None: integer grids) through both loops on `device`, laid out as
    solves lay them out (a full block with each row's grid broadcast and the column-major factor; a narrower tail
    block with a grid per column and one top level), some columns on rounding ties and small negatives (−0): a
    compiler or driver that changes the arithmetic is caught here: the reason (None when they agree) sends solves
    to the eager loop and into the quant report, instead of moving weights without a word."""
    generator = torch.Generator().manual_seed(0)
    rows, differ, total = 24, 0, 0
    for width, broadcast in ((128, True), (72, False)):
        factor = torch.randn(width, width, generator=generator)
        hinv = torch.linalg.cholesky(factor @ factor.T / width + torch.eye(width), upper=True).to(device)
        block = torch.randn(rows, width, generator=generator)
        grid_width = 1 if broadcast else width  # broadcast: one grid per row, as per-channel solves pass it
        scale = torch.rand(rows, grid_width, generator=generator) * 0.2 + 0.05
        zero = torch.randint(0, 8, (rows, grid_width), generator=generator).float()
        top: torch.Tensor | int = torch.randint(3, 16, (rows, 1), generator=generator).float() if broadcast else 15
        scale[:4] = 0.125
        block[:4, 0] = torch.tensor([0.5, 2.5, -0.5, -2.5]) * 0.125  # halfway between two levels
        block[:4, 1] = torch.tensor([0.0, -0.0, -0.01, -0.2]) * 0.125  # zeros of either sign
        block, scale, zero = block.to(device), scale.to(device).expand(rows, width), zero.to(device).expand(rows, width)
        top = top.to(device) if isinstance(top, torch.Tensor) else top
        expected = eager_columns(block.clone(), hinv, scale, zero, top, elements)
        found = _launch(block.clone(), hinv, scale, zero, top, elements)
        differ += sum(int((a != b).sum()) for a, b in zip(expected, found, strict=True))
        total += 2 * rows * width
    if not differ:
        return None
    return (
        f"GPTQ's fused column loop disagrees with the eager loop on {device} ({differ} of {total} values differ in "
        f"a seeded check): the eager loop ran instead (slower, same weights as the CPU's arithmetic on {device}); "
        "report this, unless torch's float32 matmul precision is set below 'highest' (TF32 rounds the eager loop's "
        f"products); {LOOP_VARIABLE}=eager skips the check"
    )


def _fused_runs_on(device: torch.device) -> bool:
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def column_loop(device: torch.device, elements: FloatElements | None) -> tuple[str, Columns]:
    """The loop a solve on `device` runs, and its name: fused on CUDA where Triton is installed (unless
    PTQ_EVAL_GPTQ_LOOP=eager, or where it failed its check against the eager loop: `loop_warnings` says so),
    else eager. `elements`: the format's float values (None: integer levels); every format the project has runs
    fused."""
    choice = os.environ.get(LOOP_VARIABLE, "auto")
    if choice not in LOOPS:
        raise UserError(f"{LOOP_VARIABLE}={choice!r} is not a GPTQ column loop; use one of {', '.join(LOOPS)}")
    if not _fused_runs_on(device) or choice != "auto":
        return "eager", eager_columns
    if (device, elements) not in _CHECKED:
        _CHECKED[(device, elements)] = _check_agreement(device, elements)
    return ("eager", eager_columns) if _CHECKED[(device, elements)] else ("fused", fused_columns)
