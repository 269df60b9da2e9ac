"""What a number format is: a grid rule with its checks and its cost per weight (`quant/formats.py` lists the
formats; `quant/ggml_formats.py` holds llama.cpp's block formats)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptq_eval.errors import UserError
from ptq_eval.quant.grid import FloatElements, Grid, check_group_size

GROUP_SCALE_BITS = 16  # a group's scale as int and the float formats with a chosen group store it


class FormatError(UserError):
    """A format cannot hold this combination (bits, group size, symmetry, dtype); the message says what can."""


@dataclass(frozen=True)
class NumberFormat:
    """A grid rule. `bits` and `group`: what the format fixes (None: the config chooses); `elements`: the float
    values its points are scaled from (None: integer levels); `stored_minimum`: its points are q·d + m, a stored
    minimum m rather than an integer zero point (a grid GPTQ's column loop does not hold); `read_only`: it names
    what a quantized file holds and is never simulated; `scale_dtype`: the dtype its chosen scales are stored in
    (`int` only: float32 as computed, or float16 / bfloat16 as packed checkpoints store them)."""

    name: str
    bits: int | None = None
    group: int | None = None
    elements: FloatElements | None = None
    stored_minimum: bool = False
    read_only: bool = False
    scale_dtype: str = "float32"

    def check(self, bits: int, group_size: int, symmetric: bool) -> None:
        """Refuse what means nothing for this format, naming what it accepts."""
        check_group_size(group_size)
        if self.bits is not None and bits != self.bits:
            raise FormatError(f"format {self.name} holds {self.bits}-bit elements; bits={bits} means nothing for it")
        if self.group is not None and group_size != self.group:
            raise FormatError(
                f"format {self.name} fixes its blocks at {self.group} weights; group_size={group_size} means "
                f"nothing for it (leave group_size out or give {self.group})"
            )
        if self.name != "int" and not symmetric:
            raise FormatError(f"format {self.name} is symmetric (sign and magnitude); symmetric=false means nothing")

    def check_dtype(self, bits: int, symmetric: bool, dtype: torch.dtype) -> None:
        if dtype == torch.float16:
            raise FormatError(
                f"format {self.name} cannot be held exactly in float16 (its smallest elements times a scale fall "
                "among float16's subnormals); use dtype bfloat16 or float32"
            )

    def bits_per_weight(self, bits: int, group_size: int, symmetric: bool) -> float:
        """The scaling law's P: element bits plus the group's scale spread over the group (see `formats.py`)."""
        return bits + (GROUP_SCALE_BITS / group_size if group_size > 0 else 0.0)

    def kept_whole(self, columns: int) -> str | None:
        """Why the format's own tools store a matrix this wide unquantized (None: they quantize it)."""
        return None

    def stored_whole(self, weight: torch.Tensor) -> torch.Tensor:
        """A matrix the format keeps unquantized, as its tools store it."""
        return weight

    def tensor_scale(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """A scale the whole matrix shares (fixed before any group is fitted), or None."""
        return None

    def fit(
        self, x: torch.Tensor, bits: int, symmetric: bool, dtype: torch.dtype, tensor_scale: torch.Tensor | None
    ) -> Grid:
        """One grid per row of x ([rows, k]), its points exact in `dtype` (GPTQ's loop rounds onto it)."""
        raise NotImplementedError

    def round_rows(
        self, x: torch.Tensor, bits: int, symmetric: bool, tensor_scale: torch.Tensor | None
    ) -> torch.Tensor:
        """Round-to-nearest of each row of x ([rows, k], one group each) onto its grid, float32. A format whose
        reference quantizer rounds otherwise than nearest-on-the-stored-grid (llama.cpp's) says so here."""
        return self.fit(x, bits, symmetric, x.dtype, tensor_scale).fake_quantize(x)
