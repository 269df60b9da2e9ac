"""The grids every quantizer shares: the integer grid (scales, zero points, rounding, clamping) and the small
float elements other formats round to (`quant/formats.py` puts them together, with groups).

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

Device independence: every step is one IEEE-754 operation on tensors of one device (min, max,
subtraction, correctly rounded division, round-half-to-even, multiplication), so CPU and CUDA give
bit-identical grids and levels. Never divide by a Python number here: CUDA computes `t / 7` as
`t * (1/7)`, one ulp off the quotient for some values, and the symmetric grid puts each row's
largest weight exactly on a rounding tie (±maxq/2 steps from the zero point), where one ulp moves
that weight by a whole grid step.

Half precision: a model held in bfloat16 or float16 cannot hold an arbitrary grid point s·k
(k = q − zero); rounding it to the dtype after the grid adds a second rounding the grid does
not have (+20% weight error at 8 bits in bfloat16). So for those dtypes the scale is rounded up
to the few significant bits that keep every s·k exact in the dtype: the dtype's precision minus
the bits of the largest |k| (at least one bit: a power of two, as MX formats use). Every kernel
that stores the integer levels and this scale computes exactly these weights, whether it
de-quantizes into the dtype or scales its output. The step grows by less than 2^−(t−1) for t
significant bits (bfloat16, symmetric: < 1/16 at 4 bits, < 2x at 8 bits; asymmetric grids need one
bit more for their levels, so twice that). In float16 the scale is also a multiple of 2^−24, so
levels among its subnormals stay exact. float32 is left as it was (one rounding of s·k to float32,
as the peers do). Widths whose levels alone do not fit the dtype (more than 9 bits symmetric, 8
asymmetric, in bfloat16) are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ptq_eval.errors import UserError

MIN_BITS, MAX_BITS = 2, 16
PER_CHANNEL, PER_TENSOR = -1, 0
# Significand bits (with the implicit one) of the dtypes whose grids are made exact in them.
HALF_PRECISION_BITS = {torch.bfloat16: 8, torch.float16: 11}
# float16's subnormal spacing: a scale that is a multiple of it keeps levels below 2^-14 exact too (bfloat16 has
# float32's exponent range, so only levels under 1e-38 could miss, and none is that small in a weight matrix).
FLOAT16_QUANTUM = 2.0**-24
FLOAT32_BITS = 24


@dataclass(frozen=True)
class Grid:
    """Scale and zero point per row of the tensor it was fitted to (shape [rows, 1]): integer levels 0..maxq, or
    where `elements` is given, a float format's values times the scale (zero and maxq unused)."""

    scale: torch.Tensor
    zero: torch.Tensor
    maxq: int
    elements: FloatElements | None = None

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer levels of x (float32, 0..maxq)."""
        return torch.clamp(torch.round(x / self.scale) + self.zero, 0, self.maxq)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        return self.scale * (q - self.zero)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Round x to the nearest grid point and map back to real values (float32)."""
        if self.elements is not None:
            return self.scale * self.elements.round(x.float() / self.scale)
        return self.dequantize(self.quantize(x.float()))


def check_bits(bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise UserError(f"bits={bits} is not in {MIN_BITS}..{MAX_BITS}")


def check_group_size(group_size: int) -> None:
    """A group size is -1 (per channel), 0 (per tensor) or positive."""
    if group_size < PER_CHANNEL:
        raise UserError(f"group_size={group_size} is not accepted; use -1 (per channel), 0 (per tensor) or g > 0")


def level_bits(bits: int, symmetric: bool) -> int:
    """Bits of the largest |q − zero| (symmetric: 2^(bits−1) is one bit, the rest at most bits − 1)."""
    return bits - 1 if symmetric else bits


def check_dtype(bits: int, symmetric: bool, dtype: torch.dtype) -> None:
    """Half-precision grids need their integer levels exact in the dtype."""
    precision = HALF_PRECISION_BITS.get(dtype)
    if precision is not None and level_bits(bits, symmetric) > precision:
        widest = precision + 1 if symmetric else precision
        kind = "symmetric" if symmetric else "asymmetric"
        raise UserError(
            f"bits={bits} ({kind}) cannot be held exactly in {str(dtype).removeprefix('torch.')}: "
            f"its levels need {level_bits(bits, symmetric)} significant bits, the dtype has {precision}; "
            f"use at most {widest} bits or dtype float32"
        )


def exact_scale(scale: torch.Tensor, level_bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The scale rounded up to the significant bits that keep every s·k exact in a half-precision dtype, k a
    level of `level_bits` significant bits."""
    precision = HALF_PRECISION_BITS.get(dtype)
    if precision is None:
        return scale
    dropped = FLOAT32_BITS - max(1, precision - level_bits)
    # Integer arithmetic on the float32 bit pattern (exact on every device): round the positive scale's
    # significand up to the kept bits; a carry moves into the exponent, as it should.
    pattern = scale.float().contiguous().view(torch.int32)
    pattern = (pattern + ((1 << dropped) - 1)) & ~((1 << dropped) - 1)
    scale = pattern.view(torch.float32)
    if dtype == torch.float16:
        quantum = torch.full_like(scale, FLOAT16_QUANTUM)  # a power of two: both steps below are exact
        scale = torch.ceil(scale / quantum) * quantum
    return scale


def fit_grid(
    x: torch.Tensor,
    bits: int,
    symmetric: bool,
    dtype: torch.dtype = torch.float32,
    scale_dtype: torch.dtype = torch.float32,
) -> Grid:
    """Fit one grid per row of x ([rows, k]) from its range; its points exact in `dtype` when that is half
    precision (see the module's docstring); its scale rounded to `scale_dtype` first where a packed checkpoint
    stores it so (to nearest; never below that dtype's smallest normal), the zero point chosen for that scale."""
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
    scale = (high - low) / torch.full_like(high, maxq)  # a tensor divisor: true division on every device
    if scale_dtype != torch.float32:
        smallest = torch.full_like(scale, torch.finfo(scale_dtype).tiny)
        scale = torch.maximum(scale.to(scale_dtype).float(), smallest)
    check_dtype(bits, symmetric, dtype)
    scale = exact_scale(scale, level_bits(bits, symmetric), dtype)
    if symmetric:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-low / scale)
    return Grid(scale, zero, maxq)


@dataclass(frozen=True)
class FloatElements:
    """A small float format's values (OCP 8-bit floats, e2m1): `mantissa_bits` explicit bits, normal exponents
    from `min_exponent` (subnormals below it), saturating at ±`max_value` (e4m3 has no infinities)."""

    bits: int
    mantissa_bits: int
    min_exponent: int
    max_value: float

    @property
    def significant_bits(self) -> int:
        return self.mantissa_bits + 1

    @property
    def max_exponent(self) -> int:
        return math.frexp(self.max_value)[1] - 1

    @property
    def smallest(self) -> float:
        return 2.0 ** (self.min_exponent - self.mantissa_bits)

    def round(self, x: torch.Tensor) -> torch.Tensor:
        """x (float32) to the nearest value, ties to even, beyond ±max_value to ±max_value. Exact steps only:
        frexp reads the exponent, the quantum is a power of two (multiplying and dividing by it is exact)."""
        magnitude = x.abs()
        _, exponent = torch.frexp(magnitude)
        binade = torch.clamp(exponent - 1, min=self.min_exponent)
        quantum = power_of_two(binade - self.mantissa_bits)
        rounded = torch.round(magnitude / quantum) * quantum
        return torch.copysign(torch.clamp(rounded, max=self.max_value), x)


def power_of_two(exponent: torch.Tensor) -> torch.Tensor:
    """2^exponent as float32, built from its bit pattern (exact on every device; exponents −126..127)."""
    return ((exponent.to(torch.int32) + 127) << 23).view(torch.float32)
