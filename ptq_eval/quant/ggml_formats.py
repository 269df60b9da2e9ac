"""llama.cpp's legacy block formats, rounded as its reference quantizer (`quantize_row_*_ref`, and the `gguf`
package's numpy port) rounds them, so a simulated config gives the weights a GGUF file of that type holds.

Every block is 32 consecutive weights of a row with one float16 scale d; the levels are chosen with the float32
d before it is stored, and the weights are the levels times the stored (float16) d:
- `q8_0`: d = max|w| / 127, q = round-half-away(w · (1/d)) in −127..127, w ≈ q·d.
- `q4_0`, `q5_0`: d = w* / −2^(b−1), w* the weight of largest magnitude (its sign kept, the first one on a tie),
  q = min(2^b − 1, trunc(w · (1/d) + 2^(b−1) + ½)), w ≈ (q − 2^(b−1))·d: 2^(b−1) levels on w*'s side, one fewer
  on the other.
- `q4_1`, `q5_1`: d = (max w − min w) / (2^b − 1) and a float16 minimum m, q = min(2^b − 1, trunc((w − min w) ·
  (1/d) + ½)), w ≈ q·d + m (two roundings, as llama.cpp de-quantizes).

Only float32 holds these weights exactly (a float16 scale times a level needs up to 16 significant bits), so
other dtypes are refused. A matrix whose width is not a multiple of 32 has no such blocks: llama.cpp stores it
in F16, and so does the simulation (every method; its layer report says so). GPTQ rounds onto `fit`'s grid:
the same points (levels times the stored d) reached by nearest rounding; the `_1` formats' q·d + m is not a grid
its column loop holds.
Bits per weight are the file's: 4.5 (q4_0), 5.0 (q4_1), 5.5 (q5_0), 6.0 (q5_1), 8.5 (q8_0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptq_eval.quant.grid import Grid
from ptq_eval.quant.number_format import FormatError, NumberFormat

GGML_BLOCK = 32
GGML_SCALE_BITS = 16  # d, and m for the _1 formats, are float16


def _stored(value: torch.Tensor) -> torch.Tensor:
    """A float32 value as the file keeps it: rounded to float16 (to nearest, ties to even)."""
    return value.to(torch.float16).float()


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """1/d in float32, 0 where d is 0 (an all-zero block)."""
    safe = torch.where(d == 0, torch.ones_like(d), d)
    return torch.where(d == 0, torch.zeros_like(d), torch.ones_like(d) / safe)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's roundf, exactly: the whole part plus one where the fraction is a half or more."""
    magnitude = x.abs()
    whole = torch.floor(magnitude)
    return torch.copysign(whole + torch.floor((magnitude - whole) * 2), x)


@dataclass(frozen=True)
class GGMLFormat(NumberFormat):
    """A llama.cpp block format: float16 scales (and minimums) per block of 32, float32 weights only."""

    def check(self, bits: int, group_size: int, symmetric: bool) -> None:
        if not symmetric:
            raise FormatError(f"format {self.name} fixes its own grid (llama.cpp's); symmetric=false means nothing")
        super().check(bits, group_size, symmetric)

    def check_dtype(self, bits: int, symmetric: bool, dtype: torch.dtype) -> None:
        if dtype != torch.float32:
            raise FormatError(
                f"format {self.name} is llama.cpp's: a float16 scale times its levels needs up to 16 significant "
                f"bits, which {str(dtype).removeprefix('torch.')} does not hold; use dtype float32"
            )

    def bits_per_weight(self, bits: int, group_size: int, symmetric: bool) -> float:
        stored = GGML_SCALE_BITS * (2 if self.stored_minimum else 1)
        return bits + stored / GGML_BLOCK

    def kept_whole(self, columns: int) -> str | None:
        if columns % GGML_BLOCK:
            return f"kept in F16, as llama.cpp stores it: width {columns} is no multiple of {GGML_BLOCK}"
        return None

    def stored_whole(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.to(torch.float16).to(weight.dtype)


@dataclass(frozen=True)
class GGMLScaled(GGMLFormat):
    """q8_0: q·d, d from the largest magnitude, levels rounded half away from zero."""

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        amax = x.float().abs().amax(dim=1, keepdim=True)
        return amax / torch.full_like(amax, 2.0 ** (self.bits - 1) - 1)

    def round_rows(self, x, bits, symmetric, tensor_scale=None) -> torch.Tensor:
        d = self._scale(x)
        return _round_half_away(x.float() * _inverse(d)) * _stored(d)

    def fit(self, x, bits, symmetric, dtype, tensor_scale=None) -> Grid:
        top = 2 ** (self.bits - 1) - 1
        scale = _stored(self._scale(x))
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # a block of zeros (or under float16's reach)
        return Grid(scale, torch.full_like(scale, float(top)), 2 * top)


@dataclass(frozen=True)
class GGMLCentred(GGMLFormat):
    """q4_0, q5_0: (q − 2^(b−1))·d, d = w*/−2^(b−1), levels truncated after adding 2^(b−1) + ½."""

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        signed_max = x.gather(1, x.abs().argmax(dim=1, keepdim=True))
        return signed_max / torch.full_like(signed_max, -(2.0 ** (self.bits - 1)))

    def round_rows(self, x, bits, symmetric, tensor_scale=None) -> torch.Tensor:
        centre, top = 2.0 ** (self.bits - 1), 2.0**self.bits - 1
        d = self._scale(x)
        shifted = x.float() * _inverse(d) + torch.full_like(d, centre + 0.5)
        q = torch.clamp(torch.trunc(shifted), 0, top)
        return (q - centre) * _stored(d)

    def fit(self, x, bits, symmetric, dtype, tensor_scale=None) -> Grid:
        centre = 2.0 ** (self.bits - 1)
        stored = _stored(self._scale(x))
        # (q − c)·d with d < 0 is (q' − (c − 1))·|d| for q' = 2c − 1 − q: the larger side follows w*'s sign
        zero = torch.where(stored < 0, torch.full_like(stored, centre - 1), torch.full_like(stored, centre))
        scale = torch.where(stored == 0, torch.ones_like(stored), stored.abs())
        return Grid(scale, zero, 2**self.bits - 1)


@dataclass(frozen=True)
class GGMLMinimum(GGMLFormat):
    """q4_1, q5_1: q·d + m over the block's range, levels truncated after adding ½."""

    def round_rows(self, x, bits, symmetric, tensor_scale=None) -> torch.Tensor:
        x = x.float()
        top = 2.0**self.bits - 1
        low = x.min(dim=1, keepdim=True).values
        high = x.max(dim=1, keepdim=True).values
        d = (high - low) / torch.full_like(low, top)
        shifted = (x - low) * _inverse(d) + torch.full_like(d, 0.5)
        q = torch.clamp(torch.trunc(shifted), 0, top)
        return q * _stored(d) + _stored(low)

    def fit(self, x, bits, symmetric, dtype, tensor_scale=None) -> Grid:
        raise FormatError(f"format {self.name} stores q·d + m (a float16 minimum), not a grid GPTQ's loop holds")


@dataclass(frozen=True)
class ReadOnly(NumberFormat):
    """llama.cpp's other types (K-quants, i-quants) and mixes of types: read from GGUF files, never simulated."""

    def check(self, bits: int, group_size: int, symmetric: bool) -> None:
        """Anything a file says of itself."""

    def check_dtype(self, bits: int, symmetric: bool, dtype: torch.dtype) -> None:
        """Checked when the file is read."""

    def bits_per_weight(self, bits: int, group_size: int, symmetric: bool) -> float:
        """The element bits; a job of a file records what the file's matrices really cost."""
        return float(bits)

    def round_rows(self, x, bits, symmetric, tensor_scale=None) -> torch.Tensor:
        raise FormatError(f"format {self.name} is read from GGUF files only; simulate {', '.join(SIMULATED)} instead")

    def fit(self, x, bits, symmetric, dtype, tensor_scale=None) -> Grid:
        raise FormatError(f"format {self.name} is read from GGUF files only; simulate {', '.join(SIMULATED)} instead")


GGML_FORMATS = (
    GGMLScaled("q8_0", bits=8, group=GGML_BLOCK),
    GGMLCentred("q4_0", bits=4, group=GGML_BLOCK),
    GGMLCentred("q5_0", bits=5, group=GGML_BLOCK),
    GGMLMinimum("q4_1", bits=4, group=GGML_BLOCK, stored_minimum=True),
    GGMLMinimum("q5_1", bits=5, group=GGML_BLOCK, stored_minimum=True),
)
SIMULATED = tuple(fmt.name for fmt in GGML_FORMATS)
# a GGUF file of other types (Q4_K_M's mix of Q4_K and Q6_K, IQ4_XS, ...), as the quantized side of a pair
GGUF_READ_ONLY = ReadOnly("gguf", read_only=True)
