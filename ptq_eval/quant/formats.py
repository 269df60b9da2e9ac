"""Number formats a weight can be rounded to, each a grid rule: which values it holds, how a group's scale is
chosen, what bits and group sizes mean for it, and what one weight costs in storage.

- `int`: integer levels on a scale and zero point (`quant/grid.py`), any width 2..16, any group size.
- `fp8_e4m3`, `fp8_e5m2`, `fp4_e2m1`: a float element (OCP 8-bit floats, e4m3 without infinities; e2m1) times
  a float32 scale per group (per channel, per tensor or g columns), the group's largest |w| on the element's
  largest value.
- `mxfp4`, `mxint8` (OCP Microscaling v1.0): 32 consecutive weights of a row share a power-of-two (E8M0) scale
  2^(⌊log2 max|w|⌋ − emax), emax the element's largest exponent (2 for e2m1, 0 for int8's 1.6 fixed point);
  elements beyond the largest value saturate.
- `nvfp4`: e2m1 elements, 16 consecutive weights of a row sharing an e4m3 scale, times one float32 scale per
  matrix chosen so the largest block scale lands on e4m3's largest value (max|W| / (448 · 6)).
- `q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`: llama.cpp's legacy blocks of 32 with float16 scales, rounded as
  llama.cpp rounds them (`quant/ggml_formats.py`), so a simulation and a GGUF file of the type agree.
- `gguf`: what a GGUF file of other types holds (K-quants, i-quants, mixes): read from files, never simulated.

Every other rounding is round-to-nearest, ties to even, with saturation: one IEEE operation at a time on one
device, so CPU and CUDA agree bit for bit (`quant/grid.py`). In bfloat16 the scale's free float32 part is
rounded up to the significant bits that keep every element × scale exact in the dtype, as the integer grid's
is; the power-of-two scales of MX need nothing. float16 holds no float element's products exactly (its
subnormals), so the float formats refuse it.

Bits per weight (the scaling law's P): the element's bits plus the group's scale spread over the group, counted
as stored where these formats are deployed: a 16-bit scale per group for `int` (plus a `bits`-wide zero point
when asymmetric, as GPTQ packs them) and for the float formats with a chosen group; 8 bits per 32 for MX; 8 per
16 for NVFP4 (its per-matrix float32 adds < 1e-5). A scale per channel or per tensor is not counted: it spreads
over a whole row (under 0.02 bits at 1,024 columns).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ptq_eval.quant.ggml_formats import GGML_FORMATS, GGUF_READ_ONLY
from ptq_eval.quant.grid import (
    PER_CHANNEL,
    PER_TENSOR,
    FloatElements,
    Grid,
    check_bits,
    check_dtype,
    exact_scale,
    fit_grid,
    power_of_two,
)
from ptq_eval.quant.number_format import GROUP_SCALE_BITS, FormatError, NumberFormat

E2M1 = FloatElements(bits=4, mantissa_bits=1, min_exponent=0, max_value=6.0)  # OCP FP4
E4M3 = FloatElements(bits=8, mantissa_bits=3, min_exponent=-6, max_value=448.0)  # OCP FP8, no infinities
E5M2 = FloatElements(bits=8, mantissa_bits=2, min_exponent=-14, max_value=57344.0)  # OCP FP8
E8M0_BITS = 8
E8M0_RANGE = (-126, 127)  # E8M0 reaches 2^-127; float32's normal range stops at 2^-126 (a block that small is 0)


@dataclass(frozen=True)
class IntFormat(NumberFormat):
    def check_dtype(self, bits: int, symmetric: bool, dtype: torch.dtype) -> None:
        check_dtype(bits, symmetric, dtype)

    def bits_per_weight(self, bits: int, group_size: int, symmetric: bool) -> float:
        zero_point = 0 if symmetric else bits
        return bits + ((GROUP_SCALE_BITS + zero_point) / group_size if group_size > 0 else 0.0)

    def fit(self, x, bits, symmetric, dtype, tensor_scale=None) -> Grid:
        return fit_grid(x, bits, symmetric, dtype, getattr(torch, self.scale_dtype))


def _amax(x: torch.Tensor) -> torch.Tensor:
    return x.float().abs().amax(dim=1, keepdim=True)


@dataclass(frozen=True)
class ScaledFloat(NumberFormat):
    """Float elements times a float32 scale per group: the group's max |w| on the element's largest value."""

    def fit(self, x, bits, symmetric, dtype, tensor_scale=None) -> Grid:
        amax = _amax(x)
        amax = torch.where(amax == 0, torch.ones_like(amax), amax)
        scale = amax / torch.full_like(amax, self.elements.max_value)  # a tensor divisor: true division
        scale = exact_scale(scale, self.elements.significant_bits, dtype)
        return Grid(scale, torch.zeros_like(scale), 0, self.elements)


def _shared_exponent(x: torch.Tensor, emax: int) -> torch.Tensor:
    """OCP MX v1.0: ⌊log2 max|w|⌋ − emax per row, within E8M0's range (exact: frexp reads the exponent)."""
    _, exponent = torch.frexp(_amax(x))
    return torch.clamp(exponent - 1 - emax, *E8M0_RANGE).to(torch.int32)


@dataclass(frozen=True)
class MXFloat(NumberFormat):
    """OCP MX with float elements: a power-of-two scale per block."""

    def bits_per_weight(self, bits: int, group_size: int, symmetric: bool) -> float:
        return bits + E8M0_BITS / group_size

    def fit(self, x, bits, symmetric, dtype, tensor_scale=None) -> Grid:
        scale = power_of_two(_shared_exponent(x, self.elements.max_exponent))
        return Grid(scale, torch.zeros_like(scale), 0, self.elements)


MXINT8_FRACTION_BITS = 6  # int8 elements read as 1.6 fixed point: k / 64, k in -128..127


@dataclass(frozen=True)
class MXInt(NumberFormat):
    """OCP MXINT8: int8 elements k/64 (k in −128..127, two's complement) on a power-of-two scale per block."""

    def bits_per_weight(self, bits: int, group_size: int, symmetric: bool) -> float:
        return bits + E8M0_BITS / group_size

    def fit(self, x, bits, symmetric, dtype, tensor_scale=None) -> Grid:
        exponent = torch.clamp(_shared_exponent(x, 0) - MXINT8_FRACTION_BITS, *E8M0_RANGE)
        scale = power_of_two(exponent)  # one step of k
        return Grid(scale, torch.full_like(scale, 2.0 ** (bits - 1)), 2**bits - 1)


NVFP4_BLOCK_SCALE = E4M3


@dataclass(frozen=True)
class NVFP4(NumberFormat):
    """e2m1 elements, an e4m3 scale per block of 16, and one float32 scale per matrix."""

    def bits_per_weight(self, bits: int, group_size: int, symmetric: bool) -> float:
        return bits + NVFP4_BLOCK_SCALE.bits / group_size

    def tensor_scale(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        amax = weight.float().abs().amax().reshape(1, 1)
        amax = torch.where(amax == 0, torch.ones_like(amax), amax)
        largest = torch.full_like(amax, NVFP4_BLOCK_SCALE.max_value * self.elements.max_value)
        scale = amax / largest
        block_bits = NVFP4_BLOCK_SCALE.significant_bits + self.elements.significant_bits
        return exact_scale(scale, block_bits, dtype)

    def fit(self, x, bits, symmetric, dtype, tensor_scale=None) -> Grid:
        if tensor_scale is None:
            raise ValueError("nvfp4 needs its matrix's tensor scale")
        wanted = _amax(x) / torch.full_like(tensor_scale, self.elements.max_value) / tensor_scale
        # Block scales below e4m3's smallest normal are raised to it, as torchao does (compressed-tensors keeps
        # e4m3's subnormals instead): only blocks ~30,000× smaller than the matrix's largest weight see it.
        smallest_normal = torch.full_like(wanted, 2.0**NVFP4_BLOCK_SCALE.min_exponent)
        block = NVFP4_BLOCK_SCALE.round(torch.maximum(wanted, smallest_normal))
        scale = block * tensor_scale  # exact in bfloat16 (see tensor_scale); in float32 one rounding, as torchao
        return Grid(scale, torch.zeros_like(scale), 0, self.elements)


FORMATS: dict[str, NumberFormat] = {
    fmt.name: fmt
    for fmt in (
        IntFormat("int"),
        ScaledFloat("fp8_e4m3", bits=8, elements=E4M3),
        ScaledFloat("fp8_e5m2", bits=8, elements=E5M2),
        ScaledFloat("fp4_e2m1", bits=4, elements=E2M1),
        MXFloat("mxfp4", bits=4, group=32, elements=E2M1),
        MXInt("mxint8", bits=8, group=32),
        NVFP4("nvfp4", bits=4, group=16, elements=E2M1),
        *GGML_FORMATS,
        GGUF_READ_ONLY,
    )
}


SCALE_DTYPES = ("float32", "float16", "bfloat16")


def number_format(name: str, scale_dtype: str = "float32") -> NumberFormat:
    """The format by name, its chosen scales stored in `scale_dtype` (integer grids only: every other format
    fixes how its scales are stored)."""
    if name not in FORMATS:
        raise FormatError(f"format {name!r} is not known; accepted: {', '.join(FORMATS)}")
    if scale_dtype == "float32":
        return FORMATS[name]
    if scale_dtype not in SCALE_DTYPES:
        raise FormatError(f"scale_dtype {scale_dtype!r} is not known; accepted: {', '.join(SCALE_DTYPES)}")
    if name != "int":
        raise FormatError(f"format {name} fixes how its scales are stored; scale_dtype={scale_dtype} means nothing")
    return replace(FORMATS[name], scale_dtype=scale_dtype)


def quantize_tensor(
    weight: torch.Tensor,
    bits: int,
    group_size: int = PER_CHANNEL,
    symmetric: bool = True,
    format: str = "int",
    scale_dtype: str = "float32",
) -> torch.Tensor:
    """Round-to-nearest onto the format's grid; de-quantized weights in weight's dtype and shape (exact in it).
    Groups: -1 one per row, 0 one for the tensor, g one per g columns of a row (the last holds what is left).
    `scale_dtype`: the dtype an integer grid's scales are stored in."""
    fmt = number_format(format, scale_dtype)
    check_bits(bits)
    fmt.check(bits, group_size, symmetric)
    fmt.check_dtype(bits, symmetric, weight.dtype)
    if fmt.kept_whole(weight.shape[-1]):
        return fmt.stored_whole(weight)
    tensor_scale = fmt.tensor_scale(weight, weight.dtype)
    if group_size == PER_TENSOR:
        return (
            fmt.round_rows(weight.reshape(1, -1), bits, symmetric, tensor_scale).reshape(weight.shape).to(weight.dtype)
        )
    rows, columns = weight.shape
    group = columns if group_size == PER_CHANNEL else min(group_size, columns)
    full = columns - columns % group
    parts = [fmt.round_rows(weight[:, :full].reshape(-1, group), bits, symmetric, tensor_scale).reshape(rows, full)]
    if full < columns:
        parts.append(fmt.round_rows(weight[:, full:], bits, symmetric, tensor_scale))
    return torch.cat(parts, dim=1).to(weight.dtype)
