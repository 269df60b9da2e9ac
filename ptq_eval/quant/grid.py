"""The integer grid every quantizer shares: scales, zero points, groups, rounding, clamping.

Quantization is simulated: weights are replaced by their de-quantized values in the
model's dtype. The grid follows the convention of the reference GPTQ (and GPTQModel):
`bits` give 2**bits integer levels 0..maxq; asymmetric grids span [min(w, 0), max(w, 0)]
with an integer zero point; symmetric grids use scale = 2·max|w| / maxq with the zero
point fixed at (maxq + 1) / 2.

Granularity is given by `group_size`: -1 is one grid per output channel (row), 0 one
grid for the whole tensor, and g > 0 one grid per row for each run of g input columns.
One rule for every width: the last group of a row holds the columns that are left, so it is
shorter when g does not divide the width, and it is the whole row when g exceeds it (a matrix
narrower than g is quantized per channel). RTN, GPTQ and export follow it; a job's key
records g as given, which with this rule says exactly what was done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptq_eval.errors import UserError

MIN_BITS, MAX_BITS = 2, 16
PER_CHANNEL, PER_TENSOR = -1, 0


@dataclass(frozen=True)
class Grid:
    """Scale and zero point per row of the tensor it was fitted to (shape [rows, 1])."""

    scale: torch.Tensor
    zero: torch.Tensor
    maxq: int

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer levels of x (float32, 0..maxq)."""
        return torch.clamp(torch.round(x / self.scale) + self.zero, 0, self.maxq)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        return self.scale * (q - self.zero)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Round x to the nearest grid point and map back to real values (float32)."""
        return self.dequantize(self.quantize(x.float()))


def check_bits(bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise UserError(f"bits={bits} is not in {MIN_BITS}..{MAX_BITS}")


def check_group_size(group_size: int) -> None:
    """A group size is -1 (per channel), 0 (per tensor) or positive."""
    if group_size < PER_CHANNEL:
        raise UserError(f"group_size={group_size} is not accepted; use -1 (per channel), 0 (per tensor) or g > 0")


def fit_grid(x: torch.Tensor, bits: int, symmetric: bool) -> Grid:
    """Fit one grid per row of x ([rows, k]) from its range."""
    check_bits(bits)
    maxq = 2**bits - 1
    x = x.float()
    low = torch.clamp(x.min(dim=1, keepdim=True).values, max=0)
    high = torch.clamp(x.max(dim=1, keepdim=True).values, min=0)
    if symmetric:
        high = torch.maximum(-low, high)
        low = -high
    flat = high == low
    low = torch.where(flat, torch.full_like(low, -1.0), low)
    high = torch.where(flat, torch.ones_like(high), high)
    scale = (high - low) / maxq
    if symmetric:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-low / scale)
    return Grid(scale, zero, maxq)


def _round_rows(x: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    return fit_grid(x, bits, symmetric).fake_quantize(x)


def quantize_tensor(
    weight: torch.Tensor, bits: int, group_size: int = PER_CHANNEL, symmetric: bool = True
) -> torch.Tensor:
    """Round-to-nearest on the grid; returns de-quantized weights in weight's dtype and shape."""
    check_group_size(group_size)
    if group_size == PER_TENSOR:
        return _round_rows(weight.reshape(1, -1), bits, symmetric).reshape(weight.shape).to(weight.dtype)
    rows, columns = weight.shape
    group = columns if group_size == PER_CHANNEL else min(group_size, columns)
    full = columns - columns % group
    parts = [_round_rows(weight[:, :full].reshape(-1, group), bits, symmetric).reshape(rows, full)]
    if full < columns:
        parts.append(_round_rows(weight[:, full:], bits, symmetric))
    return torch.cat(parts, dim=1).to(weight.dtype)
